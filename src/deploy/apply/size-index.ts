/**
 * A scanned tree's regular files by size (the only candidates for a content match), as two
 * arrays sorted by size: a Map of size to a path or a list of paths was ~1.5 MiB on the bench's
 * larger tree (14k sizes; 5k lists, each grown by push() to ~20 slots), here 16 bytes a file.
 * Files of one size keep the order they were added in (the planner takes the first that matches).
 */
const NONE: readonly string[] = Object.freeze([]);

export class SizeIndex {
  readonly #sizes: Float64Array;
  readonly #paths: string[];

  /** `sizes[i]` is the size of the file at `paths[i]`. */
  constructor(sizes: readonly number[], paths: readonly string[]) {
    // Stable: equal sizes keep their order.
    const order = Uint32Array.from(sizes.keys()).sort((a, b) => sizes[a]! - sizes[b]! || a - b);
    this.#sizes = new Float64Array(order.length);
    this.#paths = new Array<string>(order.length);
    for (let i = 0; i < order.length; i++) {
      this.#sizes[i] = sizes[order[i]!]!;
      this.#paths[i] = paths[order[i]!]!;
    }
  }

  get size(): number {
    return this.#paths.length;
  }

  /**
   * The paths of the files of `size` bytes (a new array), or one shared empty list when there are
   * none: the planner asks this of every new file, and most sizes have no file in the old tree.
   */
  pathsOf(size: number): readonly string[] {
    const s = this.#sizes;
    let lo = 0;
    let hi = s.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (s[mid]! < size) lo = mid + 1;
      else hi = mid;
    }
    let end = lo;
    while (end < s.length && s[end] === size) end++;
    return end === lo ? NONE : this.#paths.slice(lo, end);
  }

  /** Name each file with `same(path)` where it gives a string (another copy of the same path). */
  sharePaths(same: (path: string) => string | undefined): void {
    const p = this.#paths;
    for (let i = 0; i < p.length; i++) p[i] = same(p[i]!) ?? p[i]!;
  }

  /** [size, path] of every file, by size. */
  *[Symbol.iterator](): IterableIterator<[number, string]> {
    for (let i = 0; i < this.#paths.length; i++) yield [this.#sizes[i]!, this.#paths[i]!];
  }
}
