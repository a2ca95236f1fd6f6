/**
 * What a scan found, as rows of typed arrays instead of one object per path: an ExistingEntry
 * object with its three BigInts (mtime, ctime, inode) and its lists in the size and inode maps
 * cost ~460 bytes a path, ~20 MB for a 45k-entry tree, and a plan holds one or two scans (the
 * booted snapshot, content sources). A row is ~49 bytes plus the path and its table slot; `get`
 * makes the ExistingEntry when the planner asks for one (a short-lived object). Rows come in
 * blocks of 256 (one buffer each): with a spill (row-spill.ts) a complete block may wait on
 * disk, so a scan holds its paths and a few blocks, not every row.
 */
import type { BigIntStats } from 'node:fs';
import { fileTypeOf, NO_XATTRS } from '../../layer/entry.ts';
import type { EntryType, ExistingEntry } from './types.ts';
import { freeArray } from '../../util/typed-resize.ts';
import { SpillBlock, type RowSpill } from './row-spill.ts';
import { SizeIndex } from './size-index.ts';
import { keyFits, type IndexKeyParts } from './index-table.ts';
import { fnv1a } from '../../util/string-hash.ts';
import { HIGH, LOW } from '../../util/word-order.ts';

const TYPES: readonly (EntryType | 'other')[] = ['reg', 'dir', 'symlink', 'hardlink', 'char', 'block', 'fifo', 'other'];
const TYPE_CODE = new Map(TYPES.map((t, i) => [t, i]));
const REG = TYPE_CODE.get('reg')!;

/** Rows per block: a block is one buffer (~12 KiB), never copied as the scan grows. */
const BLOCK_SHIFT = 8;
const BLOCK_ROWS = 1 << BLOCK_SHIFT;
const ROW_MASK = BLOCK_ROWS - 1;
// A block's columns side by side in its buffer (64-bit ones first, aligned).
const SIZE_AT = 0;
const TIMES_AT = SIZE_AT + BLOCK_ROWS * 8;
const INO_AT = TIMES_AT + BLOCK_ROWS * 16;
const SMALL_AT = INO_AT + BLOCK_ROWS * 8;
const TYPE_AT = SMALL_AT + BLOCK_ROWS * 16;
const BLOCK_BYTES = TYPE_AT + BLOCK_ROWS;

/**
 * 256 rows: size; mtimeNs, ctimeNs; inode; mode, uid, gid, nlink; type. One buffer, so that
 * with a spill (row-spill.ts) a complete block can leave memory and be read back whole.
 */
class ScanBlock extends SpillBlock {
  sizes!: Float64Array;
  times!: BigInt64Array;
  /** The same memory as `times` and `ino` in 32-bit words (keyIs compares them). */
  times32!: Uint32Array;
  ino!: BigUint64Array;
  ino32!: Uint32Array;
  small!: Uint32Array;
  type!: Uint8Array;

  constructor(spill: RowSpill | undefined) {
    super(BLOCK_BYTES, spill);
    this.attach(new ArrayBuffer(BLOCK_BYTES));
  }

  setViews(bytes: ArrayBuffer): void {
    this.sizes = new Float64Array(bytes, SIZE_AT, BLOCK_ROWS);
    this.times = new BigInt64Array(bytes, TIMES_AT, BLOCK_ROWS * 2);
    this.times32 = new Uint32Array(bytes, TIMES_AT, BLOCK_ROWS * 4);
    this.ino = new BigUint64Array(bytes, INO_AT, BLOCK_ROWS);
    this.ino32 = new Uint32Array(bytes, INO_AT, BLOCK_ROWS * 2);
    this.small = new Uint32Array(bytes, SMALL_AT, BLOCK_ROWS * 4);
    this.type = new Uint8Array(bytes, TYPE_AT, BLOCK_ROWS);
  }
}

export class ScanEntries {
  /**
   * Each row's path, and an open-addressing table of row + 1 (0: empty) found by the path's hash,
   * at most three quarters full: not a Map, whose keys cannot be changed in place, so `sharePaths` can
   * swap a path for the new tree's string of it without making anything.
   */
  readonly #paths: string[] = [];
  #slots = new Int32Array(0);
  /** Rows the table of slots is made for (three quarters of its slots). */
  #capacity = 0;
  /** The rows, BLOCK_ROWS to a block; complete ones may be in the spill. */
  readonly #blocks: ScanBlock[] = [];
  readonly #spill: RowSpill | undefined;
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

