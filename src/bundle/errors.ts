import { TiuError } from '../errors.ts';

/** Anything wrong with what `tiu build` was given: the source tree, tar or options. */
export class BuildError extends TiuError {
  constructor(
    code:
      | 'BUILD_SOURCE_NOT_FOUND'
      | 'BUILD_SOURCE_UNSUPPORTED'
      | 'BUILD_SOURCE_CHANGED'
      | 'BUILD_SOURCE_UNREADABLE'
      | 'BUILD_OPTION_INVALID'
      | 'PATH_UNSAFE'
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
