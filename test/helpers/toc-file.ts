/**
 * Test helper: one regular file's content from a zstd:chunked layer by Range, checked against
 * the TOC's sha256 (the device's ranged download is src/deploy/delta/download.ts).
 */
import { zstdDecompressSync } from 'node:zlib';
import { showPath } from '../../src/layer/entry.ts';
import { LayerFormatError } from '../../src/layer/errors.ts';
import type { RangeFetch, TocEntry } from '../../src/layer/toc.ts';
import { sha256 } from '../../src/oci/digest.ts';

export async function fetchTocFile(fetch: RangeFetch, e: TocEntry): Promise<Buffer> {
  if (e.type !== 'reg') throw new LayerFormatError('TOC_INVALID', `${showPath(e.name)} is not a regular file`);
  if (!e.size) return Buffer.alloc(0);
  if (e.offset === undefined || e.endOffset === undefined || e.endOffset <= e.offset || e.digest === undefined) {
    throw new LayerFormatError('TOC_INVALID', `${showPath(e.name)} has no content frame in the table of contents`);
  }
  const frame = await fetch(e.offset, e.endOffset);
  let data: Buffer;
  try {
    data = zstdDecompressSync(frame, { maxOutputLength: e.size });
  } catch (err) {
    throw new LayerFormatError(
      'TOC_INVALID',
      `content frame of ${showPath(e.name)} does not decompress: ${(err as Error).message}`,
    );
  }
  const actual = sha256(data);
  if (data.length !== e.size || actual !== e.digest) {
    throw new LayerFormatError(
      'TOC_CHECKSUM_MISMATCH',
      `content of ${showPath(e.name)} does not match its table-of-contents digest`,
      {
        expected: e.digest,
        actual,
      },
    );
  }
  return data;
}
