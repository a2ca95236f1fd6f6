/**
 * A scanned tree's regular files by size (the only candidates for a content match): the files'
 * numbers sorted by size, their sizes and paths read where the scan keeps them. A Map of size to
 * a path or a list of paths was ~1.5 MiB on the bench's larger tree (14k sizes; 5k lists, each
 * grown by push() to ~20 slots); sorted copies of the sizes and paths, 16 bytes a file; this
 * is 4 and 12 per distinct size. Files of one size keep the order of their numbers (the planner
 * takes the first that matches).
 */
import { freeArray } from '../../util/typed-resize.ts';

const NONE: readonly string[] = Object.freeze([]);

export class SizeIndex {
  /** The files' numbers, by size (equal sizes in the order of their numbers). */
  readonly #order: Int32Array;
  /** Each size the files have, ascending, and where its run of files starts in `#order`. */
  readonly #sizes: Float64Array;
  readonly #starts: Int32Array;
  readonly #pathOf: (file: number) => string;

  /**
   * `files`: the numbers of the regular files (a scan's rows), each with its size and path by
   * `sizeOf` and `pathOf`. Sizes are read once, in the files' order: the rows may be in a spill
   * (row-spill.ts), where a sort asking a row's size at every comparison read back a block each
   * time. `pathOf` must give the same answer for as long as the index is read.
   */
  constructor(files: Int32Array, sizeOf: (file: number) => number, pathOf: (file: number) => string) {
    this.#pathOf = pathOf;
    const n = files.length;
    const sizeAt = new Float64Array(n);
    for (let i = 0; i < n; i++) sizeAt[i] = sizeOf(files[i]!);
    // Stable: equal sizes keep their order.
    const by = new Int32Array(n);
    for (let i = 0; i < n; i++) by[i] = i;
    by.sort((a, b) => sizeAt[a]! - sizeAt[b]! || files[a]! - files[b]!);
    let runs = 0;
    for (let k = 0; k < n; k++) if (k === 0 || sizeAt[by[k]!] !== sizeAt[by[k - 1]!]) runs++;
    this.#sizes = new Float64Array(runs);
    this.#starts = new Int32Array(runs + 1);
    for (let k = 0, r = -1; k < n; k++) {
      const size = sizeAt[by[k]!]!;
      if (r === -1 || size !== this.#sizes[r]) {
        this.#sizes[++r] = size;
        this.#starts[r] = k;
      }
      by[k] = files[by[k]!]!; // from a position in `files` to the file's number: the order kept
    }
    this.#starts[runs] = n;
    this.#order = by;
    // Freed now, not at a full collection (a large object, 8 bytes a file).
    freeArray(sizeAt);
  }

  get size(): number {
    return this.#order.length;
  }

  /**
   * The paths of the files of `size` bytes (a new array), or one shared empty list when there are
   * none: the planner asks this of every new file, and most sizes have no file in the old tree.
   */
  pathsOf(size: number): readonly string[] {
    const sizes = this.#sizes;
    let lo = 0;
    let hi = sizes.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (sizes[mid]! < size) lo = mid + 1;
      else hi = mid;
    }
    if (lo === sizes.length || sizes[lo] !== size) return NONE;
    const from = this.#starts[lo]!;
    const paths = new Array<string>(this.#starts[lo + 1]! - from);
    for (let i = 0; i < paths.length; i++) paths[i] = this.#pathOf(this.#order[from + i]!);
    return paths;
  }

  /** [size, path] of every file, by size. */
  *[Symbol.iterator](): IterableIterator<[number, string]> {
    for (let r = 0; r < this.#sizes.length; r++)
      for (let k = this.#starts[r]!; k < this.#starts[r + 1]!; k++)
        yield [this.#sizes[r]!, this.#pathOf(this.#order[k]!)];
  }
}
