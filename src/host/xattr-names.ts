/**
 * Which extended attributes an image may carry. Names come from image data (pax
 * `SCHILY.xattr.`/`LIBARCHIVE.xattr.` records, a TOC's `xattrs`) and end up in setfattr's
 * `--restore` text, whose lines are `name=value` under `# file: PATH` headers: a name with a
 * newline could start a block for another file. So a name is checked where an entry is read
 * (before any snapshot exists) and again where it is set (./xattr.ts):
 *   - namespace user., trusted. or security. (with something after the dot), or exactly
 *     system.posix_acl_access / system.posix_acl_default;
 *   - printable ASCII only (0x21..0x7e): no whitespace, control characters or bytes >= 0x80,
 *     and no '=' (the separator of the text format);
 *   - 1..255 bytes (XATTR_NAME_MAX);
 * and a value is at most 64 KiB (XATTR_SIZE_MAX). Pure: no filesystem access.
 */
import { TiuError } from '../errors.ts';

export const XATTR_NAME_MAX = 255;
export const XATTR_VALUE_MAX = 64 * 1024;

const NAMESPACES = ['user.', 'trusted.', 'security.'] as const;
const SYSTEM_NAMES = new Set(['system.posix_acl_access', 'system.posix_acl_default']);

/** An xattr name or value tiu refuses to set: XATTR_INVALID, naming the file and the attribute. */
export class BadXattrError extends TiuError {
  /** `path`: text, or the bytes of a name (an entry path of the image, which need not be UTF-8). */
  constructor(path: string | Uint8Array, name: string, why: string) {
    const shown = JSON.stringify(name.slice(0, 100));
    const file = (typeof path === 'string' ? path : Buffer.from(path).toString('utf8')).slice(0, 300);
    super('XATTR_INVALID', `refusing extended attribute ${shown} of ${JSON.stringify(file)}: ${why}`, {
      path: file,
      name: name.slice(0, 300),
      why,
    });
  }
}

/**
 * Why `name` is not an xattr name tiu sets, or undefined when it is fine. `anyNamespace`: only
 * the form is checked (for removing a name that is on disk already, such as btrfs.compression).
 */
export function xattrNameProblem(name: string, opts: { anyNamespace?: boolean } = {}): string | undefined {
  const bytes = Buffer.from(name, 'utf8');
  if (bytes.length === 0) return 'empty name';
  if (bytes.length > XATTR_NAME_MAX) return `name longer than ${XATTR_NAME_MAX} bytes`;
  for (const b of bytes) {
    if (b === 0x3d) return "name contains '='";
    if (b <= 0x20 || b >= 0x7f)
      return 'name contains whitespace, a control character or a byte outside printable ASCII';
  }
  if (opts.anyNamespace || SYSTEM_NAMES.has(name)) return undefined;
  const ns = NAMESPACES.find((p) => name.startsWith(p));
  if (!ns) return 'namespace is not user., trusted., security., system.posix_acl_access or system.posix_acl_default';
  if (name.length === ns.length) return 'name has nothing after its namespace';
  return undefined;
}

/** Throw XATTR_INVALID unless `name` is an xattr name tiu sets. `path` names the file (entry path or absolute). */
export function checkXattrName(path: string | Uint8Array, name: string, opts: { anyNamespace?: boolean } = {}): void {
  const why = xattrNameProblem(name, opts);
  if (why !== undefined) throw new BadXattrError(path, name, why);
}

/** Throw XATTR_INVALID when a value is larger than the kernel accepts. */
export function checkXattrValue(path: string | Uint8Array, name: string, value: Uint8Array): void {
  if (value.length > XATTR_VALUE_MAX)
    throw new BadXattrError(path, name, `value of ${value.length} bytes is larger than ${XATTR_VALUE_MAX}`);
}

/** Check every name and value of an entry's xattrs. */
export function checkXattrs(path: string | Uint8Array, xattrs: Record<string, Uint8Array>): void {
  for (const [n, v] of Object.entries(xattrs)) {
    checkXattrName(path, n);
    checkXattrValue(path, n, v);
  }
}

/**
 * The xattrs of `set` that tiu writes (a name it supports, a value within XATTR_VALUE_MAX), for
 * copies of trees already on disk: the others (btrfs.*, a foreign namespace) are left behind
 * and listed in `left` when given.
 */
export function settableXattrs(set: Record<string, Buffer>, left?: (name: string) => void): Record<string, Buffer> {
  const out: Record<string, Buffer> = {};
  for (const [n, v] of Object.entries(set)) {
    if (xattrNameProblem(n) === undefined && v.length <= XATTR_VALUE_MAX) out[n] = v;
    else left?.(n);
  }
  return out;
}
