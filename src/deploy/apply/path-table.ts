/**
 * The new tree by path, as the layers flatten into it (apply/layers.ts): the entries in the
 * order they were added and an open-addressing table of their row numbers, found by the path's
 * hash. A Map of path to entry was ~40 bytes a path (three words an entry at twice the entries,
 * a bucket per two): 1.8 MiB at the planning peak of an update of the bench's larger tree, the
 * largest thing of its plan after the rows. Here an entry is its row (8 bytes) and at most two
 * 4-byte slots. The key is the entry's own path (`set` refuses another), so no key is stored.
 *
 * It behaves as a Map where the planner relies on one: iteration in insertion order, entries
 * added during a `forEach` visited by it (addImplicitParents), a deleted path set again goes to
 * the end, and a path set again in place keeps its place.
 */
import type { TreeEntry } from './types.ts';
import { fnv1a } from '../../util/string-hash.ts';

/** Row + 1 of a live or deleted row (0: free). */
const FREE = 0;

export class PathTable implements ReadonlyMap<string, TreeEntry> {
  /** By row: the entry, or undefined where it was deleted (its slot stays, passed over by lookups). */
  #rows: (TreeEntry | undefined)[];
  #used = 0;
  #live = 0;
  /** Slots taken: by live rows and by deleted ones until the next rehash. */
  #occupied = 0;
  #slots: Int32Array;

  /** `expected`: about how many paths it will hold (more can be added). */
  constructor(expected = 0) {
    this.#rows = new Array<TreeEntry | undefined>(Math.max(expected, 0));
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
    return r === -1 ? undefined : this.#rows[r];
  }

  has(path: string): boolean {
    return this.#find(path) !== -1;
  }

  /** Add or replace the entry at `path`, which must be the entry's own path. */
  set(path: string, e: TreeEntry): this {
    if (e.path !== path) throw new RangeError(`the entry of ${JSON.stringify(e.path)} set at ${JSON.stringify(path)}`);
    const r = this.#find(path);
    if (r !== -1) {
      this.#rows[r] = e;
      return this;
    }
    if (this.#occupied + 1 > (this.#slots.length * 3) / 4) this.#rehash();
    const row = this.#used++;
    this.#rows[row] = e;
    this.#live++;
    this.#place(path, row);
    return this;
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
      const e = this.#rows[r];
      if (e) f(e, e.path, this);
    }
  }

  *keys(): MapIterator<string> {
    for (let r = 0; r < this.#used; r++) {
      const e = this.#rows[r];
      if (e) yield e.path;
    }
  }

  *values(): MapIterator<TreeEntry> {
    for (let r = 0; r < this.#used; r++) {
      const e = this.#rows[r];
      if (e) yield e;
    }
  }

  *entries(): MapIterator<[string, TreeEntry]> {
    for (let r = 0; r < this.#used; r++) {
      const e = this.#rows[r];
      if (e) yield [e.path, e];
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
      if (e !== undefined && e.path === path) return v - 1;
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
    for (let r = 0; r < this.#used; r++) {
      const e = this.#rows[r];
      if (e) this.#place(e.path, r);
    }
  }
}
