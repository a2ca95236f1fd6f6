/**
 * The new tree as the planner walks it: its entries in path order (comparePaths) in one array,
 * found by path through an open-addressing table of row numbers (4 bytes a slot, at most half
 * full). The flattened layers' Map kept a slot of ~40 bytes an entry in a table grown by
 * doubling (1.75 MiB on the bench's larger tree, 46k entries) beside a sorted array of its
 * keys, through the plan's peak: the booted tree's scan and content index are alive then too.
 * Made from that Map once its layers are flattened, the Map let go (planAgainst).
 */
import { implicitDir, showPath } from '../../layer/entry.ts';
import { comparePaths, parentOf } from '../../layer/paths.ts';
import { UnsafePathError } from './errors.ts';
import { flattenLayers } from './layers.ts';
import { pathHash } from './path-hash.ts';
import type { TreeEntry } from './types.ts';

/** Add the parent directories an image did not list (tar archives may omit them). */
export function addImplicitParents(tree: Map<string, TreeEntry>): void {
  const root = tree.get('');
  if (root && root.type !== 'dir')
    throw new UnsafePathError('.', `the root of the image is a ${root.type}, not a directory`);
  const add: TreeEntry[] = [];
  for (const p of tree.keys()) {
    let d = parentOf(p);
    for (;;) {
      const have = tree.get(d);
      if (have) {
        if (have.type !== 'dir')
          throw new UnsafePathError(
            p,
            `its parent ${JSON.stringify(showPath(d))} is a ${have.type} in the image, not a directory`,
          );
        break;
      }
      const implicit = implicitDir(d);
      tree.set(d, implicit);
      add.push(implicit);
      if (d === '') break;
      d = parentOf(d);
    }
  }
}

export class SortedTree {
  /** The entries, sorted by path. */
  readonly #rows: TreeEntry[];
  /** Row + 1 of each entry at its path's hash (0: empty). */
  readonly #slots: Int32Array;

  private constructor(rows: TreeEntry[]) {
    this.#rows = rows;
    let n = 1024;
    while (n < rows.length * 2) n *= 2;
    this.#slots = new Int32Array(n);
    const mask = n - 1;
    for (let r = 0; r < rows.length; r++) {
      let i = pathHash(rows[r]!.path) & mask;
      while (this.#slots[i] !== 0) i = (i + 1) & mask;
      this.#slots[i] = r + 1;
    }
  }

  /**
   * The tree of `map` (path -> entry, as flattenLayers makes it) with the parents it does not
   * list (addImplicitParents: `map` gains them too). Every key must be its entry's path.
   */
  static of(map: Map<string, TreeEntry>): SortedTree {
    addImplicitParents(map);
    for (const [path, e] of map)
      if (e.path !== path)
        throw new Error(`tree key ${JSON.stringify(path)} names an entry of ${JSON.stringify(e.path)}`);
    // Spread from the Map's iterator: made at its size, not grown by push (the copies garbage).
    const rows = [...map.values()];
    rows.sort((a, b) => comparePaths(a.path, b.path));
    return new SortedTree(rows);
  }

  get size(): number {
    return this.#rows.length;
  }

  /** The entry at position `row` in path order. */
  at(row: number): TreeEntry {
    return this.#rows[row]!;
  }

  get(path: string): TreeEntry | undefined {
    const slots = this.#slots;
    const mask = slots.length - 1;
    for (let i = pathHash(path) & mask; ; i = (i + 1) & mask) {
      const v = slots[i]!;
      if (v === 0) return undefined;
      const e = this.#rows[v - 1]!;
      if (e.path === path) return e;
    }
  }

  has(path: string): boolean {
    return this.get(path) !== undefined;
  }

  /** The entries in path order. */
  values(): IterableIterator<TreeEntry> {
    return this.#rows.values();
  }
}

/**
 * The final tree of `layers` (flattenLayers), sorted. The flattened Map is made and let go in
 * this frame: a suspended async caller would keep a temporary of its own frame alive beside the
 * scan and the index it awaits next.
 */
export function flattenSorted(layers: readonly (readonly TreeEntry[])[]): SortedTree {
  return SortedTree.of(flattenLayers(layers));
}
