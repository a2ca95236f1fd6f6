import { TiuError } from '../errors.ts';

export class NotFoundError extends TiuError {
  constructor(what: string, where: string) {
    super('CONTENT_NOT_FOUND', `${what} not found in ${where}`, { what, where });
  }
}
export class RangeUnsupportedError extends TiuError {
  constructor(where: string) {
    super('RANGE_UNSUPPORTED', `${where} does not serve byte ranges`, { where });
  }
}
export class InvalidTagError extends TiuError {
  constructor(tag: string) {
    super('TAG_INVALID', `invalid tag ${JSON.stringify(tag.slice(0, 140))}`, { tag: tag.slice(0, 140) });
  }
}
export class InvalidRangeError extends TiuError {
  constructor(digest: string, start: number, end: number, size: number) {
    super('RANGE_INVALID', `byte range [${start}, ${end}) is outside blob ${digest} of ${size} bytes`, {
      digest,
      start,
      end,
      size,
    });
  }
}
