/**
 * Splitting the tree into at most N layers by a stable rule.
 *
 * Directories: all of them, and nothing else, go into the *last* layer. A directory's mtime
 * changes whenever a package adds, renames or removes one of its files (dpkg and rpm replace
 * files by rename), so a directory entry repeated in many layers (as parents usually are)
 * would change most layer digests on every update. Alone in one small layer, they change one.
 * Extractors create missing parents while applying the earlier layers; the last layer then
 * sets every directory's owner, mode, xattrs and mtime, and nothing touches them afterwards.
 *
 * Everything else belongs to a *group*, named by its parent directory cut to a few components
 * (three under /usr and /var, e.g. usr/bin, usr/lib/x86_64-linux-gnu, var/lib/dpkg; all of
 * /etc is one group; two components elsewhere), and a group goes to content layer
 * sha256(group) mod (N-1). Why a hash and not size-balanced bin packing: packing moves groups
 * between layers when sizes shift, so a small update would change many layer digests; the hash
 * never moves a group, so a changed file changes exactly the one layer its group lives in
 * (plus the directory layer if a directory changed). The price is uneven layer sizes, which
 * costs nothing on a device that fetches single files through the table of contents.
 *
 * /usr/lib/tiu/etc (the pristine /etc) goes with /etc and /usr/share/factory/var with /var, so
 * one change touches one layer. A hardlink goes with the file it links to (a tar can only link
 * to what it holds or what an earlier layer put down; keeping them together is simplest).
 */
import { createHash } from 'node:crypto';
import type { TreeEntry } from '../layer/entry.ts';
import { compareBytes, parentOf } from '../layer/paths.ts';
import { FACTORY_VAR, PRISTINE_ETC } from './rules.ts';

export const DEFAULT_LAYERS = 8;
export const MAX_LAYERS = 127;

/** The group of a non-directory entry at `path`. */
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

/** The layers' entries (each sorted), empty layers dropped, in layer order; directories last. */
export function planLayers(entries: readonly TreeEntry[], n: number): TreeEntry[][] {
  const sorted = [...entries].sort((a, b) => compareBytes(a.path, b.path));
  if (n <= 1) return sorted.length ? [sorted] : [];
  const content = n - 1;
  const byPath = new Map(sorted.map((e) => [e.path, e]));
  const index = new Map<string, number>();
  const assign = (e: TreeEntry): number => {
    const known = index.get(e.path);
    if (known !== undefined) return known;
    const target = e.type === 'hardlink' && e.linkname !== undefined ? byPath.get(e.linkname) : undefined;
    const i = target && target !== e ? assign(target) : layerOfGroup(groupOf(e.path), content);
    index.set(e.path, i);
    return i;
  };
  const layers: TreeEntry[][] = Array.from({ length: content }, () => []);
  const dirs: TreeEntry[] = [];
  for (const e of sorted) {
    if (e.type === 'dir') dirs.push(e);
    else layers[assign(e)]!.push(e);
  }
  return [...layers, dirs].filter((l) => l.length > 0);
}
