/**
 * Entry names from images are untrusted: normalise them and refuse anything that could name a
 * place outside the root.
 */
import { BadEntryError, UnsafePathError } from './errors.ts';

const MAX_PATH = 4096;
/** NAME_MAX of Linux filesystems: a longer component can never be created (ENAMETOOLONG). */
const MAX_COMPONENT = 255;

/**
 * `./usr/bin/` -> `usr/bin`, `.` -> `` (the root). Refuses absolute names, `..` components,
 * NUL bytes and over-long names with PATH_UNSAFE, a component longer than 255 bytes with ENTRY_INVALID.
 */
export function normalizeEntryPath(name: string): string {
  if (name.includes('\0')) throw new UnsafePathError(name, 'contains a NUL byte');
  if (name.length > MAX_PATH) throw new UnsafePathError(name, `longer than ${MAX_PATH} bytes`);
  if (name.startsWith('/')) throw new UnsafePathError(name, 'absolute path');
  const parts: string[] = [];
  for (const p of name.split('/')) {
    if (p === '' || p === '.') continue;
    if (p === '..') throw new UnsafePathError(name, "contains a '..' component");
    if (p.length > MAX_COMPONENT / 3 && Buffer.byteLength(p) > MAX_COMPONENT)
      throw new BadEntryError(
        name,
        `a name component is ${Buffer.byteLength(p)} bytes long, more than the ${MAX_COMPONENT} a filesystem allows`,
      );
    parts.push(p);
  }
  return parts.join('/');
}

/**
 * A hardlink target in a tar or TOC names another entry of the same tree, relative to the root
 * (leading `/` tolerated as tar writers sometimes do, `..` refused).
 */
export function normalizeLinkTarget(path: string, target: string): string {
  if (target.includes('\0')) throw new UnsafePathError(path, 'hardlink target contains a NUL byte');
  const parts: string[] = [];
  for (const p of target.split('/')) {
    if (p === '' || p === '.') continue;
    if (p === '..')
      throw new UnsafePathError(path, `hardlink target ${JSON.stringify(target)} contains a '..' component`);
    parts.push(p);
  }
  if (parts.length === 0) throw new UnsafePathError(path, 'hardlink to the root directory');
  return parts.join('/');
}

export function parentOf(path: string): string {
  const i = path.lastIndexOf('/');
  return i < 0 ? '' : path.slice(0, i);
}

export function baseName(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

export function joinPath(dir: string, name: string): string {
  return dir === '' ? name : `${dir}/${name}`;
}

/** True when `path` is `dir` or below it. */
export function isAtOrBelow(path: string, dir: string): boolean {
  return dir === '' || path === dir || path.startsWith(dir + '/');
}

/** Order paths so that every directory comes before what is inside it (component-wise). */
export function comparePaths(a: string, b: string): number {
  const aa = a === '' ? [] : a.split('/');
  const bb = b === '' ? [] : b.split('/');
  const n = Math.min(aa.length, bb.length);
  for (let i = 0; i < n; i++) {
    const x = aa[i]!;
    const y = bb[i]!;
    if (x !== y) return x < y ? -1 : 1;
  }
  return aa.length - bb.length;
}