  /** `spill`: where complete blocks of rows may wait (row-spill.ts); without one they stay in memory. */
  constructor(spill?: RowSpill) {
    this.#spill = spill;
  }

  /** Where complete blocks of rows may wait (and the index loaded beside this scan keeps its digests). */
  get spill(): RowSpill | undefined {
    return this.#spill;
  }

  /** Row `r`'s block, in memory. */
  #at(r: number): ScanBlock {
    return this.#blocks[r >>> BLOCK_SHIFT]!.inMemory();
  }

  /** Row `r`'s block, in memory, to be changed. */
  #changing(r: number): ScanBlock {
    const b = this.#at(r);
    b.changed();
    return b;
  }

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
    const b = this.#at(r);
    const i = r & ROW_MASK;
    if (b.sizes[i] !== k.size || !keyFits(k)) return false;
    const p = this.#probe;
    const p32 = this.#probe32;
    p[0] = k.ino; // its 64 bits, as the row's BigUint64Array holds them
    p[1] = k.mtimeNs;
    p[2] = k.ctimeNs;
    const ino = b.ino32;
    const times = b.times32;
    return (
      ino[i * 2] === p32[0] &&
      ino[i * 2 + 1] === p32[1] &&
      times[i * 4] === p32[2] &&
      times[i * 4 + 1] === p32[3] &&
      times[i * 4 + 2] === p32[4] &&
      times[i * 4 + 3] === p32[5]
    );
  }

  /** Row `r`'s inode, size, mtime and ctime (a content index's key). */
  keyPartsAt(r: number): IndexKeyParts {
    this.#usable();
    const b = this.#at(r);
    const i = r & ROW_MASK;
    return { ino: b.ino[i]!, size: b.sizes[i]!, mtimeNs: b.times[i * 2]!, ctimeNs: b.times[i * 2 + 1]! };
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
    const mask = cap - 1;
    for (let r = rows - 1; r >= 0; r--) {
      const b = this.#at(r);
      const i = r & ROW_MASK;
      if (b.type[i] !== REG) continue;
      const h = b.ino32[i * 2 + LOW]! & mask;
      next[r] = first[h]!;
      first[h] = r;
    }
    const probe = new BigUint64Array(1);
    const probe32 = new Uint32Array(probe.buffer);
    return (ino, f) => {
      this.#usable();
      probe[0] = BigInt.asUintN(64, ino);
      for (let r = first[probe32[LOW]! & mask]!; r !== -1; r = next[r]!) {
        const ino32 = this.#at(r).ino32;
        const i = r & ROW_MASK;
        if (ino32[i * 2 + LOW] === probe32[LOW] && ino32[i * 2 + HIGH] === probe32[HIGH]) f(r);
      }
    };
  }

  /** Row `r`'s size. */
  sizeAt(r: number): number {
    this.#usable();
    return this.#at(r).sizes[r & ROW_MASK]!;
  }

  /**
   * The regular files by size (apply/size-index.ts), their sizes and paths read from these rows
   * (the index reads nothing once they are released). Made here so that its functions hold
   * nothing but this scan.
   */
  filesBySize(): SizeIndex {
    this.#usable();
    let n = 0;
    for (let r = 0; r < this.#paths.length; r++) if (this.#typeAt(r) === REG) n++;
    const files = new Int32Array(n);
    for (let r = 0, i = 0; r < this.#paths.length; r++) if (this.#typeAt(r) === REG) files[i++] = r;
    return new SizeIndex(
      files,
      (r) => this.sizeAt(r),
      (r) => this.pathAt(r),
    );
  }

  /** Call `f` with the row, link count and inode of every regular file, in row order. */
  forEachFile(f: (row: number, nlink: number, ino: bigint) => void): void {
    this.#usable();
    for (let r = 0; r < this.#paths.length; r++) {
      const b = this.#at(r);
      const i = r & ROW_MASK;
      if (b.type[i] === REG) f(r, b.small[i * 4 + 3]!, b.ino[i]!);
    }
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
    const b = this.#changing(r);
    const i = r & ROW_MASK;
    b.type[i] = TYPE_CODE.get(fileTypeOf(st) ?? 'other')!;
    b.small[i * 4] = Number(st.mode & 0o7777n);
    b.small[i * 4 + 1] = Number(st.uid);
    b.small[i * 4 + 2] = Number(st.gid);
    b.small[i * 4 + 3] = Number(st.nlink);
    b.sizes[i] = Number(st.size);
    b.times[i * 2] = st.mtimeNs;
    b.times[i * 2 + 1] = st.ctimeNs;
    b.ino[i] = st.ino;
    this.#setIds(r, st.dev, st.rdev);
    this.#setLinkname(r, linkname);
  }

  /** Record an entry described in full (tests, and trees not read from a disk). */
  set(e: ExistingEntry): void {
    const r = this.#row(e.path);
    const b = this.#changing(r);
    const i = r & ROW_MASK;
    b.type[i] = TYPE_CODE.get(e.type)!;
    b.small[i * 4] = e.mode;
    b.small[i * 4 + 1] = e.uid;
    b.small[i * 4 + 2] = e.gid;
    b.small[i * 4 + 3] = e.nlink;
    b.sizes[i] = e.size;
    b.times[i * 2] = e.mtimeNs;
    b.times[i * 2 + 1] = e.ctimeNs;
    b.ino[i] = e.ino;
    this.#setIds(r, e.dev, e.rdev);
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

  #setIds(r: number, dev: bigint, rdev: bigint): void {
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
    // One in the spill stays in its file until the spill is closed.
    for (const b of this.#blocks) b.drop();
    this.#blocks.length = 0;
    freeArray(this.#slots);
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
    if ((r & ROW_MASK) === 0) {
      // The block before is complete: it may leave memory now.
      if (r > 0) this.#spill?.release(this.#blocks[(r >>> BLOCK_SHIFT) - 1]!);
      this.#blocks.push(new ScanBlock(this.#spill));
    }
    this.#paths.push(path);
    this.#place(path, r);
    return r;
  }

  /**
   * The walk is over: the last block may leave memory too. (Rows come in blocks that are never
   * copied or grown, so nothing is left over to give back; arrays that doubled as the walk went
   * held up to twice the rows used, and their superseded copies waited for a full collection.)
   */
  finish(): void {
    const last = this.#blocks[this.#blocks.length - 1];
    if (last) this.#spill?.release(last);
  }

  /**
   * A table of slots for more rows, at most three quarters full (a power of two, found by mask).
   * At most half full, the bench's larger tree (45,700 paths) took 131,072 slots (512 KiB) for
   * the whole update; with linear probing three quarters costs ~2 probes a found path.
   */
  #grow(): void {
    let n = 1024;
    while ((n * 3) / 4 <= this.#capacity) n *= 2;
    this.#capacity = (n * 3) / 4;
    freeArray(this.#slots);
    this.#slots = new Int32Array(n);
    for (let r = 0; r < this.#paths.length; r++) this.#place(this.#paths[r]!, r);
  }

  #typeAt(r: number): number {
    return this.#at(r).type[r & ROW_MASK]!;
  }

  #entry(path: string, r: number): ExistingEntry {
    const e = this.#fill({} as ExistingEntry, path, r);
    const link = this.#linknames.get(r);
    if (link !== undefined) e.linkname = link;
    return e;
  }

  /** Row `r`'s fields into `e` (all but the link target, which get and peek set their own way). */
  #fill(e: ExistingEntry, path: string, r: number): ExistingEntry {
    const b = this.#at(r);
    const i = r & ROW_MASK;
    e.path = path;
    e.type = TYPES[b.type[i]!]!;
    e.mode = b.small[i * 4]!;
    e.uid = b.small[i * 4 + 1]!;
    e.gid = b.small[i * 4 + 2]!;
    e.size = b.sizes[i]!;
    e.mtimeNs = b.times[i * 2]!;
    e.ctimeNs = b.times[i * 2 + 1]!;
    e.ino = b.ino[i]!;
    e.dev = this.#otherDevs.get(r) ?? this.#dev!;
    e.nlink = b.small[i * 4 + 3]!;
    e.rdev = this.#rdevs.get(r) ?? 0n;
    e.xattrs = this.#xattrs.get(r) ?? NO_XATTRS;
    return e;
  }
}
