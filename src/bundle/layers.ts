/**
 * Splitting the tree into at most N layers by a stable rule.
 *
 * The rule: every path belongs to a *group*, its first few components (three under /usr,
 * e.g. usr/lib/modules or usr/share/locale; two elsewhere, e.g. etc/ssh, var/lib), and a group
 * goes to layer sha256(group) mod N. Why a hash and not size-balanced bin packing: packing
 * moves groups between layers when sizes shift, so a small update would change many layer
 * digests; the hash never moves a group, so a changed file changes exactly the one layer its
 * group lives in, whatever else changes in the tree. The price is uneven layer sizes, which
 * costs nothing on a device that fetches files through the table of contents.
 *
 * Two groups are folded onto the paths they mirror, so one change touches one layer:
 * /usr/lib/tiu/etc/X goes with /etc/X, /usr/share/factory/var/X with /var/X.
 * A hardlink goes with the file it links to (a tar can only link inside itself), and every
 * layer carries the parent directories of what it holds, so each layer extracts on its own
 * with the right directory owners, modes and mtimes.
 */
import { createHash } from 'node:crypto';
import { ancestorsOf, comparePaths, type TreeEntry } from './entry.ts';
import { FACTORY_VAR, PRISTINE_ETC } from './rules.ts';

export const DEFAULT_LAYERS = 8;
export const MAX_LAYERS = 127;

export function groupOf(path: string): string {
  let p = path;
  if (p === PRISTINE_ETC || p.startsWith(PRISTINE_ETC + '/')) p = 'etc' + p.slice(PRISTINE_ETC.length);
  else if (p === FACTORY_VAR || p.startsWith(FACTORY_VAR + '/')) p = 'var' + p.slice(FACTORY_VAR.length);
  const parts = p.split('/');
  const depth = parts[0] === 'usr' ? 3 : 2;
  return parts.slice(0, depth).join('/');
}

export function layerOfGroup(group: string, n: number): number {
  return createHash('sha256').update(group, 'latin1').digest().readUInt32BE(0) % n;
}

/** The layers' entries (each sorted, parents included), empty layers dropped, in layer order. */
export function planLayers(entries: readonly TreeEntry[], n: number): TreeEntry[][] {
  const byPath = new Map(entries.map((e) => [e.path, e]));
  const index = new Map<string, number>();
  const assign = (e: TreeEntry): number => {
    const known = index.get(e.path);
    if (known !== undefined) return known;
    let i: number;
    if (e.type === 'hardlink' && e.link !== undefined && byPath.has(e.link)) i = assign(byPath.get(e.link)!);
    else i = layerOfGroup(groupOf(e.path), n);
    index.set(e.path, i);
    return i;
  };
  const layers: Map<string, TreeEntry>[] = Array.from({ length: n }, () => new Map<string, TreeEntry>());
  for (const e of entries) {
    const i = assign(e);
    const layer = layers[i]!;
    layer.set(e.path, e);
    for (const a of ancestorsOf(e.path)) {
      const ae = byPath.get(a);
      if (ae) layer.set(a, ae);
    }
  }
  return layers.filter((l) => l.size > 0).map((l) => [...l.values()].sort((a, b) => comparePaths(a.path, b.path)));
}
