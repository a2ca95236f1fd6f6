/**
 * The filesystem primitives of the executor. Every write goes through a path whose parent
 * components were checked to be real directories (lstat, never following a symlink); files are
 * created under a fresh temporary name with O_CREAT|O_EXCL|O_NOFOLLOW and renamed into place
 * (rename never follows a symlink at the destination); metadata is set through file
 * descriptors opened with O_NOFOLLOW, or l*-calls.
 */
import {
  chmodSync,
  closeSync,
  constants,
  mkdirSync,
  renameSync,
  symlinkSync,
  fchmodSync,
  fchownSync,
  fstatSync,
  ftruncateSync,
  futimesSync,
  lchownSync,
  lstatSync,
  lutimesSync,
  openSync,
  writeSync,
} from 'node:fs';
import { copyFile, link, lstat, open, readdir, rename, rmdir, unlink, type FileHandle } from 'node:fs/promises';
import type { PathLike } from 'node:fs';
import { bbuf, bstr, showPath } from '../../layer/entry.ts';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { DigestMismatchError, SizeMismatchError, TrailingDataError } from '../../oci/digest.ts';
import { makeNode } from '../../host/nodes.ts';
import { BadRootError, UnsafePathError } from './errors.ts';
import { joinPath, parentOf } from '../../layer/paths.ts';
import type { SpaceGuard } from './space.ts';
import type { TreeEntry } from './types.ts';

const BLOCK = 4096;
const SLASH = Buffer.from('/');
const ZERO = Buffer.alloc(BLOCK);

/** Two mtimes are equal when within a microsecond: Node sets times as doubles (sub-µs precision is lost). */
export function sameTime(a: bigint, b: bigint): boolean {
  const d = a - b;
  return d < 1000n && d > -1000n;
}

export function nsToSeconds(ns: bigint): number {
  return Number(ns / 1_000_000_000n) + Number(ns % 1_000_000_000n) / 1e9;
}

let tmpCounter = 0;
export function tmpName(): string {
  return `.tiu-tmp-${process.pid}-${++tmpCounter}`;
}

/**
 * How the relative paths given to a SafeRoot spell names: `binary` (the apply engine: binary
 * strings of src/layer, one char per byte, so any name works) or `text` (UTF-8 strings, for
 * callers that read their names as text, such as the /etc merge).
 */
export type NameEncoding = 'binary' | 'text';

/** A directory tree being written, with the set of relative directories verified to be real. */
export class SafeRoot {
  readonly root: string;
  readonly dev: bigint;
  readonly names: NameEncoding;
  readonly #rootBytes: Buffer;
  readonly #dirs = new Set<string>(['']);

  private constructor(root: string, dev: bigint, names: NameEncoding) {
    this.root = root;
    this.dev = dev;
    this.names = names;
    this.#rootBytes = Buffer.from(root.replace(/\/+$/, ''), 'utf8');
  }

  static async open(root: string, names: NameEncoding = 'text'): Promise<SafeRoot> {
    let st;
    try {
      st = await lstat(root, { bigint: true });
    } catch (e) {
      throw new BadRootError(root, (e as Error).message);
    }
    if (!st.isDirectory()) throw new BadRootError(root, 'is not a directory (or is a symlink)');
    return new SafeRoot(root, st.dev, names);
  }

  /** The absolute path of `rel` as text (a `text` root's names). */
  abs(rel: string): string {
    return rel === '' ? this.root : join(this.root, rel);
  }

