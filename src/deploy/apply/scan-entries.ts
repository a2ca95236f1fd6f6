/**
 * What a scan found, as rows of typed arrays instead of one object per path: an ExistingEntry
 * object with its three BigInts (mtime, ctime, inode) and its lists in the size and inode maps
 * cost ~460 bytes a path, ~20 MB for a 45k-entry tree, and a plan holds one or two scans (the
 * booted snapshot, content sources). A row is ~49 bytes plus the path and its table slot; `get`
 * makes the ExistingEntry when the planner asks for one (a short-lived object).
 */
import type { BigIntStats } from 'node:fs';
import { fileTypeOf, NO_XATTRS } from '../../layer/entry.ts';
import type { EntryType, ExistingEntry } from './types.ts';
import { freeArray, resized } from '../../util/typed-resize.ts';
import { SizeIndex } from './size-index.ts';
import { keyFits, type IndexKeyParts } from './index-table.ts';
import { fnv1a } from '../../util/string-hash.ts';
import { HIGH, LOW } from '../../util/word-order.ts';

const TYPES: readonly (EntryType | 'other')[] = ['reg', 'dir', 'symlink', 'hardlink', 'char', 'block', 'fifo', 'other'];
const TYPE_CODE = new Map(TYPES.map((t, i) => [t, i]));
const REG = TYPE_CODE.get('reg')!;

export class ScanEntries {
  /**
   * Each row's path, and an open-addressing table of row + 1 (0: empty) found by the path's hash,
   * at most half full: not a Map, whose keys cannot be changed in place, so `sharePaths` can
   * swap a path for the new tree's string of it without making anything.
   */
  readonly #paths: string[] = [];
  #slots = new Int32Array(0);
  #capacity = 0;
  #type = new Uint8Array(0);
  /** mode, uid, gid, nlink */
  #small = new Uint32Array(0);
  #size = new Float64Array(0);
  /** mtimeNs, ctimeNs */
  #times = new BigInt64Array(0);
  #ino = new BigUint64Array(0);
  /** The same memory as `#ino` and `#times` in 32-bit words (keyIs compares them). */
  #ino32 = new Uint32Array(0);
  #times32 = new Uint32Array(0);
  /** The key parts being compared (keyIs), as rows store them: written, never read as BigInts. */
  readonly #probe = new BigInt64Array(3);
  readonly #probe32 = new Uint32Array(this.#probe.buffer);
  /**
   * The device of most rows (a scan stays on one file system), and of the rows on another one;
   * the device number of the few that are device nodes. Three 64-bit fields per row were 1 MiB of
   * the bench's larger tree's scan, two of them the same value or zero on nearly every row.
   */
  #dev: bigint | undefined;
  readonly #otherDevs = new Map<number, bigint>();
  readonly #rdevs = new Map<number, bigint>();
  readonly #linknames = new Map<number, string>();
  readonly #xattrs = new Map<number, Record<string, Buffer>>();
  #released = false;
  #peeked: ExistingEntry | undefined;

  get size(): number {
    return this.#paths.length;
  }

  has(path: string): boolean {
    return this.#find(path) !== -1;
  }

  get(path: string): ExistingEntry | undefined {
    const r = this.#find(path);
    return r === -1 ? undefined : this.#entry(this.#paths[r]!, r);
  }

  /**
   * The entry at `path` in the one object this scan reuses for it: valid until the next `peek`.
   * For a pass that reads every path once and keeps nothing of it (the planner's): a new object of
   * thirteen fields per path was ~18 MiB of garbage per plan of the bench's larger tree (sampled).
   * What is kept must come from `get`.
   */
  peek(path: string): ExistingEntry | undefined {
    const r = this.#find(path);
    if (r === -1) return undefined;
    const e = this.#fill((this.#peeked ??= {} as ExistingEntry), this.#paths[r]!, r);
    // Always present (undefined when the row has none), so the object keeps one shape.
    e.linkname = this.#linknames.get(r);
    return e;
  }

