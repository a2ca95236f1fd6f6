/**
 * The new tree by path, as the layers flatten into it (apply/layers.ts): the entries in the
 * order they were added and an open-addressing table of their row numbers, found by the path's
 * hash. A Map of path to entry was ~40 bytes a path (three words an entry at twice the entries,
 * a bucket per two): 1.8 MiB at the planning peak of an update of the bench's larger tree, the
 * largest thing of its plan after the rows. Here an entry is its row (8 bytes) and at most two
 * 4-byte slots. The key is the entry's own path (`set` refuses another), so no key is stored.
 * A TOC's regular file is its path string and a reference to its row (toc-files.ts): the plan
 * refers to rows (plan-actions.ts), so nothing holds an object per file.
 *
 * It behaves as a Map where the planner relies on one: iteration in insertion order, entries
 * added during a `forEach` or `forEachPath` visited by it (addImplicitParents), a deleted path
 * set again goes to the end, and a path set again in place keeps its place.
 */
import type { TreeEntry } from './types.ts';
import { fnv1a } from '../../util/string-hash.ts';
import { comparePaths } from '../../layer/paths.ts';
import { resized } from '../../util/typed-resize.ts';
import { TOC_BLOCK_ROWS, TocFile, type FileBlock } from './toc-files.ts';

/** Row + 1 of a live or deleted row (0: free). */
const FREE = 0;

export class PathTable implements ReadonlyMap<string, TreeEntry> {
  /**
   * By row: the entry; a TOC's regular file (toc-files.ts) as its path alone, its row reference
   * in `#fileRefs`; undefined where it was deleted (its slot stays, passed over by lookups).
   * A TocFile object per file was ~56 bytes each held through the plan and the writing (the
   * plan's actions refer to rows of this table: plan-actions.ts); it is made again when asked for.
   */
  #rows: (TreeEntry | string | undefined)[];
  /** By row, for a file kept as its path: its block's number in `#blocks` times TOC_BLOCK_ROWS plus its row. */
  #fileRefs = new Int32Array(0);
  /** Rows the references are made for at the first TOC file (a tree from tar headers has none). */
  readonly #expected: number;
  /** The TOC blocks of the files kept as paths (a few hundred at most), and their numbers. */
  readonly #blocks: FileBlock[] = [];
  readonly #blockNumbers = new Map<FileBlock, number>();
  #used = 0;
  #live = 0;
  /** Slots taken: by live rows and by deleted ones until the next rehash. */
  #occupied = 0;
  #slots: Int32Array;

  /** `expected`: about how many paths it will hold (more can be added). */
  constructor(expected = 0) {
    this.#rows = new Array<TreeEntry | string | undefined>(Math.max(expected, 0));
    this.#expected = Math.max(expected, 16);
    this.#slots = new Int32Array(PathTable.#slotsFor(expected));
  }

