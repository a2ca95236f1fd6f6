/** Typed errors of the delta artifact format. Tests assert on `code`. */
import { TiuError } from '../errors.ts';

/** A patch that does not decode, or decodes to something else than the signed size and digest. */
export class PatchError extends TiuError {
  constructor(message: string, details: Record<string, unknown> = {}, options?: ErrorOptions) {
    super('PATCH_INVALID', message, details, options);
  }
}

/** A delta index that is malformed or breaks a bound. */
export class DeltaIndexError extends TiuError {
  constructor(
    code: 'DELTA_INDEX_INVALID' | 'DELTA_INDEX_TOO_LARGE',
    message: string,
    details: Record<string, unknown> = {},
    options?: ErrorOptions,
  ) {
    super(code, message, details, options);
  }
}
