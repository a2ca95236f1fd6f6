/**
 * Splitting the tree into at most N layers by a stable rule.
 *
 * Every entry that is not a directory belongs to a *group*, named by its parent directory cut
 * to a few components (three under /usr and /var, e.g. usr/bin, usr/lib/x86_64-linux-gnu,
 * var/lib/dpkg; all of /etc is one group; two components elsewhere), and a group goes to layer
 * sha256(group) mod N. Why a hash and not size-balanced bin packing: packing moves groups
 * between layers when sizes shift, so a small update would change many layer digests; the hash
 * never moves a group, so a changed file changes exactly the one layer its group lives in.
 * The price is uneven layer sizes, which costs nothing on a device that fetches single files
 * through the table of contents.
 *
 * Directories: every layer carries every ancestor directory of its entries, the same tree entry
 * (owner, mode, xattrs, mtime) wherever it appears, so each layer is complete on its own.
 * containers/storage pulls zstd:chunked layers one at a time, each into its own directory, and
 * creates a parent a layer lacks with mode 0 and no metadata; overlayfs then shows the upper
 * layer's directory, so a layer without its parents would hide the real ones. Identical copies
 * make the layer order irrelevant. A directory no other entry needs (an empty one, a mount
 * point) is placed like a file, by its own group. The cost: a directory's changed mtime changes
 * every layer below it that has entries under it (usually just its own group's).
 *
 * /usr/lib/tiu/etc (the pristine /etc) goes with /etc and /usr/share/factory/var with /var, so
 * one change touches one layer. A hardlink goes with the file it links to (a tar can only link
 * to what it holds or what an earlier layer put down; keeping them together is simplest).
 */
import { createHash } from 'node:crypto';
import type { TreeEntry } from '../layer/entry.ts';
import { ancestorsOf, compareBytes, parentOf } from '../layer/paths.ts';
import { FACTORY_VAR, PRISTINE_ETC } from './rules.ts';

export const DEFAULT_LAYERS = 8;
export const MAX_LAYERS = 127;

/** The group of an entry at `path` (by its parent directory). */
export function groupOf(path: string): string {
  let p = parentOf(path);
  if (p === PRISTINE_ETC || p.startsWith(PRISTINE_ETC + '/')) p = 'etc' + p.slice(PRISTINE_ETC.length);
  else if (p === FACTORY_VAR || p.startsWith(FACTORY_VAR + '/')) p = 'var' + p.slice(FACTORY_VAR.length);
  const parts = p === '' ? [''] : p.split('/');
  const depth = parts[0] === 'etc' ? 1 : parts[0] === 'usr' || parts[0] === 'var' ? 3 : 2;
  return parts.slice(0, depth).join('/');
}

export function layerOfGroup(group: string, n: number): number {
  return createHash('sha256').update(group, 'latin1').digest().readUInt32BE(0) % n;
}

/** Position of `path` in `sorted` (sorted by compareBytes), or -1. */
export function findSorted(sorted: readonly TreeEntry[], path: string): number {
  let lo = 0;
  let hi = sorted.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const c = compareBytes(sorted[mid]!.path, path);
    if (c === 0) return mid;
    if (c < 0) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}

/**
 * The layers' entries (each sorted, each holding the ancestor directories of its entries that
 * the tree has), empty layers dropped, in layer order. Paths are unique (a tree).
 *
 * Entries are known by their position in the sorted tree, and what the plan records per entry
 * is typed arrays (its layer, the layers holding it, whether any does), not maps and sets of
 * paths: the plan is made while the whole tree is in memory, and V8 keeps the pages of the
 * heap's peak for the rest of the build, beside the level-19 compression of its TOCs at the end
 * (the larger bench tree's heap after planning: 40-55 MiB with maps and sets here and in the
 * tree rules, 33 without).
 */
export function planLayers(entries: readonly TreeEntry[], n: number): TreeEntry[][] {
  const sorted = [...entries].sort((a, b) => compareBytes(a.path, b.path));
  if (n <= 1) return sorted.length ? [sorted] : [];
  const count = sorted.length;
  // Ancestors are looked up by path for every entry: the directories (a tenth of a tree) in a
  // map, anything else (an ancestor that is not a directory or is absent) by binary search.
  const dirs = new Map<string, number>();
  for (let k = 0; k < count; k++) if (sorted[k]!.type === 'dir') dirs.set(sorted[k]!.path, k);
  const positionOf = (path: string) => dirs.get(path) ?? findSorted(sorted, path);
  const layerOf = new Int16Array(count).fill(-1);
  const assign = (k: number): number => {
    const known = layerOf[k]!;
    if (known >= 0) return known;
    const e = sorted[k]!;
    const target = e.type === 'hardlink' && e.linkname !== undefined ? findSorted(sorted, e.linkname) : -1;
    const i = target >= 0 && target !== k ? assign(target) : layerOfGroup(groupOf(e.path), n);
    layerOf[k] = i;
    return i;
  };
  // Bit i of an entry's words: layer i holds it.
  const words = Math.ceil(n / 32);
  const members = new Uint32Array(count * words);
  const held = new Uint8Array(count);
  const hold = (k: number, i: number) => {
    members[k * words + (i >>> 5)]! |= 1 << (i & 31);
    held[k] = 1;
  };
  const place = (k: number, i: number) => {
    for (const a of ancestorsOf(sorted[k]!.path)) {
      const at = positionOf(a);
      if (at >= 0) hold(at, i);
    }
    hold(k, i);
  };
  for (let k = 0; k < count; k++) if (sorted[k]!.type !== 'dir') place(k, assign(k));
  // A directory no layer holds yet has no files below it: placed by its group, deepest first,
  // so an empty subtree's parents come with its leaves.
  for (let k = count - 1; k >= 0; k--) if (sorted[k]!.type === 'dir' && !held[k]) place(k, assign(k));
  const layers: TreeEntry[][] = [];
  for (let i = 0; i < n; i++) {
    const w = i >>> 5;
    const bit = 1 << (i & 31);
    const layer = sorted.filter((_, k) => (members[k * words + w]! & bit) !== 0);
    if (layer.length > 0) layers.push(layer);
  }
  return layers;
}

/**
 * The order in which to write the layers of a plan (their indexes): the most content bytes
 * first, ties by index. The largest layer is the longest job; started first, the small ones
 * fill the other cores around it instead of leaving it to run alone at the end. The bytes of a
 * layer do not depend on when it is written.
 */
export function largestFirst(plan: readonly (readonly TreeEntry[])[]): number[] {
  const bytes = plan.map((layer) => layer.reduce((sum, e) => sum + (e.type === 'reg' ? e.size : 0), 0));
  return plan.map((_, i) => i).sort((a, b) => bytes[b]! - bytes[a]! || a - b);
}
