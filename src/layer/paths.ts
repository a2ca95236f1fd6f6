/**
 * The path rules of a layer's tree, for the build and the device alike. Paths are binary strings
 * (entry.ts: one char per byte), so `length` is the byte count and comparing chars compares
 * bytes. Tree form: no leading `/` or `./`, no trailing `/`, components joined by `/`, `''` is
 * the root. Names from images are untrusted: anything that could name a place outside the root
 * is refused here.
 */
import { BadEntryError, UnsafePathError } from './errors.ts';

/** PATH_MAX of Linux, counted in bytes of the tar name. */
export const MAX_PATH = 4096;
/** NAME_MAX of Linux filesystems: a longer component can never be created (ENAMETOOLONG). */
export const MAX_COMPONENT = 255;

/**
 * `./usr/bin/` -> `usr/bin`, `.` -> `` (the root). Refuses `..` components, NUL bytes, names
 * over PATH_MAX and (unless `allowAbsolute`, for a user's own input) absolute names with
 * PATH_UNSAFE; a component over NAME_MAX with ENTRY_INVALID.
 */
export function normalizeEntryPath(name: string, opts: { allowAbsolute?: boolean } = {}): string {
  if (name.includes('\0')) throw new UnsafePathError(name, 'contains a NUL byte');
  if (name.length > MAX_PATH) throw new UnsafePathError(name, `longer than ${MAX_PATH} bytes`);
  // Almost every name of an image is normal already: returned as it is, without the split and
  // join below (two arrays and a string per entry, ~27 MiB of garbage planning a 45k-file TOC).
  if (isNormalPath(name)) return name;
  if (name.startsWith('/') && !opts.allowAbsolute) throw new UnsafePathError(name, 'absolute path');
  const parts: string[] = [];
  for (const p of name.split('/')) {
    if (p === '' || p === '.') continue;
    if (p === '..') throw new UnsafePathError(name, "leaves the tree (a '..' component)");
    if (p.length > MAX_COMPONENT)
      throw new BadEntryError(
        name,
        `a name component is ${p.length} bytes long, more than the ${MAX_COMPONENT} a filesystem allows`,
      );
    parts.push(p);
  }
  return parts.join('/');
}

/**
 * True when `name` is what normalizeEntryPath makes of it: no empty, `.` or `..` component
 * (so no leading, trailing or doubled `/`), none longer than MAX_COMPONENT. `''` is the root.
 */
function isNormalPath(name: string): boolean {
  let start = 0;
  for (let i = 0; i <= name.length; i++) {
    if (i < name.length && name.charCodeAt(i) !== 0x2f) continue;
    const len = i - start;
    if (len === 0) return name.length === 0;
    if (len > MAX_COMPONENT) return false;
    if (name.charCodeAt(start) === 0x2e && (len === 1 || (len === 2 && name.charCodeAt(start + 1) === 0x2e)))
      return false;
    start = i + 1;
  }
  return true;
}

/**
 * A hardlink target in a tar or TOC names another entry of the same tree, relative to the root
 * (leading `/` tolerated as tar writers sometimes do, `..` refused).
 */
export function normalizeLinkTarget(path: string, target: string): string {
  let norm: string;
  try {
    norm = normalizeEntryPath(target, { allowAbsolute: true });
  } catch (e) {
    if (e instanceof UnsafePathError || e instanceof BadEntryError)
      throw new UnsafePathError(path, `hardlink target ${JSON.stringify(target)}: ${String(e.details.why)}`);
    throw e;
  }
  if (norm === '') throw new UnsafePathError(path, 'hardlink to the root directory');
  return norm;
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

/** All ancestors of a path, outermost first (not '' and not the path itself). */
export function ancestorsOf(p: string): string[] {
  const out: string[] = [];
  let i = p.indexOf('/');
  while (i >= 0) {
    out.push(p.slice(0, i));
    i = p.indexOf('/', i + 1);
  }
  return out;
}

/** True when `path` is `dir` or below it. */
export function isAtOrBelow(path: string, dir: string): boolean {
  return dir === '' || path === dir || isBelow(path, dir);
}

/** `path` is strictly inside the (non-root) directory `dir`; no string is made (called per entry and reserved path). */
export function isBelow(path: string, dir: string): boolean {
  return path.length > dir.length && path.charCodeAt(dir.length) === 0x2f && path.startsWith(dir);
}

/**
 * Order paths so that every directory comes before what is inside it (component-wise, bytes
 * within a component). Compared character by character with `/` below every other byte, which
 * is the same order: splitting both paths into components for each comparison made sorting a
 * first install's tree (~100k paths, ~1.7M comparisons) allocate hundreds of MiB of arrays and
 * strings, and lifted its planning's heap by ~20 MiB on the bench's larger tree.
 */
export function comparePaths(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    // A component that ends here is a prefix of the other's: it sorts first.
    if (x === SLASH_CODE) return -1;
    if (y === SLASH_CODE) return 1;
    return x < y ? -1 : 1;
  }
  // One is the other plus more: the shorter (an ancestor, or a prefix of the last component) first.
  return a.length - b.length;
}

const SLASH_CODE = 0x2f;

/** Plain byte order of whole paths: the order `tiu build` writes entries into a tar layer. */
export function compareBytes(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
