import { TiuError } from '../errors.ts';

/** Anything wrong with what `tiu build` was given: the source tree, tar or options. */
export class BuildError extends TiuError {
  constructor(
    code:
      | 'BUILD_SOURCE_NOT_FOUND'
      | 'BUILD_SOURCE_UNSUPPORTED'
      | 'BUILD_SOURCE_CHANGED'
      | 'BUILD_SOURCE_UNREADABLE'
      | 'BUILD_BAD_OPTION'
      | 'TAR_UNSAFE_PATH'
      | 'TAR_INVALID'
      | 'TAR_UNSUPPORTED_ENTRY'
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
