/**
 * Remove a file or a directory tree, holding at most a batch of names at a time.
 * `fs.promises.rm(dir, { recursive: true })` reads a directory whole and starts one unlink per
 * entry at once: removing the delta content store of a first install (a flat directory of
 * ~30,000 files) raised the peak RSS by ~90 MiB. Here a directory is read through opendir in
 * batches, each batch unlinked before the next is read. Symlinks are removed, never followed.
 */
import type { Dirent } from 'node:fs';
import { lstat, opendir, rmdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';

/** Names read and unlinked together: enough to keep the thread pool busy. */
const BATCH = 64;

function isMissing(e: unknown): boolean {
  return (e as NodeJS.ErrnoException).code === 'ENOENT';
}

/** Remove `path` and everything below it; a missing path is not an error. */
export async function removeAll(path: string): Promise<void> {
  let st;
  try {
    st = await lstat(path);
  } catch (e) {
    if (isMissing(e)) return;
    throw e;
  }
  if (st.isDirectory()) {
    await emptyDirectory(path);
    await rmdir(path).catch(rethrowUnlessMissing);
  } else await unlink(path).catch(rethrowUnlessMissing);
}

function rethrowUnlessMissing(e: unknown): void {
  if (!isMissing(e)) throw e;
}

/**
 * Pass after pass until a pass finds nothing: whether readdir still returns names created or
 * removed since the directory was opened is unspecified, so one pass may miss some.
 */
async function emptyDirectory(dir: string): Promise<void> {
  for (;;) {
    let seen = 0;
    let batch: Dirent[] = [];
    for await (const d of await opendir(dir, { bufferSize: BATCH })) {
      batch.push(d);
      if (batch.length < BATCH) continue;
      seen += await removeBatch(dir, batch);
      batch = [];
    }
    seen += await removeBatch(dir, batch);
    if (seen === 0) return;
  }
}

/** Files of a batch in parallel, its directories one after another (each holds its own batch). */
async function removeBatch(dir: string, batch: readonly Dirent[]): Promise<number> {
  await Promise.all(
    batch.filter((d) => !d.isDirectory()).map((d) => unlink(join(dir, d.name)).catch(rethrowUnlessMissing)),
  );
  for (const d of batch) if (d.isDirectory()) await removeAll(join(dir, d.name));
  return batch.length;
}
