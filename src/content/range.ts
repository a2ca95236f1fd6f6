import { InvalidRangeError } from './errors.ts';

/** A range [start, end) must lie inside the blob and not be inverted. */
export function checkRange(size: number, start: number, end: number, digest: string): void {
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start || end > size) {
    throw new InvalidRangeError(digest, start, end, size);
  }
}
