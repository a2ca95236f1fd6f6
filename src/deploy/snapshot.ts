/**
 * The snapshot half of an update, the way transactional-update does it with snapper:
 *
 *   create --from <booted> --read-write, marked tiu-in-progress=yes
 *   carry /etc (a nested subvolume that snapper 0.10.4 leaves empty in the copy)
 *   ... the caller writes the new tree ...
 *   touch /usr, read-only, record image/digest, set the btrfs default  <- the commit point
 *   clear the in-progress mark
 *
 * The mark is cleared after the default moves: a crash between the two leaves a default
 * snapshot still marked, and the next run only clears the mark; a marked snapshot that is not
 * the default (nor booted) is an unfinished update and is deleted.
 */
import { existsSync } from 'node:fs';
import { lstat, readdir, realpath, rm, rmdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import {
  filesystemSync,
  getDefault,
  isSubvolume,
  setDefault,
  setReadOnly,
  subvolumeDelete,
  subvolumeShow,
  subvolumeSnapshot,
} from '../host/btrfs.ts';
import { mountInfo, unmount } from '../host/mount.ts';
import { TiuError, type ErrorCode } from '../errors.ts';
import { RootedDir } from './rooted.ts';
import {
  clearCreating,
  clearDeleting,
  readCreating,
  readDeleting,
  recordCreating,
  recordDeleting,
  snapshotNumbers,
} from './snapshot-intent.ts';
import { ageUserdata, readState, snapshotNumberOf, snapshotPath, UD, type Context } from './state.ts';
import type { ImageAge } from './image-age.ts';
import type { SystemdBoot } from './boot/systemd-boot.ts';
import { LOADER_DEFAULT } from './boot/entries.ts';
import type { TiuConfig } from './config.ts';

export class SnapshotError extends TiuError {
  constructor(code: ErrorCode, message: string, details: Record<string, unknown> = {}) {
    super(code, message, details);
  }
}

export interface CreateOptions {
  from: number;
  description: string;
  image: string;
}

/** A new read-write snapshot of `from`, marked in progress, with /etc carried over. */
export async function createInProgress(ctx: Context, o: CreateOptions): Promise<number> {
  // A kill inside snapper's create leaves a directory nothing marks as tiu's: the record does.
  await recordCreating(ctx.sysroot);
  let n: number;
  try {
    n = await ctx.snapper.create({
      from: o.from,
      readWrite: true,
      description: o.description,
      cleanup: 'number',
      userdata: { [UD.inProgress]: 'yes', [UD.image]: o.image },
    });
  } finally {
    // snapper answered: its snapshot is listed and marked in progress, or it cleaned up and failed.
    await clearCreating(ctx.sysroot);
  }
  try {
    await carryNestedSubvolumes(ctx, o.from, n);
  } catch (e) {
    await deleteSnapshot(ctx, n).catch(() => undefined);
    throw e;
  }
  return n;
}

/**
 * Nested subvolumes of a snapshot: direct children of its root and /etc whose inode is 256
 * (a subvolume root) on a device other than the snapshot's own.
 */
export async function nestedSubvolumes(root: string): Promise<string[]> {
  const rootDev = (await stat(root)).dev;
  const out: string[] = [];
  for (const name of await readdir(root)) {
    const p = join(root, name);
    // lstat: an image's symlink to a subvolume elsewhere (`x -> /home`) is not a nested subvolume to delete
    const s = await lstat(p).catch(() => undefined);
    if (s?.isDirectory() && s.ino === 256 && s.dev !== rootDev && !(await isMountedAt(p))) out.push(name);
  }
  return out;
}

async function isMountedAt(p: string): Promise<boolean> {
  return (await mountInfo()).some((m) => m.mountPoint === p);
}

/**
 * snapper's --from copies only the snapshot's own subvolume: a nested subvolume (/etc since
 * transactional-update 5.0) comes out as an empty directory. Replace it by a snapshot of the
 * source's subvolume, so the new /etc shares its extents and stays a subvolume.
 */
export async function carryNestedSubvolumes(ctx: Context, from: number, n: number): Promise<string[]> {
  const src = snapshotPath(ctx.sysroot, from);
  const dst = snapshotPath(ctx.sysroot, n);
  const carried: string[] = [];
  for (const name of await nestedSubvolumes(src)) {
    const target = join(dst, name);
    const existing = await readdir(target).catch(() => undefined);
    if (existing === undefined || (existing.length === 0 && !(await isSubvolume(target)))) {
      if (existing !== undefined) await rmdir(target);
      await subvolumeSnapshot(join(src, name), target);
      carried.push(name);
    }
  }
  return carried;
}

/**
 * Remove snapshot N completely: mounts left inside it (a killed hook chroot), nested
 * subvolumes (snapper can't delete a snapshot holding one), then snapper's delete.
 * Never the default or the booted snapshot.
 */
export async function deleteSnapshot(ctx: Context, n: number): Promise<void> {
  const state = await readState(ctx);
  if (state.default === n || state.booted === n) {
    throw new SnapshotError(
      'SNAPSHOT_IN_USE',
      `snapshot ${n} is the ${state.default === n ? 'default' : 'booted'} snapshot and is not deleted`,
      { snapshot: n },
    );
  }
  const root = snapshotPath(ctx.sysroot, n);
  await unmountBelow(root);
  // From here a kill can leave `.snapshots/N` unlisted: the record claims it for the next run.
  await recordDeleting(ctx.sysroot, n);
  const exists = await stat(root).catch(() => undefined);
  if (exists) {
    await setReadOnly(root, false);
    for (const name of await nestedSubvolumes(root)) await subvolumeDelete(join(root, name));
  }
  const dir = join(ctx.sysroot, '.snapshots', String(n));
  if (state.snapshots.some((s) => s.number === n)) {
    await ctx.snapper.delete(n);
    // snapper's delete removes the subvolume and the files it knows, then an rmdir whose failure
    // it ignores: an info.xml.tmp-XXXXXX of a `snapper modify` killed before its rename keeps the
    // directory, now without info.xml. With the subvolume gone, the rest of it is tiu's to remove.
    if (existsSync(dir) && !existsSync(root)) await rm(dir, { recursive: true, force: true });
  } else {
    if (exists) await subvolumeDelete(root);
    await rm(dir, { recursive: true, force: true });
  }
  await clearDeleting(ctx.sysroot);
}

/**
 * Unmount everything mounted at or below `root` (what a killed hook chroot left: /dev, /proc,
 * /sys, /boot/efi binds and what is below them), deepest first. mountinfo shows canonical paths:
 * `root` is compared by its real path too. Fails when something stays mounted, so the snapshot
 * is not deleted under a mount.
 */
export async function unmountBelow(root: string): Promise<void> {
  const roots = [root, await realpath(root).catch(() => root)];
  const inside = (p: string) => roots.some((r) => p === r || p.startsWith(r + '/'));
  for (let round = 0; round < 3; round++) {
    const below = [...new Set((await mountInfo()).map((m) => m.mountPoint).filter(inside))].sort(
      (a, b) => b.length - a.length,
    );
    if (!below.length) return;
    for (const p of below) await unmount(p, { recursive: true }).catch(() => undefined);
  }
  const left = (await mountInfo()).map((m) => m.mountPoint).filter(inside);
  if (left.length)
    throw new SnapshotError(
      'SNAPSHOT_BUSY',
      `could not unmount ${left.join(', ')} below ${root}; the snapshot is left for the next run`,
      { mounts: left },
    );
}

export interface CommitOptions {
  image: string;
  digest: string;
  etcConflicts: number;
  /** The image's signed created time and version, recorded for downgrade protection and `tiu status`. */
  age?: ImageAge;
  /** systemd-boot integration (src/deploy/boot), when the host has it. */
  boot?: { sd: SystemdBoot; config: Pick<TiuConfig, 'kernelCmdline' | 'bootTries'>; log?: (line: string) => void };
}

/**
 * Crash injection for tests (test/integration/boot-entries.test.ts): with
 * TIU_TEST_CRASH_AFTER=<step> in the environment, the process SIGKILLs itself right after that
 * step of the commit, exactly as a power cut or an OOM kill would stop it there.
 */
export const COMMIT_STEPS = ['boot-files', 'boot-entry', 'btrfs-default', 'loader-default'] as const;
function crashPoint(step: (typeof COMMIT_STEPS)[number]): void {
  if (process.env.TIU_TEST_CRASH_AFTER === step) process.kill(process.pid, 'SIGKILL');
}

/**
 * Finish snapshot N and make it the next boot. Setting the btrfs default is the commit point.
 *
 * With systemd-boot (crash-safe order: at every instant some entry boots a complete snapshot):
 *   0. plan the entry: read the kernel, initrd and /etc/kernel/cmdline through the rooted API,
 *      validate, check the ESP's room (PATH_UNSAFE, CMDLINE_INVALID, ESP_FULL: nothing written)
 *   1. kernel and initrd onto the ESP (content-named, atomic, fsync)       crash: unused files,
 *   2. the entry `tiuparked-N+3.conf`, fsync: not a candidate for loader.conf's `default tiu-*`,
 *      so the loader still boots the old default                          crash: parked entry
 *      of an unfinished snapshot; the next run deletes both
 *   3. read-only snapshot synced, btrfs default = N, sync                 <- commit point
 *   4. rename to `tiu-N+3.conf`: now the highest candidate, the loader boots N next; a crash
 *      before this rename boots the old default, and the next `tiu update`/`tiu health`
 *      reconciles (the btrfs default says N: the entry is unparked)
 * If N never reaches userspace, systemd-boot counts `+3` down to `+0-3`, sorts it below every
 * entry with tries left and boots the next older candidate by itself; tiu-health then marks N bad.
 */
export async function commitSnapshot(ctx: Context, n: number, o: CommitOptions): Promise<void> {
  const root = snapshotPath(ctx.sysroot, n);
  // systemd's ConditionNeedsUpdate= compares /usr's mtime with /etc/.updated and /var/.updated.
  // Through the rooted API: an image's `usr -> /elsewhere` (or a file there) is PATH_UNSAFE
  // before anything is committed, and update() deletes the snapshot.
  const now = new Date();
  await (await RootedDir.open(root)).touchDir('usr', now);
  await setReadOnly(root, true);
  const plan = o.boot ? await o.boot.sd.prepare(ctx, n, o.boot.config) : undefined;
  if (o.boot && !plan)
    throw new SnapshotError(
      'KERNEL_MISSING',
      `snapshot ${n} has no kernel (usr/lib/modules/<kver>/vmlinuz or boot/vmlinuz-<kver>) to boot it with systemd-boot`,
      { snapshot: n },
    );
  await ctx.snapper.modify(n, {
    userdata: {
      [UD.image]: o.image,
      [UD.digest]: o.digest,
      [UD.etcConflicts]: String(o.etcConflicts),
      ...ageUserdata(o.age),
    },
  });
  // The apply writes without fsync per file: the snapshot's data must be on disk before the
  // default points at it, or a power cut could boot a half-written snapshot.
  await filesystemSync(root);
  if (o.boot && plan) {
    try {
      await o.boot.sd.stageFiles(ctx, plan);
      crashPoint('boot-files');
      await o.boot.sd.stageEntry(plan);
      crashPoint('boot-entry');
      // Before the commit point: a LoaderEntryDefault (bootctl set-default) naming another entry
      // would keep the loader there after the commit. A crash after its removal boots the old
      // default through loader.conf's `default tiu-*` (N's entry is still parked).
      const removed = await o.boot.sd.clearForeignEntryDefault();
      if (removed !== undefined)
        o.boot.log?.(
          `removed the EFI variable LoaderEntryDefault ('${removed}'): it overrides loader.conf's 'default ${LOADER_DEFAULT}' and would keep systemd-boot off snapshot ${n}`,
        );
    } catch (e) {
      await o.boot.sd.dropSnapshot(n).catch(() => undefined);
      throw e;
    }
  }
  await setDefaultSnapshot(ctx, n);
  await filesystemSync(root);
  crashPoint('btrfs-default');
  if (o.boot) {
    const state = await readState(ctx);
    await o.boot.sd.reconcile(ctx, state, o.boot.config, { create: false });
    crashPoint('loader-default');
  }
  await ctx.snapper.modify(n, { userdata: { [UD.inProgress]: '' } });
}

/**
 * Make snapshot N the btrfs default subvolume. snapper 0.10.4 has no `modify --default`, so
 * this is btrfs-progs' set-default, which is what snapper's rollback does underneath.
 */
export async function setDefaultSnapshot(ctx: Context, n: number): Promise<void> {
  const root = snapshotPath(ctx.sysroot, n);
  const info = await subvolumeShow(root).catch(() => {
    throw new SnapshotError('SNAPSHOT_NOT_FOUND', `snapshot ${n} does not exist (no subvolume at ${root})`, {
      snapshot: n,
    });
  });
  if (snapshotNumberOf(info.path) !== n) {
    throw new SnapshotError('SNAPSHOT_NOT_FOUND', `${root} is not snapshot ${n}'s subvolume (it is '${info.path}')`, {
      snapshot: n,
    });
  }
  await setDefault(info.id, ctx.sysroot);
  const now = await getDefault(ctx.sysroot);
  if (now.id !== info.id)
    throw new SnapshotError(
      'SNAPSHOT_DEFAULT_FAILED',
      `the default subvolume is still ${now.path} after setting snapshot ${n}`,
      { snapshot: n },
    );
}

export interface CleanupReport {
  deleted: number[];
  /** Snapshot directories without snapper's info.xml (a create killed half-way), removed. */
  orphans: number[];
  /** In-progress marks cleared on snapshots that had already become the default. */
  finished: number[];
}

/** Deal with what a crashed update left: delete unfinished snapshots, finish committed ones. */
export async function cleanupInProgress(ctx: Context): Promise<CleanupReport> {
  const state = await readState(ctx);
  const report: CleanupReport = { deleted: [], orphans: [], finished: [] };
  // snapper writes info.xml after creating the subvolume (and removes it before the directory
  // when deleting): a kill in between leaves a directory snapper does not list. It is tiu's only
  // when a record claims it: numbered above what was there when a create was cut off, or the one a
  // cut-off delete named; any other (snapper's timeline creating one right now) is left alone.
  const creating = await readCreating(ctx.sysroot);
  const deleting = await readDeleting(ctx.sysroot);
  const listed = new Set(state.snapshots.map((s) => s.number));
  const dirs = await snapshotNumbers(ctx.sysroot);
  for (const n of dirs.filter((d) => !listed.has(d) && d !== state.default && d !== state.booted)) {
    if (n !== deleting && (creating === undefined || n <= creating)) continue;
    if (existsSync(join(ctx.sysroot, '.snapshots', String(n), 'info.xml'))) continue;
    await deleteSnapshot(ctx, n);
    report.orphans.push(n);
  }
  if (creating !== undefined) await clearCreating(ctx.sysroot);
  if (deleting !== undefined) await clearDeleting(ctx.sysroot);
  for (const s of state.snapshots.filter((x) => x.inProgress)) {
    if (s.default || s.booted) {
      await ctx.snapper.modify(s.number, { userdata: { [UD.inProgress]: '' } });
      report.finished.push(s.number);
    } else {
      await deleteSnapshot(ctx, s.number);
      report.deleted.push(s.number);
    }
  }
  return report;
}
