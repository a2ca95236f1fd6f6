/**
 * Reserved paths: places of the new snapshot that are the host's, not the image's. Image
 * entries (and whiteouts) at or below them are dropped from the new tree before planning,
 * counted, and reported; the same rule holds on the TOC path and the whole-layer tar path.
 *
 *   - the preserved paths (subvolumes and mount points of a MicroOS root: .snapshots, var,
 *     home, root, opt, srv, usr/local, boot/writable, boot/grub2/<arch>, boot/efi);
 *   - the mount points of the booted snapshot's /etc/fstab (not `/`, swap, `none`, and never
 *     `etc` or `usr` themselves, which are the image's);
 *   - tiu's working names at the top of the snapshot: `.tiu-etc-merge` (the admin's /etc set
 *     aside), `.tiu-staging-*`, `.tiu-tmp-*`, and `.autorelabel`.
 *
 * A non-directory at an ancestor of a reserved path (an image whose `boot` is a symlink) is
 * dropped too: the ancestor stays the directory that holds the host's mount points.
 * So a bootc/Fedora-style image's `home -> var/home`, `usr/local -> ../var/usrlocal` or a
 * `var` symlink is skipped, and the host's directories and subvolume mount points stay.
 *
 * Pure: no filesystem access.
 */
import { whiteoutOf } from './layers.ts';
import { bstr, showPath } from '../../layer/entry.ts';
import { comparePaths, isAtOrBelow, isBelow } from '../../layer/paths.ts';
import type { Counter, EntryType, TreeEntry } from './types.ts';

/** Top-level names tiu itself uses inside a snapshot while it writes one. */
export const WORKING_NAMES = ['.tiu-etc-merge', '.autorelabel'] as const;
export const WORKING_PREFIXES = ['.tiu-staging-', '.tiu-tmp-'] as const;

/** How many skipped paths a report lists. */
export const SKIPPED_PATHS_MAX = 20;

/** Mount points that never reserve image content: the image's own trees. */
const NEVER_RESERVED = new Set(['', 'etc', 'usr']);

export interface Reserved {
  /** Normalised paths (no leading `/`, binary strings like entry paths) whose entries and everything below them are the host's. */
  readonly paths: readonly string[];
  /** The fstab mount points among them (as given), for the mount points the new snapshot keeps. */
  readonly mountPoints: readonly string[];
}

/** The reserved set: preserved paths plus fstab mount points (normalised, deduplicated, top-most first). */
export function reservedSet(preserve: readonly string[], mountPoints: readonly string[] = []): Reserved {
  const all = new Set<string>();
  for (const p of [...preserve, ...mountPoints]) {
    const n = normalizeMountPoint(p);
    // Entry paths are bytes (binary strings): a mount point's name must be compared as its bytes.
    if (n !== null && !NEVER_RESERVED.has(n)) all.add(bstr(Buffer.from(n, 'utf8')));
  }
  return { paths: [...all].sort(comparePaths), mountPoints };
}

/** `/boot//efi/` -> `boot/efi`; null for what cannot be a path below the root (`..`, relative names). */
export function normalizeMountPoint(p: string): string | null {
  if (p.includes('\0')) return null;
  const parts: string[] = [];
  for (const c of p.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') return null;
    parts.push(c);
  }
  return parts.join('/');
}

/** `path` is or lies below one of tiu's working names at the top (no string made: asked of every entry). */
function underWorkingName(path: string): boolean {
  for (const n of WORKING_NAMES) if (isAtOrBelow(path, n)) return true;
  // The prefixes hold no `/`: the top component starts with one exactly when the path does.
  for (const p of WORKING_PREFIXES) if (path.startsWith(p)) return true;
  return false;
}

/**
 * The reserved path an image entry at `path` (of `type`) falls under, or null when the image
 * may write it. For a non-directory at an ancestor of a reserved path, the entry's own path.
 */
export function reservedRoot(path: string, type: EntryType | 'whiteout', r: Reserved): string | null {
  if (path === '') return null;
  if (underWorkingName(path)) {
    const slash = path.indexOf('/');
    return slash < 0 ? path : path.slice(0, slash);
  }
  for (const d of r.paths) {
    if (isAtOrBelow(path, d)) return d;
  }
  if (type !== 'dir') {
    // A symlink, file or whiteout where the host needs a directory holding a reserved path.
    for (const d of r.paths) if (isBelow(d, path)) return type === 'whiteout' ? null : path;
  }
  return null;
}

/** Skipped entries, as an ApplyReport carries them. */
export interface SkipReport {
  skipped: Counter;
  /** The reserved paths (or non-directory ancestors) entries were skipped under, top-most, at most SKIPPED_PATHS_MAX. */
  skippedPaths: string[];
}