  /** Row `r`'s path (rows are numbered from 0 in the order their paths were added). */
  pathAt(r: number): string {
    this.#usable();
    return this.#paths[r]!;
  }

  /** The row of `path`, or -1. */
  rowOf(path: string): number {
    return this.#find(path);
  }

  /**
   * Are these row `r`'s inode, size, mtime and ctime (a content index's key)? Compared as 32-bit
   * words: reading the rows' 64-bit fields would make a BigInt of each, and the planner asks this
   * of every file of an update.
   */
  keyIs(r: number, k: IndexKeyParts): boolean {
    this.#usable();
    if (this.#size[r] !== k.size || !keyFits(k)) return false;
    const p = this.#probe;
    const p32 = this.#probe32;
    p[0] = k.ino; // its 64 bits, as the row's BigUint64Array holds them
    p[1] = k.mtimeNs;
    p[2] = k.ctimeNs;
    const ino = this.#ino32;
    const times = this.#times32;
    return (
      ino[r * 2] === p32[0] &&
      ino[r * 2 + 1] === p32[1] &&
      times[r * 4] === p32[2] &&
      times[r * 4 + 1] === p32[3] &&
      times[r * 4 + 2] === p32[4] &&
      times[r * 4 + 3] === p32[5]
    );
  }

  /** Row `r`'s inode, size, mtime and ctime (a content index's key). */
  keyPartsAt(r: number): IndexKeyParts {
    this.#usable();
    return { ino: this.#ino[r]!, size: this.#size[r]!, mtimeNs: this.#times[r * 2]!, ctimeNs: this.#times[r * 2 + 1]! };
  }

  /**
   * The rows of regular files by the low 32 bits of their inode, for finding the rows of an
   * inode (`rowsOfInode`) many times in a row: a table of first rows and a chain of next rows,
   * ~8 bytes a row, let go with the function.
   */
  inodeLookup(): (ino: bigint, f: (row: number) => void) => void {
    this.#usable();
    const rows = this.#paths.length;
    let cap = 1024;
    while (cap < rows) cap *= 2;
    const first = new Int32Array(cap).fill(-1);
    const next = new Int32Array(rows).fill(-1);
    const ino32 = this.#ino32;
    const mask = cap - 1;
    for (let r = rows - 1; r >= 0; r--) {
      if (this.#type[r] !== REG) continue;
      const h = ino32[r * 2 + LOW]! & mask;
      next[r] = first[h]!;
      first[h] = r;
    }
    const probe = new BigUint64Array(1);
    const probe32 = new Uint32Array(probe.buffer);
    return (ino, f) => {
      this.#usable();
      probe[0] = BigInt.asUintN(64, ino);
      for (let r = first[probe32[LOW]! & mask]!; r !== -1; r = next[r]!)
        if (ino32[r * 2 + LOW] === probe32[LOW] && ino32[r * 2 + HIGH] === probe32[HIGH]) f(r);
    };
  }

  /** Row `r`'s size. */
  sizeAt(r: number): number {
    this.#usable();
    return this.#size[r]!;
  }

  /**
   * The regular files by size (apply/size-index.ts), their sizes and paths read from these rows
   * (the index reads nothing once they are released). Made here so that its functions hold
   * nothing but this scan.
   */
  filesBySize(): SizeIndex {
    this.#usable();
    let n = 0;
    for (let r = 0; r < this.#paths.length; r++) if (this.#type[r] === REG) n++;
    const files = new Int32Array(n);
    for (let r = 0, i = 0; r < this.#paths.length; r++) if (this.#type[r] === REG) files[i++] = r;
    return new SizeIndex(
      files,
      (r) => this.sizeAt(r),
      (r) => this.pathAt(r),
    );
  }

  /** Call `f` with the row, link count and inode of every regular file, in row order. */
  forEachFile(f: (row: number, nlink: number, ino: bigint) => void): void {
    this.#usable();
    for (let r = 0; r < this.#paths.length; r++)
      if (this.#type[r] === REG) f(r, this.#small[r * 4 + 3]!, this.#ino[r]!);
  }

  keys(): IterableIterator<string> {
    this.#usable();
    return this.#paths.values();
  }

  /** This scan's own string of `path` (equal text, maybe another string), or undefined when it has no such path. */
  ownPath(path: string): string | undefined {
    const r = this.#find(path);
    return r === -1 ? undefined : this.#paths[r];
  }

  *values(): IterableIterator<ExistingEntry> {
    this.#usable();
    for (let r = 0; r < this.#paths.length; r++) yield this.#entry(this.#paths[r]!, r);
  }

  *[Symbol.iterator](): IterableIterator<[string, ExistingEntry]> {
    this.#usable();
    for (let r = 0; r < this.#paths.length; r++) yield [this.#paths[r]!, this.#entry(this.#paths[r]!, r)];
  }

  /**
   * Key the rows by `same`'s string of each path where it has one (the new tree's, when
   * planning), in the same order: the scan's own copy of a path both sides hold (~80 bytes a
   * file) is let go.
   */
  sharePaths(same: (path: string) => string | undefined): void {
    const paths = this.#paths;
    for (let r = 0; r < paths.length; r++) {
      const s = same(paths[r]!);
      if (s !== undefined) paths[r] = s;
    }
  }

  /** Record what lstat said of `path` (and its link target). */
  addStats(path: string, st: BigIntStats, linkname?: string): void {
    const r = this.#row(path);
    this.#type[r] = TYPE_CODE.get(fileTypeOf(st) ?? 'other')!;
    this.#small.set([Number(st.mode & 0o7777n), Number(st.uid), Number(st.gid), Number(st.nlink)], r * 4);
    this.#size[r] = Number(st.size);
    this.#times[r * 2] = st.mtimeNs;
    this.#times[r * 2 + 1] = st.ctimeNs;
    this.#setIds(r, st.ino, st.dev, st.rdev);
    this.#setLinkname(r, linkname);
  }

  /** Record an entry described in full (tests, and trees not read from a disk). */
  set(e: ExistingEntry): void {
    const r = this.#row(e.path);
    this.#type[r] = TYPE_CODE.get(e.type)!;
    this.#small.set([e.mode, e.uid, e.gid, e.nlink], r * 4);
    this.#size[r] = e.size;
    this.#times[r * 2] = e.mtimeNs;
    this.#times[r * 2 + 1] = e.ctimeNs;
    this.#setIds(r, e.ino, e.dev, e.rdev);
    this.#setLinkname(r, e.linkname);
    this.setXattrs(e.path, e.xattrs);
  }

  /** The xattrs of a recorded path (a path not recorded is ignored). */
  setXattrs(path: string, xattrs: Record<string, Buffer>): void {
    const r = this.#find(path);
    if (r === -1) return;
    if (Object.keys(xattrs).length) this.#xattrs.set(r, xattrs);
    else this.#xattrs.delete(r);
  }

  #setIds(r: number, ino: bigint, dev: bigint, rdev: bigint): void {
    this.#ino[r] = ino;
    this.#dev ??= dev;
    if (dev === this.#dev) this.#otherDevs.delete(r);
    else this.#otherDevs.set(r, dev);
    if (rdev === 0n) this.#rdevs.delete(r);
    else this.#rdevs.set(r, rdev);
  }

  #setLinkname(r: number, linkname: string | undefined): void {
    if (linkname === undefined) this.#linknames.delete(r);
    else this.#linknames.set(r, linkname);
  }

  /**
   * Give the rows' memory back now, when nothing reads this scan again (its plan is made): dead,
   * they stayed in RSS until a full collection, through the writing after the apply's plan
   * (~3 MiB of typed arrays on the bench's larger tree). Any use afterwards throws.
   */
  release(): void {
    for (const a of [this.#type, this.#small, this.#size, this.#times, this.#ino, this.#slots]) freeArray(a);
    this.#ino32 = new Uint32Array(0);
    this.#times32 = new Uint32Array(0);
    this.#paths.length = 0;
    this.#otherDevs.clear();
    this.#rdevs.clear();
    this.#linknames.clear();
    this.#xattrs.clear();
    this.#peeked = undefined;
    this.#released = true;
  }

  #usable(): void {
    if (this.#released) throw new Error('a released scan was read');
  }

  /** The row of `path`, or -1. */
  #find(path: string): number {
    this.#usable();
    const slots = this.#slots;
    if (slots.length === 0) return -1;
    const mask = slots.length - 1;
    for (let i = fnv1a(path) & mask; ; i = (i + 1) & mask) {
      const v = slots[i]!;
      if (v === 0) return -1;
      if (this.#paths[v - 1] === path) return v - 1;
    }
  }

  #place(path: string, r: number): void {
    const mask = this.#slots.length - 1;
    let i = fnv1a(path) & mask;
    while (this.#slots[i] !== 0) i = (i + 1) & mask;
    this.#slots[i] = r + 1;
  }

  #row(path: string): number {
    const have = this.#find(path);
    if (have !== -1) return have;
    const r = this.#paths.length;
    if (r === this.#capacity) this.#grow();
    this.#paths.push(path);
    this.#place(path, r);
    return r;
  }

  /**
   * Give back the rows no path was added to: the arrays double as the walk goes, so a finished
   * scan held up to twice the rows it used (~45 bytes a path on the bench's larger tree, whose
   * 46k paths sat in rows for 65,536). The table of slots stays (a power of two, found by mask).
   */
  trim(): void {
    if (this.#paths.length < this.#capacity) this.#resize(this.#paths.length);
  }

  #grow(): void {
    // A power of two (the table of slots is found by mask), also after a trim left an odd count.
    let n = 1024;
    while (n <= this.#capacity) n *= 2;
    this.#resize(n);
    // At most half full once the rows are used up.
    freeArray(this.#slots);
    this.#slots = new Int32Array(n * 2);
    for (let r = 0; r < this.#paths.length; r++) this.#place(this.#paths[r]!, r);
  }

  /**
   * Rows for `n` paths (at least the ones there are), the table of slots unchanged. The arrays
   * are moved, not copied (util/typed-resize.ts): a walk's superseded rows were garbage until a
   * full collection, up to twice the finished scan's (~8 MiB of the bench's larger tree).
   */
  #resize(n: number): void {
    this.#type = resized(this.#type, n);
    this.#small = resized(this.#small, n * 4);
    this.#size = resized(this.#size, n);
    this.#times = resized(this.#times, n * 2);
    this.#ino = resized(this.#ino, n);
    this.#ino32 = new Uint32Array(this.#ino.buffer);
    this.#times32 = new Uint32Array(this.#times.buffer);
    this.#capacity = n;
  }

  #entry(path: string, r: number): ExistingEntry {
    const e = this.#fill({} as ExistingEntry, path, r);
    const link = this.#linknames.get(r);
    if (link !== undefined) e.linkname = link;
    return e;
  }

  /** Row `r`'s fields into `e` (all but the link target, which get and peek set their own way). */
  #fill(e: ExistingEntry, path: string, r: number): ExistingEntry {
    e.path = path;
    e.type = TYPES[this.#type[r]!]!;
    e.mode = this.#small[r * 4]!;
    e.uid = this.#small[r * 4 + 1]!;
    e.gid = this.#small[r * 4 + 2]!;
    e.size = this.#size[r]!;
    e.mtimeNs = this.#times[r * 2]!;
    e.ctimeNs = this.#times[r * 2 + 1]!;
    e.ino = this.#ino[r]!;
    e.dev = this.#otherDevs.get(r) ?? this.#dev!;
    e.nlink = this.#small[r * 4 + 3]!;
    e.rdev = this.#rdevs.get(r) ?? 0n;
    e.xattrs = this.#xattrs.get(r) ?? NO_XATTRS;
    return e;
  }
}
