/**
 * A directory as a tree: walk it without following symlinks, lstat everything, read xattrs
 * in one getfattr run. Names are read as bytes. Content stays on disk and is read when the
 * layer is written.
 */
import { lstatSync, readdirSync, readlinkSync } from 'node:fs';
import { lstat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { readTreeXattrs } from '../host/xattr.ts';
import { BuildError } from './errors.ts';
import { bbuf, bstr, devMajor, devMinor, fileTypeOf, showPath, type TreeEntry } from '../layer/entry.ts';
import { compareBytes } from '../layer/paths.ts';

export { devMajor, devMinor } from '../layer/entry.ts';

/** The walk lets the event loop run after this many directories (getfattr's output is read meanwhile). */
const YIELD_EVERY_DIRS = 64;

export interface ScanOptions {
  signal?: AbortSignal;
  /** Skip reading these subtrees at all (tree paths); their directories are still listed. */
  pruneContents?: (path: string) => boolean;
  onProgress?: (entries: number) => void;
}

/** All entries under `root`, sorted by path, with hardlinks as 'hardlink' to the first path. */
export async function scanDirectory(rootArg: string, opts: ScanOptions = {}): Promise<TreeEntry[]> {
  const root = resolve(rootArg);
  let rootStat;
  try {
    rootStat = await lstat(root);
  } catch {
    throw new BuildError('BUILD_SOURCE_NOT_FOUND', `source directory ${root} does not exist`, { source: root });
  }
  if (!rootStat.isDirectory())
    throw new BuildError('BUILD_SOURCE_UNSUPPORTED', `${root} is not a directory`, { source: root });
  // getfattr reads the xattrs in its own process while this thread walks the tree (the walk
  // yields to the event loop now and then, so that getfattr's output is taken as it comes).
  const xattrsRead = readTreeXattrs(root, { signal: opts.signal });
  xattrsRead.catch(() => undefined); // awaited after the walk
  let dirsWalked = 0;
  const rootBuf = Buffer.from(root === '/' ? '' : root, 'utf8');
  const entries: TreeEntry[] = [];
  // Shared by every entry: no per-file path buffer or empty array kept in memory.
  const contentRoot = { root };
  const noXattrs: Record<string, Buffer> = Object.freeze({});
  const inodes = new Map<string, string>();
  const abs = (rel: string) =>
    rel === '' ? Buffer.from(root, 'utf8') : Buffer.concat([rootBuf, Buffer.from('/'), bbuf(rel)]);

  const visit = async (rel: string): Promise<void> => {
    opts.signal?.throwIfAborted();
    // Sync calls: one thread, no promise per file; this keeps a 100k-file scan small in memory.
    if (++dirsWalked % YIELD_EVERY_DIRS === 0) await new Promise(setImmediate);
    const names = readdirSync(abs(rel), { encoding: 'buffer' }).map(bstr).sort(compareBytes);
    for (const name of names) {
      const path = rel === '' ? name : `${rel}/${name}`;
      const p = abs(path);
      const st = lstatSync(p, { bigint: true });
      const type = fileTypeOf(st);
      if (!type) continue;
      const e: TreeEntry = {
        path,
        type,
        mode: Number(st.mode & 0o7777n),
        uid: Number(st.uid),
        gid: Number(st.gid),
        mtimeNs: st.mtimeNs,
        size: 0,
        xattrs: noXattrs,
      };
      if (type === 'reg') {
        const key = `${st.dev}:${st.ino}`;
        const first = st.nlink > 1n ? inodes.get(key) : undefined;
        e.size = Number(st.size);
        if (e.size > 0) e.content = contentRoot;
        if (first !== undefined) {
          e.type = 'hardlink';
          e.linkname = first;
        } else if (st.nlink > 1n) {
          inodes.set(key, path);
        }
      } else if (type === 'symlink') {
        e.linkname = bstr(readlinkSync(p, { encoding: 'buffer' }));
      } else if (type === 'char' || type === 'block') {
        e.devmajor = devMajor(st.rdev);
        e.devminor = devMinor(st.rdev);
      }
      entries.push(e);
      if (entries.length % 10000 === 0) opts.onProgress?.(entries.length);
      if (type === 'dir' && !opts.pruneContents?.(path)) await visit(path);
    }
  };
  try {
    await visit('');
  } catch (e) {
    if (e instanceof BuildError) throw e;
    const err = e as NodeJS.ErrnoException;
    const gone = err.code === 'ENOENT' || err.code === 'ENOTDIR';
    throw new BuildError(
      gone ? 'BUILD_SOURCE_CHANGED' : 'BUILD_SOURCE_UNREADABLE',
      `reading ${root}: ${err.message}${gone ? ' (the tree changed while tiu read it)' : ''}`,
      {
        source: root,
        path: err.path ? showPath(String(err.path)) : undefined,
        errno: err.code,
      },
    );
  }
  const xattrs = await xattrsRead;
  if (xattrs.size)
    for (const e of entries) {
      const list = xattrs.get(e.path);
      if (list) e.xattrs = Object.fromEntries(list);
    }
  return entries;
}