  /** Slots for `n` rows: a power of two, at most three quarters used. */
  static #slotsFor(n: number): number {
    let cap = 1024;
    while (n * 4 > cap * 3) cap *= 2;
    return cap;
  }

  get size(): number {
    return this.#live;
  }

  get(path: string): TreeEntry | undefined {
    const r = this.#find(path);
    return r === -1 ? undefined : this.entryAtRow(r);
  }

  has(path: string): boolean {
    return this.#find(path) !== -1;
  }

  /** The row of `path` (rows are numbered in the order their paths were first set), or -1. */
  rowOf(path: string): number {
    return this.#find(path);
  }

  /** The entry of a live row (a TOC file is made again: a new, equal object each time). */
  entryAtRow(r: number): TreeEntry {
    const v = this.#rows[r];
    if (typeof v !== 'string') {
      if (v === undefined) throw new RangeError(`no entry in row ${r}`);
      return v;
    }
    const ref = this.#fileRefs[r]!;
    return new TocFile(v, this.#blocks[Math.floor(ref / TOC_BLOCK_ROWS)]!, ref % TOC_BLOCK_ROWS);
  }

  /** A table of the same entries as `tree`, in its order. */
  static copyOf(tree: ReadonlyMap<string, TreeEntry>): PathTable {
    const t = new PathTable(tree.size);
    tree.forEach((e, p) => t.set(p, e));
    return t;
  }

  /**
   * The live rows in path order (comparePaths): what the planner walks. 4 bytes a path, where an
   * array of the paths took 8, and each step reads its row instead of looking its path up.
   */
  sortedRows(): Int32Array {
    const rows = new Int32Array(this.#live);
    let n = 0;
    for (let r = 0; r < this.#used; r++) if (this.#rows[r] !== undefined) rows[n++] = r;
    return rows.sort((a, b) => comparePaths(this.pathAtRow(a), this.pathAtRow(b)));
  }

  /** A live row's entry type, without making the entry. */
  typeAtRow(r: number): TreeEntry['type'] {
    const v = this.#rows[r];
    if (v === undefined) throw new RangeError(`no entry in row ${r}`);
    return typeof v === 'string' ? 'reg' : v.type;
  }

  /** The entry type at `path` without making the entry, or undefined where there is none. */
  typeAt(path: string): TreeEntry['type'] | undefined {
    const r = this.#find(path);
    return r === -1 ? undefined : this.typeAtRow(r);
  }

  /** This table's own string of `path`, if it has the path (a scan takes it instead of its copy: scan.ts sharePathsWith). */
  ownPath(path: string): string | undefined {
    const r = this.#find(path);
    return r === -1 ? undefined : this.pathAtRow(r);
  }

  /** The path of a live row. */
  pathAtRow(r: number): string {
    const v = this.#rows[r];
    if (v === undefined) throw new RangeError(`no entry in row ${r}`);
    return typeof v === 'string' ? v : v.path;
  }

  /** The row whose entry is `e` (the same object, or for a TOC file the same row of the same block), else -1. */
  rowHolding(e: TreeEntry): number {
    const r = this.#find(e.path);
    if (r === -1) return -1;
    const v = this.#rows[r];
    if (v === e) return r;
    if (typeof v !== 'string' || !(e instanceof TocFile)) return -1;
    const ref = this.#fileRefs[r]!;
    return this.#blocks[Math.floor(ref / TOC_BLOCK_ROWS)] === e.block && ref % TOC_BLOCK_ROWS === e.row ? r : -1;
  }

  /** Add or replace the entry at `path`, which must be the entry's own path. */
  set(path: string, e: TreeEntry): this {
    if (e.path !== path) throw new RangeError(`the entry of ${JSON.stringify(e.path)} set at ${JSON.stringify(path)}`);
    let r = this.#find(path);
    if (r === -1) {
      if (this.#occupied + 1 > (this.#slots.length * 3) / 4) this.#rehash();
      r = this.#used++;
      this.#live++;
      this.#place(path, r);
    }
    this.#store(r, e);
    return this;
  }

  #store(r: number, e: TreeEntry): void {
    if (!(e instanceof TocFile)) {
      this.#rows[r] = e;
      return;
    }
    let b = this.#blockNumbers.get(e.block);
    if (b === undefined) {
      b = this.#blocks.length;
      this.#blocks.push(e.block);
      this.#blockNumbers.set(e.block, b);
    }
    if (r >= this.#fileRefs.length)
      this.#fileRefs = resized(this.#fileRefs, Math.max(r + 1, this.#fileRefs.length * 2, this.#expected));
    this.#fileRefs[r] = b * TOC_BLOCK_ROWS + e.row;
    this.#rows[r] = e.path;
  }

  delete(path: string): boolean {
    const r = this.#find(path);
    if (r === -1) return false;
    this.#rows[r] = undefined;
    this.#live--;
    return true;
  }

  /** Visits the entries added while it runs, as a Map's forEach does. */
  forEach(f: (e: TreeEntry, path: string, table: this) => void): void {
    for (let r = 0; r < this.#used; r++) {
      if (this.#rows[r] === undefined) continue;
      const e = this.entryAtRow(r);
      f(e, e.path, this);
    }
  }

  /** Visits the paths, without making an entry for each (the TOC's files are kept as their paths). */
  forEachPath(f: (path: string, row: number) => void): void {
    for (let r = 0; r < this.#used; r++) if (this.#rows[r] !== undefined) f(this.pathAtRow(r), r);
  }

  *keys(): MapIterator<string> {
    for (let r = 0; r < this.#used; r++) if (this.#rows[r] !== undefined) yield this.pathAtRow(r);
  }

  *values(): MapIterator<TreeEntry> {
    for (let r = 0; r < this.#used; r++) if (this.#rows[r] !== undefined) yield this.entryAtRow(r);
  }

  *entries(): MapIterator<[string, TreeEntry]> {
    for (let r = 0; r < this.#used; r++) {
      if (this.#rows[r] === undefined) continue;
      const e = this.entryAtRow(r);
      yield [e.path, e];
    }
  }

  [Symbol.iterator](): MapIterator<[string, TreeEntry]> {
    return this.entries();
  }

  /** The live row of `path`, or -1. Deleted rows are passed over: their path may be set again in a later row. */
  #find(path: string): number {
    const slots = this.#slots;
    const mask = slots.length - 1;
    for (let i = fnv1a(path) & mask; ; i = (i + 1) & mask) {
      const v = slots[i]!;
      if (v === FREE) return -1;
      const e = this.#rows[v - 1];
      if (e !== undefined && (typeof e === 'string' ? e : e.path) === path) return v - 1;
    }
  }

  #place(path: string, row: number): void {
    const slots = this.#slots;
    const mask = slots.length - 1;
    let i = fnv1a(path) & mask;
    while (slots[i] !== FREE) i = (i + 1) & mask;
    slots[i] = row + 1;
    this.#occupied++;
  }

  /**
   * A table for the live rows (deleted ones get no slot): larger when they fill it. Rows keep
   * their numbers, so a `forEach` or iteration under way goes on where it was.
   */
  #rehash(): void {
    this.#slots = new Int32Array(PathTable.#slotsFor(this.#live + 1));
    this.#occupied = 0;
    for (let r = 0; r < this.#used; r++) if (this.#rows[r] !== undefined) this.#place(this.pathAtRow(r), r);
  }
}
