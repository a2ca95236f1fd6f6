/**
 * Kernels and initrds of a snapshot, found and read through the rooted API: image content is
 * hostile, so a kernel that is a symlink (to a host file, or anywhere) is PATH_UNSAFE, never
 * followed or copied.
 *
 *   openSUSE / MicroOS   usr/lib/modules/<kver>/vmlinuz (or Image), usr/lib/modules/<kver>/initrd
 *   Debian               boot/vmlinuz-<kver>, boot/initrd.img-<kver>
 *   tiu's dracut hook    boot/initrd-<kver> (older tiu.conf defaults)
 */
import { createHash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import type { RootedDir } from '../rooted.ts';
import { KVER_RE, verscmp } from './entries.ts';

export interface KernelPaths {
  kver: string;
  /** Paths relative to the snapshot root. */
  kernel: string;
  initrd?: string;
}

const KERNEL_NAMES = ['vmlinuz', 'Image'];

/** Every kernel version in the tree with the path of its kernel and initrd (lstat only: whatever kind of file is there). */
export async function findKernels(rd: RootedDir): Promise<KernelPaths[]> {
  const found = new Map<string, KernelPaths>();
  const exists = async (rel: string) => (await rd.lstat(rel)) !== undefined;
  if (await rd.isDir('usr/lib/modules')) {
    for (const d of await rd.readdir('usr/lib/modules')) {
      if (!KVER_RE.test(d.name)) continue;
      for (const k of KERNEL_NAMES) {
        const rel = `usr/lib/modules/${d.name}/${k}`;
        if (await exists(rel)) {
          found.set(d.name, { kver: d.name, kernel: rel });
          break;
        }
      }
    }
  }
  if (await rd.isDir('boot')) {
    for (const d of await rd.readdir('boot')) {
      const m = /^vmlinuz-(.+)$/.exec(d.name);
      if (m && KVER_RE.test(m[1]!) && !found.has(m[1]!)) found.set(m[1]!, { kver: m[1]!, kernel: `boot/${d.name}` });
    }
  }
  for (const k of found.values()) {
    for (const rel of [`usr/lib/modules/${k.kver}/initrd`, `boot/initrd.img-${k.kver}`, `boot/initrd-${k.kver}`]) {
      if (await exists(rel)) {
        k.initrd = rel;
        break;
      }
    }
  }
  return [...found.values()].sort((a, b) => verscmp(a.kver, b.kver));
}

/** sha256 (hex) and size of an open file, read from its start. */
export async function hashHandle(fh: FileHandle): Promise<{ sha256: string; size: number }> {
  const h = createHash('sha256');
  const buf = Buffer.allocUnsafe(1 << 20);
  let size = 0;
  for (;;) {
    const { bytesRead } = await fh.read(buf, 0, buf.length, size);
    if (bytesRead === 0) break;
    h.update(buf.subarray(0, bytesRead));
    size += bytesRead;
  }
  return { sha256: h.digest('hex'), size };
}
