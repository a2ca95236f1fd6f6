/** Typed errors of the delta download. Tests assert on `code`. */
import { TiuError } from '../../errors.ts';

export class DeltaError extends TiuError {
  constructor(
    code:
      | 'DELTA_FILE_MISMATCH'
      | 'DELTA_RANGE_SHORT'
      | 'DELTA_NOT_POSSIBLE'
      | 'DELTA_CONTENT_MISSING'
      | 'DELTA_STORE_WRITE_FAILED',
    message: string,
    details: Record<string, unknown> = {},
    options?: ErrorOptions,
  ) {
    super(code, message, details, options);
  }
}
