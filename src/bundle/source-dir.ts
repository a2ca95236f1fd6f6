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
import { bstr, devMajor, devMinor, fileTypeOf, pathUnder, showPath, type TreeEntry } from '../layer/entry.ts';
import { compareBytes } from '../layer/paths.ts';

export { devMajor, devMinor } from '../layer/entry.ts';

/** The walk lets the event loop run after this many directories (getfattr's output is read meanwhile). */
/** The most distinct mtimes the walk keeps one BigInt of at a time (~100 KiB of map). */
const SHARED_TIMES = 4096;
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
  const entries: TreeEntry[] = [];
  // Shared by every entry: no per-file path buffer or empty array kept in memory.
  const contentRoot = { root };
  const noXattrs: Record<string, Buffer> = Object.freeze({});
  const inodes = new Map<string, string>();
  const abs = (rel: string) => pathUnder(root, rel);
  // Each lstat gives a new BigInt (24 bytes) that the entry keeps to the end of the build; files
  // of one package share their mtime (the bench's larger tree: 45,700 entries, 2,413 mtimes), so
  // one BigInt per mtime seen is kept, the others die young. Bounded: a tree of distinct mtimes
  // empties it now and then instead of growing it by an entry a file.
  const times = new Map<bigint, bigint>();
  const sharedTime = (t: bigint): bigint => {
    const had = times.get(t);
    if (had !== undefined) return had;
    if (times.size >= SHARED_TIMES) times.clear();
    times.set(t, t);
    return t;
  };

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
      // Each entry is made whole, its optional fields in the literal: a field added later goes
      // to a property array of its own (~40 bytes an entry: 36,000 of them in the larger bench tree).
      const mode = Number(st.mode & 0o7777n);
      const uid = Number(st.uid);
      const gid = Number(st.gid);
      const mtimeNs = sharedTime(st.mtimeNs);
      let e: TreeEntry;
      if (type === 'reg') {
        const key = `${st.dev}:${st.ino}`;
        const first = st.nlink > 1n ? inodes.get(key) : undefined;
        const size = Number(st.size);
        if (first !== undefined) {
          e = { path, type: 'hardlink', mode, uid, gid, mtimeNs, size, xattrs: noXattrs, linkname: first };
          if (size > 0) e.content = contentRoot;
        } else {
          if (st.nlink > 1n) inodes.set(key, path);
          e =
            size > 0
              ? { path, type, mode, uid, gid, mtimeNs, size, xattrs: noXattrs, content: contentRoot }
              : { path, type, mode, uid, gid, mtimeNs, size, xattrs: noXattrs };
        }
      } else if (type === 'symlink') {
        const linkname = bstr(readlinkSync(p, { encoding: 'buffer' }));
        e = { path, type, mode, uid, gid, mtimeNs, size: 0, xattrs: noXattrs, linkname };
      } else if (type === 'char' || type === 'block') {
        const devmajor = devMajor(st.rdev);
        const devminor = devMinor(st.rdev);
        e = { path, type, mode, uid, gid, mtimeNs, size: 0, xattrs: noXattrs, devmajor, devminor };
      } else {
        e = { path, type, mode, uid, gid, mtimeNs, size: 0, xattrs: noXattrs };
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
