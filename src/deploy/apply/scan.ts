/**
 * What is in the target directory now: one lstat walk (never following symlinks) and one
 * getfattr run. Content hashes are not computed here: the planner asks for them lazily, only
 * for files whose size matches something in the new tree, through a ContentIndex.
 *
 * Why a cache keyed by (inode, size, mtime, ctime): hashing every same-size file means reading
 * the whole old tree (~1-2 GB on MicroOS) on every update. A btrfs snapshot keeps inode
 * numbers and the full inode (mtime *and* ctime) of its source, so hashes recorded when
 * snapshot N was written stay valid in snapshot N+1 created from it. mtime alone can be set by
 * anyone (touch, tar); ctime can't be set from userspace and changes with any write, chmod,
 * chown or xattr change, so a matching (ino, size, mtime, ctime) means the content is the one
 * that was hashed. Without a cache the index still works: it hashes same-size candidates only,
 * once each.
 */
import { createHash } from 'node:crypto';
import { lstat, open, rename } from 'node:fs/promises';
import { constants, lstatSync, readdirSync, readlinkSync } from 'node:fs';
import { readTreeXattrs } from '../../host/xattr.ts';
import { bbuf, bstr, fileTypeOf } from '../../layer/entry.ts';
import { BadRootError } from './errors.ts';
import { isAtOrBelow, joinPath } from '../../layer/paths.ts';
import { ScanEntries } from './scan-entries.ts';
import { INDEX_HEAD, IndexTextParser } from './content-index-text.ts';
import type { EntryType, ExistingEntry, OldTree, ScannedEntries } from './types.ts';
import type { BigIntStats, PathLike } from 'node:fs';

const SLASH = Buffer.from('/');

export function typeOfStats(st: BigIntStats): EntryType | 'other' {
  return fileTypeOf(st) ?? 'other';
}

/** One lstat result as an entry (the executor's look at a path; a scan keeps rows, scan-entries.ts). */
export function existingFromStats(path: string, st: BigIntStats, linkname?: string): ExistingEntry {
  const e: ExistingEntry = {
    path,
    type: typeOfStats(st),
    mode: Number(st.mode & 0o7777n),
    uid: Number(st.uid),
    gid: Number(st.gid),
    size: Number(st.size),
    mtimeNs: st.mtimeNs,
    ctimeNs: st.ctimeNs,
    ino: st.ino,
    dev: st.dev,
    nlink: Number(st.nlink),
    rdev: st.rdev,
    xattrs: {},
  };
  if (linkname !== undefined) e.linkname = linkname;
  return e;
}

export interface ScanOptions {
  /** Relative paths whose content is neither scanned nor ever deleted (other subvolumes, /.snapshots). */
  preserve?: readonly string[];
  /** Skip reading xattrs (tests on filesystems without them). */
  noXattrs?: boolean;
}

/** Walk `root` (which must be a real directory) and describe everything in it. */
export async function scanTree(root: string, opts: ScanOptions = {}): Promise<OldTree> {
  let rst: BigIntStats;
  try {
    rst = await lstat(root, { bigint: true });
  } catch (e) {
    throw new BadRootError(root, (e as Error).message);
  }
  if (!rst.isDirectory()) throw new BadRootError(root, 'is not a directory (or is a symlink)');
  const preserve = opts.preserve ?? [];
  const entries = new ScanEntries();
  entries.addStats('', rst);
  // Synchronous calls: one lstat is a few microseconds, while a round trip through libuv's
  // thread pool per entry made the walk of a 13k-entry tree take over a second. The event
  // loop gets a turn every few hundred entries.
  // Names are read as bytes and kept as binary strings (src/layer/entry.ts), like entry paths.
  const rootBytes = Buffer.from(root.replace(/\/+$/, ''), 'utf8');
  const absOf = (rel: string) => (rel === '' ? rootBytes : Buffer.concat([rootBytes, SLASH, bbuf(rel)]));
  const stack: string[] = [''];
  let sinceYield = 0;
  while (stack.length > 0) {
    const rel = stack.pop()!;
    for (const name of readdirSync(absOf(rel), { encoding: 'buffer' })) {
      const p = joinPath(rel, bstr(name));
      const abs = absOf(p);
      const st = lstatSync(abs, { bigint: true });
      const link = st.isSymbolicLink() ? bstr(readlinkSync(abs, { encoding: 'buffer' })) : undefined;
      entries.addStats(p, st, link);
      if (st.isDirectory() && !preserve.some((x) => isAtOrBelow(p, x))) stack.push(p);
      if (++sinceYield >= 500) {
        sinceYield = 0;
        await new Promise((r) => setImmediate(r));
      }
    }
  }
  if (!opts.noXattrs) {
    for (const [rel, xs] of await readTreeXattrs(root)) entries.setXattrs(rel, Object.fromEntries(xs));
  }
  return indexOldTree(root, entries);
}

