/**
 * The one tree model of a layer, for `tiu build` and the device alike: one TreeEntry per file
 * system object, metadata only. On the build, file content stays where it is (the source
 * directory, or a spool file for tar and image sources) and is read again when a layer is
 * written (`content`); on the device, `digest` and `source` say what to fetch.
 *
 * Paths, link targets and xattr values are bytes end to end: paths are "binary strings" (every
 * byte of the name is one char, latin1), so odd, non-UTF-8 names survive unchanged, Map keys
 * work, and comparing two paths char by char is comparing their bytes. They become Buffers only
 * at the filesystem boundary (`bbuf`) and text only for messages and JSON (`showPath`).
 * Path rules: paths.ts.
 */
import { isUtf8 as isUtf8Bytes } from 'node:buffer';
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
      file: pathUnder(c.root, e.path),
      offset: 0,
      whole: true,
    };
  return { file: c.file, offset: c.offset, whole: c.whole ?? false };
}

/** Where an entry's content sits in its layer, so a later fetch can take just that range. */
export interface ContentSource {
  /** Index of the layer in the image (0 = lowest). */
  layer: number;
  /** Compressed byte range [offset, endOffset) of the entry's zstd frame in the layer blob (TOC layers). */
  offset?: number;
  endOffset?: number;
}

/** One entry of a tree. Paths are normalised (paths.ts): no leading `/` or `./`, no `..`, `''` is the root. */
export interface TreeEntry {
  /** Binary string. */
  path: string;
  type: EntryType;
  /** Permission bits incl. setuid/setgid/sticky (0o7777), no file-type bits. */
  mode: number;
  uid: number;
  gid: number;
  /** Modification time in nanoseconds since the epoch (may be negative). */
  mtimeNs: bigint;
  /** Extended attributes: names as text, values as raw bytes (security.capability is binary). */
  xattrs: Record<string, Buffer>;
  /** Content size for `reg`; 0 otherwise. */
  size: number;
  /** Symlink target (binary string, as stored) or, for `hardlink`, the normalised path of the linked entry. */
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  /** `sha256:<hex>` of the content for `reg` (required when the device plans from a TOC). */
  digest?: string;
  /** The device: where the content is in the image. */
  source?: ContentSource;
  /** The build: where the content is read from when the layer is written. */
  content?: ContentRef;
  /** A parent directory the image did not list: created 0755 root:root when missing, left alone when present. */
  implicit?: boolean;
}

/** Seconds (floored) and nanoseconds of an entry's mtime, as tar and RFC 3339 spell it. */
/** The xattrs of every entry without any: one frozen object shared, not an empty one per entry. */
export const NO_XATTRS: Record<string, Buffer> = Object.freeze({});

export function mtimeParts(ns: bigint): { sec: number; nsec: number } {
  let sec = ns / 1_000_000_000n;
  let nsec = ns % 1_000_000_000n;
  if (nsec < 0n) {
    nsec += 1_000_000_000n;
    sec -= 1n;
  }
  return { sec: Number(sec), nsec: Number(nsec) };
}

/** Xattr names in byte order: how a tar header and the TOC list them, so the bytes are reproducible. */
export function sortedXattrs(x: Record<string, Buffer>): [string, Buffer][] {
  return Object.entries(x).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
}

/** A binary string (one char per byte) from bytes, and back. */
export function bstr(b: Uint8Array): string {
  return Buffer.from(b).toString('latin1');
}
export function bbuf(s: string): Buffer {
  return Buffer.from(s, 'latin1');
}
/**
 * Is this binary string ASCII only? Then it is its own UTF-8 text, and the helpers below make no
 * Buffer for it: a small Buffer is a slice of Node's shared 64 KiB slabs, which outlive young
 * collections and wait for a full one (a build makes one or more per file).
 */
function isAscii(s: string): boolean {
  return !/[\u0080-\uffff]/.test(s);
}
/** A binary string as text for messages and JSON (invalid UTF-8 becomes U+FFFD). */
export function showPath(s: string): string {
  return isAscii(s) ? s : bbuf(s).toString('utf8');
}
/** Is this binary string valid UTF-8? */
export function isUtf8(s: string): boolean {
  return isAscii(s) || isUtf8Bytes(bbuf(s));
}
/**
 * `root`/`path` (a directory source's root, text; a tree path, a binary string) as the file
 * system calls take it: a string where the path is ASCII, else its bytes.
 */
export function pathUnder(root: string, path: string): string | Buffer {
  if (path === '') return root;
  const base = root === '/' ? '' : root;
  return isAscii(path) ? `${base}/${path}` : Buffer.concat([Buffer.from(`${base}/`, 'utf8'), bbuf(path)]);
}

/** A parent directory the image did not list: 0755 root:root, created only where missing. */
export function implicitDir(path: string): TreeEntry {
  return { path, type: 'dir', mode: 0o755, uid: 0, gid: 0, mtimeNs: 0n, xattrs: {}, size: 0, implicit: true };
}
