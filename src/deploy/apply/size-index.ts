/**
 * A scanned tree's regular files by size (the only candidates for a content match): the files'
 * numbers sorted by size, their sizes and paths read where the scan keeps them. A Map of size to
 * a path or a list of paths was ~1.5 MiB on the bench's larger tree (14k sizes; 5k lists, each
 * grown by push() to ~20 slots); sorted copies of the sizes and paths, 16 bytes a file; this
 * is 4. Files of one size keep the order of their numbers (the planner takes the first that matches).
 */
const NONE: readonly string[] = Object.freeze([]);

export class SizeIndex {
  /** The files' numbers, by size. */
  readonly #order: Int32Array;
  readonly #sizeOf: (file: number) => number;
  readonly #pathOf: (file: number) => string;

  /**
   * `files`: the numbers of the regular files (a scan's rows), each with its size and path by
   * `sizeOf` and `pathOf`, which must give the same answer for as long as the index is read.
   */
  constructor(files: Int32Array, sizeOf: (file: number) => number, pathOf: (file: number) => string) {
    this.#sizeOf = sizeOf;
    this.#pathOf = pathOf;
    // Stable: equal sizes keep their order.
    this.#order = files.sort((a, b) => sizeOf(a) - sizeOf(b) || a - b);
  }

  get size(): number {
    return this.#order.length;
  }

  /**
   * The paths of the files of `size` bytes (a new array), or one shared empty list when there are
   * none: the planner asks this of every new file, and most sizes have no file in the old tree.
   */
  pathsOf(size: number): readonly string[] {
    const o = this.#order;
    let lo = 0;
    let hi = o.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.#sizeOf(o[mid]!) < size) lo = mid + 1;
      else hi = mid;
    }
    let end = lo;
    while (end < o.length && this.#sizeOf(o[end]!) === size) end++;
    if (end === lo) return NONE;
    const paths = new Array<string>(end - lo);
    for (let i = lo; i < end; i++) paths[i - lo] = this.#pathOf(o[i]!);
    return paths;
  }

  /** [size, path] of every file, by size. */
  *[Symbol.iterator](): IterableIterator<[number, string]> {
    for (const f of this.#order) yield [this.#sizeOf(f), this.#pathOf(f)];
  }
}
