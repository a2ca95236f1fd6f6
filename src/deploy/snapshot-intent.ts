/**
 * What identifies a half-created snapshot as tiu's own. `snapper create` makes `.snapshots/N`,
 * snapshots the subvolume into it and only then writes info.xml: a kill in between leaves a
 * directory snapper does not list, and nothing in it says who made it (snapper's timeline or a
 * manual `snapper create` looks the same while it runs). So before tiu runs snapper create it
 * records, under the update lock, the highest snapshot number there is; the record goes once
 * snapper has answered. A record found by the next run means that create was cut off, and only
 * unlisted directories numbered above it can be what it left.
 *
 * A delete cut off leaves the same kind of directory; `.tiu-deleting` names the snapshot tiu
 * was deleting. The records live in `.snapshots` itself (names snapper never uses for a
 * snapshot), on the same filesystem as what they describe, written durably: a power cut is
 * what they are for.
 */
import { lstat, open, readdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';

const CREATING = '.tiu-creating';
const DELETING = '.tiu-deleting';
/** A record is one small number: anything larger is not tiu's record. */
const MAX_RECORD_BYTES = 64;

/** The numbered entries of `.snapshots` (snapshot directories, finished or not). */
export async function snapshotNumbers(sysroot: string): Promise<number[]> {
  const names = await readdir(join(sysroot, '.snapshots')).catch(() => [] as string[]);
  return names.filter((d) => /^\d{1,9}$/.test(d)).map(Number);
}

/** Record that tiu is about to create a snapshot: every number above the highest present may be it. */
export async function recordCreating(sysroot: string): Promise<void> {
  await writeRecord(sysroot, CREATING, Math.max(0, ...(await snapshotNumbers(sysroot))));
}

/** The number recorded by a create that never finished, or undefined (no record, or not one tiu wrote). */
export function readCreating(sysroot: string): Promise<number | undefined> {
  return readRecord(sysroot, CREATING);
}

/** The create has answered (its snapshot is listed and marked, or it failed): the record goes. */
export function clearCreating(sysroot: string): Promise<void> {
  return clearRecord(sysroot, CREATING);
}

/**
 * Record that tiu is about to delete its snapshot N. snapper's delete removes the subvolume,
 * then info.xml, then the directory: a kill in between leaves `.snapshots/N` unlisted, like a
 * create cut off, and this record claims it for the next run.
 */
export function recordDeleting(sysroot: string, n: number): Promise<void> {
  return writeRecord(sysroot, DELETING, n);
}

export function readDeleting(sysroot: string): Promise<number | undefined> {
  return readRecord(sysroot, DELETING);
}

export function clearDeleting(sysroot: string): Promise<void> {
  return clearRecord(sysroot, DELETING);
}

/** tmp, fsync, rename, fsync of `.snapshots`: after a power cut the record is there or not, never half. */
async function writeRecord(sysroot: string, name: string, value: number): Promise<void> {
  const dir = join(sysroot, '.snapshots');
  const tmp = join(dir, `${name}.tmp`);
  await rm(tmp, { force: true });
  const f = await open(tmp, 'wx', 0o600);
  try {
    await f.writeFile(`${value}\n`);
    await f.sync();
  } finally {
    await f.close();
  }
  await rename(tmp, join(dir, name));
  await syncDir(dir);
}

async function readRecord(sysroot: string, name: string): Promise<number | undefined> {
  const p = join(sysroot, '.snapshots', name);
  const s = await lstat(p).catch(() => undefined);
  if (!s?.isFile() || s.size > MAX_RECORD_BYTES) return undefined;
  const m = /^(\d{1,9})\n$/.exec(await readFile(p, 'utf8'));
  return m ? Number(m[1]) : undefined;
}

async function clearRecord(sysroot: string, name: string): Promise<void> {
  const dir = join(sysroot, '.snapshots');
  await rm(join(dir, name), { force: true });
  await rm(join(dir, `${name}.tmp`), { force: true });
}

async function syncDir(dir: string): Promise<void> {
  const d = await open(dir, 'r');
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}
