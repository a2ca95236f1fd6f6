import { TiuError, isTiuError } from '../errors.ts';
import { showPath } from '../layer/entry.ts';
import { normalizeEntryPath } from '../layer/paths.ts';

/** Anything wrong with what `tiu build` was given: the source tree, tar or options (the layer format's own refusals: src/layer/errors.ts). */
export class BuildError extends TiuError {
  constructor(
    code:
      | 'BUILD_SOURCE_NOT_FOUND'
      | 'BUILD_SOURCE_UNSUPPORTED'
      | 'BUILD_SOURCE_CHANGED'
      | 'BUILD_SOURCE_UNREADABLE'
      | 'BUILD_OPTION_INVALID'
      | 'PATH_UNSAFE'
      | 'TAR_INVALID',
    message: string,
    details: Record<string, unknown> = {},
  ) {
    super(code, message, details);
  }
}

/**
 * A path of the build's input in tree form, by src/layer's one set of path rules; a refusal is
 * said as PATH_UNSAFE naming `what` (the source member, option or link it came from).
 */
export function treePath(raw: string, what: string, allowAbsolute = false): string {
  try {
    return normalizeEntryPath(raw, { allowAbsolute });
  } catch (e) {
    if (!isTiuError(e, 'PATH_UNSAFE') && !isTiuError(e, 'ENTRY_INVALID')) throw e;
    const why = String(e.details.why);
    throw new BuildError('PATH_UNSAFE', `${what}: path ${JSON.stringify(showPath(raw))}: ${why}`, {
      path: showPath(raw),
      why,
    });
  }
}
