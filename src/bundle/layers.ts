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

/**
 * The layers' entries (each sorted, each holding the ancestor directories of its entries that
 * the tree has), empty layers dropped, in layer order.
 */
export function planLayers(entries: readonly TreeEntry[], n: number): TreeEntry[][] {
  const sorted = [...entries].sort((a, b) => compareBytes(a.path, b.path));
  if (n <= 1) return sorted.length ? [sorted] : [];
  const byPath = new Map(sorted.map((e) => [e.path, e]));
  const index = new Map<string, number>();
  const assign = (e: TreeEntry): number => {
    const known = index.get(e.path);
    if (known !== undefined) return known;
    const target = e.type === 'hardlink' && e.linkname !== undefined ? byPath.get(e.linkname) : undefined;
    const i = target && target !== e ? assign(target) : layerOfGroup(groupOf(e.path), n);
    index.set(e.path, i);
    return i;
  };
  const members: Set<string>[] = Array.from({ length: n }, () => new Set());
  const held = new Set<string>();
  const place = (e: TreeEntry, i: number) => {
    for (const p of [...ancestorsOf(e.path), e.path])
      if (byPath.has(p)) {
        members[i]!.add(p);
        held.add(p);
      }
  };
  for (const e of sorted) if (e.type !== 'dir') place(e, assign(e));
  // A directory no layer holds yet has no files below it: placed by its group, deepest first,
  // so an empty subtree's parents come with its leaves.
  for (const e of sorted.toReversed()) if (e.type === 'dir' && !held.has(e.path)) place(e, assign(e));
  return members.map((m) => sorted.filter((e) => m.has(e.path))).filter((l) => l.length > 0);
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