export function indexOldTree(root: string, entries: ScannedEntries): OldTree {
  const bySize = new Map<number, string | string[]>();
  const byIno = new Map<bigint, string[]>();
  for (const e of entries.values()) {
    if (e.type !== 'reg') continue;
    const s = bySize.get(e.size);
    if (s === undefined) bySize.set(e.size, e.path);
    else if (typeof s === 'string') bySize.set(e.size, [s, e.path]);
    else s.push(e.path);
    if (e.nlink < 2) continue;
    // A new list as a literal: `[]` then push() reserves 17 slots.
    const i = byIno.get(e.ino);
    if (i) i.push(e.path);
    else byIno.set(e.ino, [e.path]);
  }
  return { root, entries, bySize, byIno };
}

const NO_PATHS: readonly string[] = [];

/** The regular files of `old` that have `size` bytes. */
export function pathsOfSize(old: OldTree, size: number): readonly string[] {
  const s = old.bySize.get(size);
  return s === undefined ? NO_PATHS : typeof s === 'string' ? [s] : s;
}

/** Hashes of old-tree files, asked for lazily by the planner. */
export interface ContentHasher {
  digestOf(e: ExistingEntry): Promise<string>;
}

/**
 * The saved index: `{"version":1,"entries":{"<ino>:<size>:<mtimeNs>:<ctimeNs>":"sha256:<hex>",...}}`,
 * the JSON text JSON.stringify made of it before (keys are digits, `:` and `-`: nothing to escape).
 * It is read in pieces of this size, each parsed as it comes (content-index-text.ts).
 */
const INDEX_READ_PIECE = 64 * 1024;

function keyOf(e: Pick<ExistingEntry, 'ino' | 'size' | 'mtimeNs' | 'ctimeNs'>): string {
  return `${e.ino}:${e.size}:${e.mtimeNs}:${e.ctimeNs}`;
}

const SHA256 = /^sha256:[0-9a-f]{64}$/;
const DIGEST_BYTES = 32;

/**
 * sha256 digests by key, each as its 32 raw bytes in one growing Buffer, not as a 71-char
 * string (~90 bytes) apiece: an index holds one per file of a snapshot, tens of thousands.
 */
class DigestTable {
  readonly #slots = new Map<string, number>();
  #bytes = Buffer.alloc(DIGEST_BYTES * 1024);
  /** A byte per slot: marked to stay through the next retainMarked. */
  #marks = new Uint8Array(1024);

  get size(): number {
    return this.#slots.size;
  }

  /** `sha256:<hex>`, or undefined. */
  get(key: string): string | undefined {
    const at = this.#slots.get(key);
    if (at === undefined) return undefined;
    return 'sha256:' + this.#bytes.toString('hex', at * DIGEST_BYTES, (at + 1) * DIGEST_BYTES);
  }

