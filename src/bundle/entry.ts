/**
 * The tree model `tiu build` works on: one TreeEntry per file system object, metadata only.
 * File content stays where it is (the source directory, or a spool file for tar and image
 * sources) and is read again when a layer is written, so a multi-GB tree never sits in memory.
 *
 * Paths are "binary strings": every byte of the on-disk name is one char (latin1), so odd,
 * non-UTF-8 names survive unchanged, Map keys work, and comparing two paths char by char
 * is comparing their bytes. No leading '/', no trailing '/', components joined by '/'.
 */
import { BuildError } from './errors.ts';

export type EntryType = 'reg' | 'dir' | 'symlink' | 'hardlink' | 'char' | 'block' | 'fifo';

/** The entry type of an lstat result; undefined for a socket (never part of an image). */
export function fileTypeOf(st: {
  isFile(): boolean;
  isDirectory(): boolean;
  isSymbolicLink(): boolean;
  isCharacterDevice(): boolean;
  isBlockDevice(): boolean;
  isFIFO(): boolean;
}): EntryType | undefined {
  if (st.isFile()) return 'reg';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'char';
  if (st.isBlockDevice()) return 'block';
  if (st.isFIFO()) return 'fifo';
  return undefined;
}

/** Linux's major and minor device numbers of an st_rdev (glibc's gnu_dev_major/minor). */
export function devMajor(rdev: bigint): number {
  return Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn));
}
export function devMinor(rdev: bigint): number {
  return Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));
}

/**
 * Where a regular file's bytes are: `size` bytes at `offset` in `file` (`whole`: the file is
 * exactly that, so a size change means it changed under us), or in memory.
 */
export type ContentRef =
  { file: string | Buffer; offset: number; whole?: boolean } | { data: Buffer } | { root: string };

/** `{ root }` content: the file at root/<entry path> is the whole content (a directory source). */
export function contentFile(e: TreeEntry): { file: string | Buffer; offset: number; whole: boolean } | undefined {
  const c = e.content;
  if (!c || 'data' in c) return undefined;
  if ('root' in c)
    return {
      file: Buffer.concat([Buffer.from(c.root, 'utf8'), Buffer.from('/'), bbuf(e.path)]),
      offset: 0,
      whole: true,
    };
  return { file: c.file, offset: c.offset, whole: c.whole ?? false };
}

export interface TreeEntry {
  path: string;
  type: EntryType;
  /** Permission bits with setuid/setgid/sticky (mask 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** Seconds since the epoch (may be negative) and nanoseconds. */
  mtime: number;
  mtimeNsec: number;
  /** Content size of a regular file; 0 otherwise. */
  size: number;
  /** Symlink target, or the tree path a hardlink points at (binary strings). */
  link?: string;
  devMajor?: number;
  devMinor?: number;
  /** Extended attributes, sorted by name; values are raw bytes. */
  xattrs: [string, Buffer][];
  content?: ContentRef;
}

/** A binary string (one char per byte) from bytes, and back. */
export function bstr(b: Uint8Array): string {
  return Buffer.from(b).toString('latin1');
}
export function bbuf(s: string): Buffer {
  return Buffer.from(s, 'latin1');
}
/** A binary string as text for messages and JSON (invalid UTF-8 becomes U+FFFD). */
export function showPath(s: string): string {
  return bbuf(s).toString('utf8');
}
/** Is this binary string valid UTF-8? */
export function isUtf8(s: string): boolean {
  const b = bbuf(s);
  return Buffer.from(b.toString('utf8'), 'utf8').equals(b);
}

/** Byte order, which is also the order entries appear in a tar layer. */
export function comparePaths(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * Normalise a path from a tar header or user input into tree form. Refuses anything that could
 * land outside the tree: `..` components and (for tar members, `allowAbsolute` false) absolute
 * paths. `.` components and repeated slashes are dropped. Returns '' for the root itself.
 */
export function normalizeTreePath(raw: string, what: string, allowAbsolute = false): string {
  if (raw.includes('\0'))
    throw new BuildError('PATH_UNSAFE', `${what}: path contains a NUL byte`, { path: showPath(raw) });
  if (raw.startsWith('/') && !allowAbsolute) {
    // "./" prefixed names are normal; "/etc/passwd" is not.
    throw new BuildError('PATH_UNSAFE', `${what}: absolute path ${JSON.stringify(showPath(raw))} is not allowed`, {
      path: showPath(raw),
    });
  }
  const parts: string[] = [];
  for (const c of raw.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..')
      throw new BuildError('PATH_UNSAFE', `${what}: path ${JSON.stringify(showPath(raw))} leaves the tree ('..')`, {
        path: showPath(raw),
      });
    parts.push(c);
  }
  return parts.join('/');
}

export function parentOf(p: string): string {
  const i = p.lastIndexOf('/');
  return i < 0 ? '' : p.slice(0, i);
}

/** All ancestors of a path, outermost first (not '' and not the path itself). */
export function ancestorsOf(p: string): string[] {
  const out: string[] = [];
  let i = p.indexOf('/');
  while (i >= 0) {
    out.push(p.slice(0, i));
    i = p.indexOf('/', i + 1);
  }
  return out;
}

/** Is `p` equal to `dir` or inside it? */
export function isUnder(p: string, dir: string): boolean {
  return dir === '' || p === dir || p.startsWith(dir + '/');
}
