/**
 * Mounts: bind mounts for the hook chroot, and reading /proc/self/mountinfo to find what is
 * mounted where (which subvolume a sysroot runs from).
 */
import { readFile } from 'node:fs/promises';
import { run } from './exec.ts';

export interface MountInfo {
  mountPoint: string;
  /** The path inside the filesystem that is mounted here (for btrfs: the subvolume path, `/@/.snapshots/1/snapshot`). */
  root: string;
  fsType: string;
  source: string;
  options: string;
  superOptions: string;
}

/** mountinfo escapes space, tab, newline and backslash as octal. */
function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

export function parseMountInfo(text: string): MountInfo[] {
  const out: MountInfo[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    const [left, right] = line.split(' - ');
    if (!left || !right) continue;
    const f = left.split(' ');
    const r = right.split(' ');
    out.push({
      root: unescape(f[3] ?? ''),
      mountPoint: unescape(f[4] ?? ''),
      options: f[5] ?? '',
      fsType: r[0] ?? '',
      source: unescape(r[1] ?? ''),
      superOptions: r[2] ?? '',
    });
  }
  return out;
}

export async function mountInfo(): Promise<MountInfo[]> {
  return parseMountInfo(await readFile('/proc/self/mountinfo', 'utf8'));
}

/** The mount at exactly `path` (the last one, which is the visible one), if any. */
export async function mountAt(path: string): Promise<MountInfo | undefined> {
  return (await mountInfo()).filter((m) => m.mountPoint === path).at(-1);
}

export async function isMountPoint(path: string): Promise<boolean> {
  return (await mountAt(path)) !== undefined;
}

export async function bindMount(
  source: string,
  target: string,
  opts: { recursive?: boolean; readOnly?: boolean } = {},
): Promise<void> {
  await run('mount', [opts.recursive ? '--rbind' : '--bind', source, target]);
  if (opts.readOnly) await run('mount', ['-o', 'remount,bind,ro', target]);
  // Keep mounts made under the bind from propagating back to the host.
  if (opts.recursive) await run('mount', ['--make-rslave', target]);
}

/** Unmount `target` and everything below it (lazy as a last resort, so a busy mount can't be left behind). */
export async function unmount(target: string, opts: { recursive?: boolean } = {}): Promise<void> {
  const r = await run('umount', [...(opts.recursive ? ['-R'] : []), target], { okExitCodes: [0, 32] });
  if (r.exitCode !== 0 && (await isMountPoint(target)))
    await run('umount', [...(opts.recursive ? ['-R'] : []), '-l', target]);
}
