/** Typed errors of the diff-apply engine. Tests assert on `code`. */
import { TiuError, type ErrorCode } from '../../errors.ts';
import { showPath } from '../../layer/entry.ts';

// Refusals of entry names are the layer format's, shared with the build.
export { UnsafePathError, BadEntryError } from '../../layer/errors.ts';

/** A hardlink whose target is missing from the tree, outside it, or a directory. Paths are binary strings. */
export class BadHardlinkError extends TiuError {
  constructor(path: string, target: string, why: string) {
    const [p, t] = [showPath(path), showPath(target)];
    super('HARDLINK_INVALID', `hardlink ${JSON.stringify(p)} -> ${JSON.stringify(t)}: ${why}`, {
      path: p,
      target: t,
      why,
    });
  }
}
/** A tar stream that is not a valid tar archive. */
export class BadTarError extends TiuError {
  constructor(why: string, details: Record<string, unknown> = {}) {
    super('TAR_INVALID', `invalid tar stream: ${why}`, details);
  }
}
/** The content provider could not give an entry's content. */
export class ContentUnavailableError extends TiuError {
  constructor(path: string, why: string) {
    super('CONTENT_UNAVAILABLE', `no content for ${JSON.stringify(showPath(path))}: ${why}`, {
      path: showPath(path),
      why,
    });
  }
}
/** The target root is not usable (missing, not a directory, a symlink). */
export class BadRootError extends TiuError {
  constructor(root: string, why: string) {
    super('APPLY_ROOT_INVALID', `apply target ${root}: ${why}`, { root, why });
  }
}
/** The filesystem ran out of space (or quota) while applying. */
export class NoSpaceError extends TiuError {
  constructor(root: string, cause: unknown) {
    super('DISK_FULL', `no space left on the filesystem of ${root} while applying the image`, { root }, { cause });
  }
}

/** Turn ENOSPC/EDQUOT from any step into DISK_FULL; everything else passes unchanged. */
export function mapFsError(e: unknown, root: string): unknown {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ENOSPC' || code === 'EDQUOT') return new NoSpaceError(root, e);
  return e;
}

/** Refusals of an image's tar that name the entry; `inLayer` adds which layer it is in. */
const LAYER_NAMED: ReadonlySet<ErrorCode> = new Set([
  'TAR_INVALID',
  'TAR_ENTRY_UNSUPPORTED',
  'ENTRY_INVALID',
  'PATH_UNSAFE',
  'HARDLINK_INVALID',
  'XATTR_INVALID',
]);

/**
 * `e`, thrown while layer `k` (0-based) was read, naming that layer (TAR_INVALID becomes
 * LAYER_CORRUPT) (`label`, e.g. `layer 2
 * (sha256:…)`) in its message and details when it is a refusal of the layer's content that does
 * not name one yet. Same code; the original is the cause.
 */
export function inLayer(e: unknown, k: number, label = `layer ${k + 1}`): unknown {
  if (!(e instanceof TiuError) || !LAYER_NAMED.has(e.code) || e.details.layer !== undefined) return e;
  // A tar that does not decode is a corrupt layer, like gzip or zstd that does not.
  if (e.code === 'TAR_INVALID')
    return new TiuError(
      'LAYER_CORRUPT',
      `${label} is not a valid tar: ${e.message.replace(/^invalid tar stream: /, '')}`,
      { ...e.details, layer: label, causeCode: 'TAR_INVALID' },
      { cause: e },
    );
  const named = new TiuError(e.code, `${label}: ${e.message}`, { ...e.details, layer: label }, { cause: e });
  named.name = e.name;
  return named;
}