  /** The absolute path of `rel` as bytes, whatever the encoding: what every fs call here is given. */
  path(rel: string): Buffer {
    if (rel === '') return Buffer.from(this.root, 'utf8');
    const name = this.names === 'binary' ? bbuf(rel) : Buffer.from(rel, 'utf8');
    return Buffer.concat([this.#rootBytes, SLASH, name]);
  }

  /** `rel` as an error names it (binary string or bytes). */
  #entry(rel: string): string | Buffer {
    return this.names === 'binary' ? rel : Buffer.from(rel, 'utf8');
  }

  /** `rel` for a message. */
  show(rel: string): string {
    return this.names === 'binary' ? showPath(rel) : rel;
  }

  /** Check, component by component, that `rel` is a real directory inside the root. */
  async verifyDir(rel: string, forEntry = rel): Promise<void> {
    const missing = await this.probeDir(rel, forEntry);
    if (missing !== null)
      throw new UnsafePathError(this.#entry(forEntry), `parent ${JSON.stringify(this.show(missing))} does not exist`);
  }

  /**
   * Like verifyDir, but a missing component is not an error: null when `rel` is a real
   * directory, else the first component that does not exist. A symlink or non-directory on the
   * way still throws PATH_UNSAFE (lstat per component, never following a link).
   */
  async probeDir(rel: string, forEntry = rel): Promise<string | null> {
    if (this.#dirs.has(rel)) return null;
    const up = await this.probeDir(parentOf(rel), forEntry);
    if (up !== null) return up;
    let st;
    try {
      st = await lstat(this.path(rel));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return rel;
      throw e;
    }
    if (st.isSymbolicLink())
      throw new UnsafePathError(
        this.#entry(forEntry),
        `parent ${JSON.stringify(this.show(rel))} is a symlink: writing through it is refused`,
      );
    if (!st.isDirectory())
      throw new UnsafePathError(this.#entry(forEntry), `parent ${JSON.stringify(this.show(rel))} is not a directory`);
    this.#dirs.add(rel);
    return null;
  }

  /** Forget verified directories at or below `rel` (it is being removed or replaced). */
  forget(rel: string): void {
    // verifyDir adds parents before children: nothing below an unverified directory is in the set
    if (rel === '' || !this.#dirs.has(rel)) return;
    for (const d of [...this.#dirs]) if (d === rel || d.startsWith(rel + '/')) this.#dirs.delete(d);
  }

  markDir(rel: string): void {
    this.#dirs.add(rel);
  }

  /** A fresh temporary name in the (verified) parent directory of `rel`. */
  async tmpBeside(rel: string): Promise<string> {
    const parent = parentOf(rel);
    await this.verifyDir(parent, rel);
    return joinPath(parent, tmpName());
  }
}

/**
 * Remove `rel` and everything below it without following symlinks. Directories on another
 * device (nested subvolumes, mounts) are emptied but not removed or crossed... they are left
 * alone entirely and reported. Returns {count, bytes} of what was removed.
 */
export async function removeTree(
  sr: SafeRoot,
  rel: string,
  warnings: string[],
): Promise<{ count: number; bytes: number }> {
  const out = { count: 0, bytes: 0 };
  const abs = sr.path(rel);
  let st;
  try {
    st = await lstat(abs, { bigint: true });
  } catch {
    return out;
  }
  if (st.isDirectory()) {
    if (st.dev !== sr.dev) {
      warnings.push(`${sr.show(rel)}: another subvolume or mount, left in place`);
      return out;
    }
    const names = (await readdir(abs, { encoding: 'buffer' })).map((n) =>
      sr.names === 'binary' ? bstr(n) : n.toString('utf8'),
    );
    let kept = false;
    for (const n of names) {
      const r = await removeTree(sr, joinPath(rel, n), warnings);
      out.count += r.count;
      out.bytes += r.bytes;
      if (r.count < 0) kept = true;
    }
    try {
      await rmdir(abs);
      out.count++;
    } catch (e) {
      if (!kept) throw e;
      warnings.push(`${sr.show(rel)}: not removed, something inside was left in place`);
    }
    sr.forget(rel);
  } else {
    await unlink(abs);
    out.count++;
    if (st.isFile() && st.nlink === 1n) out.bytes += Number(st.size);
  }
  return out;
}

/**
 * Write a stream into a new file (O_EXCL|O_NOFOLLOW), verifying sha256 digest and size when
 * given, leaving holes where whole 4 KiB blocks are zero. Returns the bytes actually written
 * and the sha256 of the content. With `space`, the bytes written count against the reserve.
 */
export async function writeNewFile(
  abs: PathLike,
  content: AsyncIterable<Buffer | Uint8Array>,
  expect?: { digest?: string; size: number },
  what = abs.toString(),
  space?: SpaceGuard,
): Promise<{ written: number; digest: string }> {
  const fh = await open(abs, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  let pos = 0;
  let written = 0;
  const hash = createHash('sha256');
  let digest = '';
  try {
    for await (const raw of content) {
      const chunk = Buffer.isBuffer(raw) ? raw : Buffer.from(raw);
      if (expect && pos + chunk.length > expect.size) throw new TrailingDataError(expect.digest ?? what, expect.size);
      hash.update(chunk);
      const n = await writeSparse(fh, chunk, pos);
      written += n;
      pos += chunk.length;
      // the reserve of free space (DISK_FULL before the filesystem is full)
      if (space) await space.wrote(n);
    }
    if (expect && pos !== expect.size) throw new SizeMismatchError(expect.digest ?? what, expect.size, pos, what);
    digest = `sha256:${hash.digest('hex')}`;
    if (expect?.digest && digest !== expect.digest) throw new DigestMismatchError(expect.digest, digest, what);
    await fh.truncate(pos);
  } finally {
    await fh.close();
  }
  return { written, digest };
}

/** Write `chunk` at `pos`, skipping whole zero 4 KiB blocks of the file (holes); the bytes written. */
export async function writeSparse(fh: FileHandle, chunk: Buffer, pos: number): Promise<number> {
  let written = 0;
  let i = 0;
  while (i < chunk.length) {
    // up to the next block boundary of the file
    const end = Math.min(chunk.length, i + (BLOCK - ((pos + i) % BLOCK)));
    const piece = chunk.subarray(i, end);
    const isZeroBlock = piece.length === BLOCK && piece.equals(ZERO);
    if (!isZeroBlock) {
      // coalesce consecutive non-zero blocks into one write
      let j = end;
      while (j < chunk.length) {
        const e2 = Math.min(chunk.length, j + BLOCK);
        const p2 = chunk.subarray(j, e2);
        if (p2.length === BLOCK && p2.equals(ZERO)) break;
        j = e2;
      }
      await fh.write(chunk, i, j - i, pos + i);
      written += j - i;
      i = j;
    } else i = end;
  }
  return written;
}

/** Write `data` as a whole new file at `fd`, zero 4 KiB blocks left as holes (synchronous). */
export function writeSparseSync(fd: number, data: Buffer): void {
  let i = 0;
  let end = 0;
  while (i < data.length) {
    const j = Math.min(data.length, i + BLOCK);
    if (j - i === BLOCK && data.subarray(i, j).equals(ZERO)) {
      i = j;
      continue;
    }
    // coalesce consecutive non-zero blocks into one write
    let k = j;
    while (k < data.length) {
      const k2 = Math.min(data.length, k + BLOCK);
      if (k2 - k === BLOCK && data.subarray(k, k2).equals(ZERO)) break;
      k = k2;
    }
    for (let off = i; off < k;) off += writeSync(fd, data, off, k - off, off);
    i = k;
    end = k;
  }
  if (end !== data.length) ftruncateSync(fd, data.length);
}

/** Open an existing regular file or directory for metadata changes, never following a symlink. */
export async function openNoFollow(abs: PathLike, dir: boolean): Promise<FileHandle> {
  return open(
    abs,
    constants.O_RDONLY | constants.O_NOFOLLOW | (dir ? constants.O_DIRECTORY : 0) | constants.O_NONBLOCK,
  );
}

/**
 * Set metadata on whatever is at `rel` (must be of the entry's type; checked with lstat).
 * Synchronous system calls: each is microseconds, and a thread-pool round trip for each of the
 * five or six calls per file dominated the apply of a whole OS tree.
 */
export function setMetaAt(
  sr: SafeRoot,
  rel: string,
  e: TreeEntry,
  what: { owner?: boolean; mode?: boolean; mtime?: boolean } = { owner: true, mode: true, mtime: true },
): Promise<void> {
  try {
    setMetaAtSync(sr.path(rel), rel, e, what);
    return Promise.resolve();
  } catch (err) {
    return Promise.reject(err instanceof Error ? err : new Error(String(err)));
  }
}

function setMetaAtSync(
  abs: Buffer,
  rel: string,
  e: TreeEntry,
  what: { owner?: boolean; mode?: boolean; mtime?: boolean },
): void {
  const t = e.type === 'hardlink' ? 'reg' : e.type;
  if (t === 'reg' || t === 'dir') {
    const fd = openSync(
      abs,
      constants.O_RDONLY | constants.O_NOFOLLOW | (t === 'dir' ? constants.O_DIRECTORY : 0) | constants.O_NONBLOCK,
    );
    try {
      const st = fstatSync(fd);
      if (t === 'reg' ? !st.isFile() : !st.isDirectory()) throw new UnsafePathError(rel, `expected a ${t} on disk`);
      // owner, then mode (chown clears setuid), then times
      if (what.owner) fchownSync(fd, e.uid, e.gid);
      if (what.owner || what.mode) fchmodSync(fd, e.mode);
      if (what.mtime) {
        const s = nsToSeconds(e.mtimeNs);
        futimesSync(fd, s, s);
      }
    } finally {
      closeSync(fd);
    }
    return;
  }
  if (what.owner) lchownSync(abs, e.uid, e.gid);
  if (t !== 'symlink' && (what.owner || what.mode)) {
    if (lstatSync(abs).isSymbolicLink()) throw new UnsafePathError(rel, 'expected a device or fifo, found a symlink');
    chmodSync(abs, e.mode);
  }
  if (what.mtime) {
    const s = nsToSeconds(e.mtimeNs);
    lutimesSync(abs, s, s);
  }
}

/** Create a symlink, device node or fifo at a temporary name and rename it to `rel`. */
export async function createSpecial(sr: SafeRoot, rel: string, e: TreeEntry): Promise<void> {
  const tmp = await sr.tmpBeside(rel);
  const abs = sr.path(tmp);
  if (e.type === 'symlink') symlinkSync(bbuf(e.linkname!), abs);
  else if (e.type === 'char' || e.type === 'block' || e.type === 'fifo')
    await makeNode(abs, e.type, e.mode & 0o777, e.devmajor ?? 0, e.devminor ?? 0);
  else throw new Error(`createSpecial: ${e.type}`);
  await setMetaAt(sr, tmp, e);
  renameSync(abs, sr.path(rel));
}

/** Create the directory `rel` (parent verified) if missing and set its owner and mode. */
export async function ensureDir(sr: SafeRoot, rel: string, e: TreeEntry): Promise<void> {
  if (rel !== '') {
    await sr.verifyDir(parentOf(rel), rel);
    try {
      mkdirSync(sr.path(rel), 0o700);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
  await sr.verifyDir(rel);
  await setMetaAt(sr, rel, e, { owner: true, mode: true });
}

/** Hardlink `rel` to `target` (both inside the root; target must not be a directory). */
export async function makeLink(sr: SafeRoot, rel: string, target: string): Promise<void> {
  await sr.verifyDir(parentOf(target), rel);
  const tabs = sr.path(target);
  const st = await lstat(tabs).catch(() => null);
  if (!st) throw new UnsafePathError(rel, `hardlink target ${JSON.stringify(showPath(target))} does not exist`);
  if (st.isDirectory())
    throw new UnsafePathError(rel, `hardlink target ${JSON.stringify(showPath(target))} is a directory`);
  const tmp = await sr.tmpBeside(rel);
  await link(tabs, sr.path(tmp));
  await rename(sr.path(tmp), sr.path(rel));
  // rename() between two names of the same inode does nothing: the temporary name stays.
  await unlink(sr.path(tmp)).catch(() => undefined);
}

/** Reflink `fromAbs` to a new file `toAbs`; falls back to a copy where the filesystem can't. Returns true for a real reflink. */
export async function reflinkFile(fromAbs: PathLike, toAbs: PathLike, allowCopy: boolean): Promise<boolean> {
  try {
    await copyFile(fromAbs, toAbs, constants.COPYFILE_EXCL | constants.COPYFILE_FICLONE_FORCE);
    return true;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (!allowCopy || !['ENOTSUP', 'EOPNOTSUPP', 'EXDEV', 'EINVAL', 'ENOSYS', 'ENOTTY'].includes(code ?? '')) throw e;
  }
  await copyFile(fromAbs, toAbs, constants.COPYFILE_EXCL);
  return false;
}