/** Counts skipped entries and remembers under which reserved paths. */
export class SkipTally {
  readonly counter: Counter = { count: 0, bytes: 0 };
  readonly #roots = new Set<string>();
  /** Directories counted: layers each carry the parents they need, so one may come several times. */
  readonly #dirs = new Set<string>();

  /** Count one skipped entry. A plain directory exactly at a reserved path is a mount point both sides agree on: dropped, not counted. */
  add(root: string, e: { path: string; type: EntryType | 'whiteout'; size?: number }): void {
    if (e.type === 'dir' && e.path === root) return;
    if (e.type === 'dir') {
      if (this.#dirs.has(e.path)) return;
      this.#dirs.add(e.path);
    }
    this.counter.count++;
    if (e.type === 'reg') this.counter.bytes += e.size ?? 0;
    this.#roots.add(root);
  }

  report(): SkipReport {
    const roots = [...this.#roots].sort(comparePaths);
    const top = roots.filter((p) => !roots.some((q) => q !== p && isAtOrBelow(p, q)));
    // Shown as text: the report goes to messages and JSON.
    return { skipped: { ...this.counter }, skippedPaths: top.slice(0, SKIPPED_PATHS_MAX).map(showPath) };
  }
}

/**
 * The reserved path a (normalised) entry falls under, whiteouts by what they hide: a whiteout
 * of `home` or an opaque marker in `var/` is the host's business, not the image's.
 */
export function reservedRootOfEntry(e: { path: string; type: EntryType }, r: Reserved): string | null {
  const w = whiteoutOf(e.path);
  if (w?.kind === 'whiteout') return reservedRoot(w.path, 'whiteout', r) ?? reservedRoot(e.path, e.type, r);
  if (w?.kind === 'opaque')
    return w.dir === ''
      ? reservedRoot(e.path, e.type, r)
      : (reservedRoot(w.dir, 'dir', r) ?? reservedRoot(e.path, e.type, r));
  return reservedRoot(e.path, e.type, r);
}

/**
 * The one rule of both apply paths: true when the (normalised) entry is the host's and must be
 * dropped; then it is counted in `tally`.
 */
export function skipReserved(
  e: { path: string; type: EntryType; size?: number },
  r: Reserved,
  tally: SkipTally,
): boolean {
  const root = reservedRootOfEntry(e, r);
  if (root === null) return false;
  tally.add(root, whiteoutOf(e.path) ? { path: e.path, type: 'whiteout' } : e);
  return true;
}

/** Layers without the entries at or below reserved paths; what was dropped goes into `tally`. */
export function dropReserved(layers: readonly (readonly TreeEntry[])[], r: Reserved, tally: SkipTally): TreeEntry[][] {
  return layers.map((layer) => layer.filter((e) => !skipReserved(e, r, tally)));
}

/** One fstab line: device, mount point, type, options (escapes decoded). */
export interface FstabEntry {
  spec: string;
  file: string;
  vfstype: string;
  options: string;
}

/** fstab's octal escapes: `\040` is a space, `\011` a tab, `\134` a backslash (getmntent). */
export function unescapeFstab(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Parse fstab text: comment and blank lines skipped, fields split on blanks, escapes decoded. */
export function parseFstab(text: string): FstabEntry[] {
  const out: FstabEntry[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const f = line.split(/[ \t]+/);
    if (f.length < 2) continue;
    out.push({
      spec: unescapeFstab(f[0]!),
      file: unescapeFstab(f[1]!),
      vfstype: unescapeFstab(f[2] ?? ''),
      options: unescapeFstab(f[3] ?? ''),
    });
  }
  return out;
}

/**
 * The mount points of an fstab, relative to the root (`/home` -> `home`): not `/`, swap
 * (by type or mount point), `none`, or what is not an absolute path.
 */
export function fstabMountPoints(text: string): string[] {
  const out = new Set<string>();
  for (const e of parseFstab(text)) {
    if (e.vfstype === 'swap' || e.file === 'swap' || e.file === 'none' || !e.file.startsWith('/')) continue;
    const n = normalizeMountPoint(e.file);
    if (n === null || n === '') continue;
    out.add(n);
  }
  return [...out].sort(comparePaths);
}

/** One line for a report: `skipped 12 entries under reserved paths: home, opt`. */
export function describeSkipped(r: SkipReport): string {
  const n = r.skipped.count;
  const more = r.skippedPaths.length >= SKIPPED_PATHS_MAX ? ', …' : '';
  return `skipped ${n} ${n === 1 ? 'entry' : 'entries'} under reserved paths: ${r.skippedPaths.map((p) => (p === '' ? '/' : p)).join(', ')}${more}`;
}
