/** Durable, atomic file writes: temp file in the same directory, fsync, rename, fsync the directory. */
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

export function tempNameFor(path: string): string {
  return join(dirname(path), `.${basename(path)}.tiu-${randomBytes(6).toString('hex')}.tmp`);
}

export async function fsyncDir(dir: string): Promise<void> {
  await fsyncPath(dir, constants.O_RDONLY | constants.O_DIRECTORY);
}

/** fsync a file written by other means (a stream, a rename, a copy) before it is renamed into place. */
export async function fsyncFile(path: string): Promise<void> {
  await fsyncPath(path, constants.O_RDONLY);
}

async function fsyncPath(path: string, flags: number): Promise<void> {
  const fh = await open(path, flags);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export interface AtomicWriteOptions {
  mode?: number;
  /** The temporary name (same directory as `path`); default tempNameFor(path). */
  tempPath?: string;
}

/**
 * Replace `path` with what `fill` writes into a new file, so that readers see the old or the new
 * content, never a mix. A failure (of `fill` too) removes the temporary file and renames nothing.
 */
export async function replaceFileAtomic(
  path: string,
  fill: (fh: FileHandle) => Promise<void>,
  opts: AtomicWriteOptions = {},
): Promise<void> {
  const tmp = opts.tempPath ?? tempNameFor(path);
  const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, opts.mode ?? 0o644);
  try {
    try {
      await fill(fh);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (e) {
    await unlink(tmp).catch(() => undefined);
    throw e;
  }
  await fsyncDir(dirname(path));
}

/** Replace `path` with `data` atomically (see replaceFileAtomic). */
export async function writeFileAtomic(path: string, data: Uint8Array | string, mode = 0o644): Promise<void> {
  await replaceFileAtomic(path, (fh) => fh.writeFile(data), { mode });
}
