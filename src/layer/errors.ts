/** Typed errors of the layer format: tar, TOC, zstd frames, entry names. Tests assert on `code`. */
import { TiuError } from '../errors.ts';
import { showPath } from './entry.ts';

/** A tar, TOC or zstd stream that does not follow its format, or is larger than allowed. */
export class LayerFormatError extends TiuError {
  constructor(
    code:
      | 'TAR_INVALID'
      | 'TAR_ENTRY_UNSUPPORTED'
      | 'TOC_INVALID'
      | 'TOC_CHECKSUM_MISMATCH'
      | 'TOC_TOO_LARGE'
      | 'ZSTD_OUTPUT_TOO_LARGE',
    message: string,
    details: Record<string, unknown> = {},
  ) {
    super(code, message, details);
  }
}

/** A name for a message: a binary string, or bytes. */
function shown(path: string | Uint8Array): string {
  return (typeof path === 'string' ? showPath(path.slice(0, 300)) : Buffer.from(path).toString('utf8')).slice(0, 300);
}

/** An entry name or link target that would leave the root, or a write through a non-directory. Paths are binary strings (or bytes). */
export class UnsafePathError extends TiuError {
  constructor(path: string | Uint8Array, why: string) {
    const name = shown(path);
    super('PATH_UNSAFE', `refusing entry ${JSON.stringify(name)}: ${why}`, { path: name, why });
  }
}

/** A tree entry that is malformed (unknown type, missing digest, bad numbers, a name too long). */
export class BadEntryError extends TiuError {
  constructor(path: string | Uint8Array, why: string) {
    const name = shown(path);
    super('ENTRY_INVALID', `invalid entry ${JSON.stringify(name)}: ${why}`, { path: name, why });
  }
}
