import { TiuError } from '../errors.ts';

export class NotFoundError extends TiuError {
  constructor(what: string, where: string) {
    super('NOT_FOUND', `${what} not found in ${where}`, { what, where });
  }
}
export class RangeUnsupportedError extends TiuError {
  constructor(where: string) {
    super('RANGE_UNSUPPORTED', `${where} does not serve byte ranges`, { where });
  }
}
export class InvalidManifestError extends TiuError {
  constructor(why: string, details: Record<string, unknown> = {}) {
    super('INVALID_MANIFEST', `invalid manifest: ${why}`, details);
  }
}
export class ManifestTooLargeError extends TiuError {
  constructor(size: number, limit: number) {
    super('MANIFEST_TOO_LARGE', `manifest of ${size} bytes exceeds the limit of ${limit}`, { size, limit });
  }
}
