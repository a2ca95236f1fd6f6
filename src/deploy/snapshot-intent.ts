/**
 * What identifies a half-created snapshot as tiu's own. `snapper create` makes `.snapshots/N`,
 * snapshots the subvolume into it and only then writes info.xml: a kill in between leaves a
 * directory snapper does not list, and nothing in it says who made it (snapper's timeline or a
 * manual `snapper create` looks the same while it runs). So before tiu runs snapper create it
 * records, under the update lock, the highest snapshot number there is; the record goes once
 * snapper has answered. A record found by the next run means that create was cut off, and only
 * unlisted directories numbered above it can be what it left.
 *
 * The record lives in `.snapshots` itself (`.tiu-creating`, a name snapper never uses for a
 * snapshot), on the same filesystem as what it describes, written durably: a power cut during
 * the create is what it is for.
 */
import { lstat, open, readdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';

const RECORD = '.tiu-creating';
/** The record is one small number: anything larger is not tiu's record. */
const MAX_RECORD_BYTES = 64;

/** The numbered entries of `.snapshots` (snapshot directories, finished or not). */
export async function snapshotNumbers(sysroot: string): Promise<number[]> {
  const names = await readdir(join(sysroot, '.snapshots')).catch(() => [] as string[]);
  return names.filter((d) => /^\d{1,9}$/.test(d)).map(Number);
}

/** Record that tiu is about to create a snapshot: every number above the highest present may be it. */
export async function recordCreating(sysroot: string): Promise<void> {
  const dir = join(sysroot, '.snapshots');
  const above = Math.max(0, ...(await snapshotNumbers(sysroot)));
  const tmp = join(dir, `${RECORD}.tmp`);
  await rm(tmp, { force: true });
  const f = await open(tmp, 'wx', 0o600);
  try {
    await f.writeFile(`${above}\n`);
    await f.sync();
  } finally {
    await f.close();
  }
  await rename(tmp, join(dir, RECORD));
  await syncDir(dir);
}

/** The number recorded by a create that never finished, or undefined (no record, or not one tiu wrote). */
export async function readCreating(sysroot: string): Promise<number | undefined> {
  const p = join(sysroot, '.snapshots', RECORD);
  const s = await lstat(p).catch(() => undefined);
  if (!s?.isFile() || s.size > MAX_RECORD_BYTES) return undefined;
  const m = /^(\d{1,9})\n$/.exec(await readFile(p, 'utf8'));
  return m ? Number(m[1]) : undefined;
}

/** The create has answered (its snapshot is listed and marked, or it failed): the record goes. */
export async function clearCreating(sysroot: string): Promise<void> {
  const dir = join(sysroot, '.snapshots');
  await rm(join(dir, RECORD), { force: true });
  await rm(join(dir, `${RECORD}.tmp`), { force: true });
}

async function syncDir(dir: string): Promise<void> {
  const d = await open(dir, 'r');
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}
