/**
 * Run programs inside a new snapshot: /dev, /proc, /sys (and /boot/efi where the system has
 * one) are bound into it for the duration, and always unmounted afterwards, even when the
 * program fails or the caller is aborted.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { runChrooted } from '../host/chroot.ts';
import type { RunOptions, RunResult } from '../host/exec.ts';
import { bindMount, isMountPoint, unmount } from '../host/mount.ts';
import { TiuError } from '../errors.ts';
import { RootedDir } from './rooted.ts';

export class ChrootError extends TiuError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super('CHROOT_FAILED', message, details);
  }
}

export interface ChrootBinds {
  /** Where the running system's /boot/efi is (default: `<sysroot>/boot/efi` when it is a mount point). */
  efi?: string;
}

export interface Chroot {
  readonly root: string;
  run(argv: readonly string[], opts?: RunOptions): Promise<RunResult>;
}

/**
 * Bind the pseudo filesystems into `root`, call `fn`, unmount (on every exit path; a SIGKILL
 * leaves them, and the next run's cleanup, deleteSnapshot, unmounts whatever is below an
 * unfinished snapshot). Mount points missing in `root` are created as real directories; one
 * that is a symlink, or below one, is UNSAFE_PATH (./rooted.ts) before anything is mounted.
 */
export async function withChroot<T>(
  root: string,
  fn: (c: Chroot) => Promise<T>,
  opts: { sysroot?: string } & ChrootBinds = {},
): Promise<T> {
  if (!existsSync(root)) throw new ChrootError(`chroot directory ${root} does not exist`, { root });
  const rooted = await RootedDir.open(root);
  const binds: { source: string; target: string; recursive: boolean }[] = [
    { source: '/dev', target: 'dev', recursive: true },
    { source: '/proc', target: 'proc', recursive: true },
    { source: '/sys', target: 'sys', recursive: true },
  ];
  const efi = opts.efi ?? join(opts.sysroot ?? '/', 'boot/efi');
  if (await isMountPoint(efi)) binds.push({ source: efi, target: 'boot/efi', recursive: false });
  const mounted: string[] = [];
  let result: T;
  try {
    for (const b of binds) {
      // A real directory inside the root, every component lstat'ed (a missing one is created as
      // a real directory): an image's `proc -> /elsewhere` is UNSAFE_PATH, never mounted over.
      await rooted.mkdir(b.target);
      await rooted.verifyDir(b.target);
      const target = rooted.abs(b.target);
      // Listed before mounting: a bind that half-succeeded (mounted, not yet made a slave) is unmounted too.
      mounted.push(target);
      await bindMount(b.source, target, { recursive: b.recursive });
    }
    result = await fn({
      root,
      run: (argv, ropts) => {
        const [file, ...args] = argv;
        if (!file) throw new ChrootError('empty command for the chroot');
        return runChrooted(root, file, args, ropts);
      },
    });
  } catch (e) {
    await unbind(mounted).catch(() => undefined);
    throw e;
  }
  await unbind(mounted);
  return result;
}

async function unbind(mounted: string[]): Promise<void> {
  const failed: string[] = [];
  for (const t of [...mounted].reverse()) {
    try {
      if (await isMountPoint(t)) await unmount(t, { recursive: true });
    } catch {
      failed.push(t);
    }
  }
  if (failed.length) throw new ChrootError(`could not unmount ${failed.join(', ')}`, { mounts: failed });
}
