/**
 * A small btrfs on a loop device for apply tests: mkfs, mount, subvolumes, snapshots,
 * exclusive-bytes measurement; cleanup unmounts and detaches even after failures.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../../src/host/exec.ts';

export interface TestBtrfs {
  mnt: string;
  dir: string;
  loop: string;
  cleanup(): Promise<void>;
}

export async function makeBtrfs(sizeMiB = 256): Promise<TestBtrfs> {
  const dir = await mkdtemp(join(tmpdir(), 'tiu-apply-'));
  const img = join(dir, 'disk.img');
  const mnt = join(dir, 'mnt');
  await run('truncate', ['-s', `${sizeMiB}M`, img]);
  const loop = (await run('losetup', ['-f', '--show', img])).stdout.trim();
  let mounted = false;
  const cleanup = async (): Promise<void> => {
    if (mounted) await run('umount', ['-l', mnt]).catch(() => undefined);
    await run('losetup', ['-d', loop]).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await run('mkfs.btrfs', ['-q', '-f', loop]);
    await run('mkdir', ['-p', mnt]);
    await run('mount', [loop, mnt]);
    mounted = true;
  } catch (e) {
    await cleanup();
    throw e;
  }
  return { mnt, dir, loop, cleanup };
}

export async function subvolume(path: string): Promise<void> {
  await run('btrfs', ['subvolume', 'create', path]);
}

export async function snapshot(from: string, to: string): Promise<void> {
  await run('btrfs', ['subvolume', 'snapshot', from, to]);
}

/** Bytes of data only this path holds (not shared with any other subvolume or file), after a sync. */
export async function exclusiveBytes(path: string): Promise<number> {
  await run('btrfs', ['filesystem', 'sync', path]);
  const out = (await run('btrfs', ['filesystem', 'du', '-s', '--raw', path])).stdout.trim().split('\n');
  const cols = out[out.length - 1]!.trim().split(/\s+/);
  return Number(cols[1]);
}

/** Whether the subvolume at `path` is read-only (btrfs property ro). */
export async function getReadOnly(path: string): Promise<boolean> {
  const r = await run('btrfs', ['property', 'get', '-ts', path, 'ro']);
  return r.stdout.trim() === 'ro=true';
}

/** Bytes of data used on the filesystem (btrfs filesystem df, "Data" line), for disk accounting. */
export async function dataUsed(mountPath: string): Promise<number> {
  await run('btrfs', ['filesystem', 'sync', mountPath]);
  const r = await run('btrfs', ['filesystem', 'df', '-b', mountPath]);
  const m = /^Data[^:]*:\s*total=(\d+),\s*used=(\d+)/m.exec(r.stdout);
  if (!m) throw new Error(`cannot parse 'btrfs filesystem df ${mountPath}'`);
  return Number(m[2]);
}