  /** `digest` must be `sha256:<64 lowercase hex>`. */
  set(key: string, digest: string): void {
    let at = this.#slots.get(key);
    if (at === undefined) {
      at = this.#slots.size;
      if ((at + 1) * DIGEST_BYTES > this.#bytes.length) {
        const grown = Buffer.alloc(this.#bytes.length * 2);
        this.#bytes.copy(grown);
        this.#bytes = grown;
      }
      if (at >= this.#marks.length) {
        const marks = new Uint8Array(this.#marks.length * 2);
        marks.set(this.#marks);
        this.#marks = marks;
      }
      this.#slots.set(key, at);
    }
    this.#bytes.write(digest.slice(7), at * DIGEST_BYTES, DIGEST_BYTES, 'hex');
  }

  keys(): IterableIterator<string> {
    return this.#slots.keys();
  }

  /** Mark `key` (if present) to stay through the next retainMarked. */
  mark(key: string): void {
    const at = this.#slots.get(key);
    if (at !== undefined) this.#marks[at] = 1;
  }

  /** Keep only the marked keys (slots are renumbered, the buffer shrinks to fit), and clear the marks. */
  retainMarked(): void {
    // In place, without a list of the entries: slots were numbered in the Map's (insertion)
    // order, so a kept slot only ever moves down, over one already moved or dropped.
    let to = 0;
    for (const [k, at] of this.#slots) {
      if (this.#marks[at] !== 1) {
        this.#slots.delete(k);
        continue;
      }
      if (at !== to) {
        this.#bytes.copy(this.#bytes, to * DIGEST_BYTES, at * DIGEST_BYTES, (at + 1) * DIGEST_BYTES);
        this.#slots.set(k, to);
      }
      to++;
    }
    const fit = Math.max(to, 1024);
    if (fit * DIGEST_BYTES < this.#bytes.length) this.#bytes = Buffer.from(this.#bytes.subarray(0, fit * DIGEST_BYTES));
    this.#marks = new Uint8Array(Math.max(fit, this.#bytes.length / DIGEST_BYTES));
  }
}

/** sha256 of a file, reading it without following a symlink at its place. */
export async function hashFile(abs: PathLike): Promise<string> {
  const h = createHash('sha256');
  const fh = await open(abs, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    for await (const chunk of fh.createReadStream({ autoClose: false })) h.update(chunk as Buffer);
  } finally {
    await fh.close();
  }
  return `sha256:${h.digest('hex')}`;
}

/**
 * A content index of a tree: (inode, size, mtime, ctime) -> sha256. Loaded from and saved to
 * a file the caller chooses (outside the snapshot, e.g. /var/cache/tiu/content-index/<N>.json).
 */
export class ContentIndex implements ContentHasher {
  readonly root: string;
  readonly #known = new DigestTable();
  /** Keys whose digest this process read from the file itself (not loaded from a saved index). */
  readonly #hashedHere = new Set<string>();
  /** Files actually read to hash them (for reports and tests). */
  hashedFiles = 0;
  hashedBytes = 0;

  constructor(root: string) {
    this.root = root;
  }

  /**
   * The index saved at `file`; empty when there is none or it is not exactly what `save`
   * writes (it is only an accelerator). Read member by member as its pieces come: JSON.parse made
   * an object of every entry (~8 MB for a 45k-file tree), and the whole file with its text copy
   * was ~10 MB more.
   */
  static async load(root: string, file: string): Promise<ContentIndex> {
    const idx = new ContentIndex(root);
    let fh;
    try {
      fh = await open(file, 'r');
    } catch {
      return idx;
    }
    const parser = new IndexTextParser((key, digest) => idx.#known.set(key, digest));
    try {
      const piece = Buffer.allocUnsafe(INDEX_READ_PIECE);
      for (;;) {
        const { bytesRead } = await fh.read(piece, 0, piece.length, null);
        if (bytesRead === 0) break;
        if (!parser.push(piece.subarray(0, bytesRead))) break;
      }
    } catch {
      return new ContentIndex(root);
    } finally {
      await fh.close();
    }
    return parser.end() ? idx : new ContentIndex(root);
  }

  /** The file is written in pieces: one object or string of every entry would be tens of MB at once. */
  async save(file: string): Promise<void> {
    const fh = await open(file + '.tmp', 'w');
    try {
      let piece = INDEX_HEAD;
      let first = true;
      for (const k of this.#known.keys()) {
        piece += `${first ? '' : ','}"${k}":"${this.#known.get(k)!}"`;
        first = false;
        if (piece.length >= 64 * 1024) {
          await fh.write(piece);
          piece = '';
        }
      }
      await fh.write(piece + '}}');
    } finally {
      await fh.close();
    }
    await rename(file + '.tmp', file);
  }

  get size(): number {
    return this.#known.size;
  }

  /**
   * Record a known digest (the executor does this for everything it writes, from the TOC); the
   * file's key.
   */
  remember(e: Pick<ExistingEntry, 'ino' | 'size' | 'mtimeNs' | 'ctimeNs'>, digest: string): string {
    const key = keyOf(e);
    if (SHA256.test(digest)) this.#known.set(key, digest);
    return key;
  }

  /**
   * remember(), and keep the key through the next retainRemembered (after an apply, only the new
   * tree's files matter): the executor records every file of the new tree this way, a mark in a
   * byte per slot instead of a set of every key.
   */
  rememberToKeep(e: Pick<ExistingEntry, 'ino' | 'size' | 'mtimeNs' | 'ctimeNs'>, digest: string): void {
    this.#known.mark(this.remember(e, digest));
  }

  /** Drop everything not given to rememberToKeep since the last call. */
  retainRemembered(): void {
    this.#known.retainMarked();
  }

  async digestOf(e: ExistingEntry): Promise<string> {
    const k = keyOf(e);
    const known = this.#known.get(k);
    if (known) return known;
    const d = await hashFile(Buffer.concat([Buffer.from(this.root, 'utf8'), SLASH, bbuf(e.path)]));
    this.hashedFiles++;
    this.hashedBytes += e.size;
    this.#known.set(k, d);
    this.#hashedHere.add(k);
    return d;
  }

  /** Whether this process read the file with this key to hash it (rather than trusting a saved index). */
  hashedHere(e: Pick<ExistingEntry, 'ino' | 'size' | 'mtimeNs' | 'ctimeNs'>): boolean {
    return this.#hashedHere.has(keyOf(e));
  }
}
