/**
 * zstd patch-from: a file's new content compressed with its old content as the dictionary
 * (raw content dictionary), at level 19 with long-distance matching and a window that covers
 * both, so the new file can copy from anywhere in the old one. Decoding is bounded by the size
 * the signed TOC declares and verified against its digest: a raw dictionary has no ID, so a
 * patch applied to the wrong old file decodes "successfully" into garbage, and only the digest
 * tells.
 */
import { promisify } from 'node:util';
import {
  constants,
  createZstdDecompress,
  zstdCompress,
  zstdDecompress,
  zstdDecompressSync,
  type ZstdDecompress,
  type ZstdOptions,
} from 'node:zlib';
import { zstdFrameSpans } from '../layer/zstd-frames.ts';
import { sha256 } from '../oci/digest.ts';
import { freeNow } from '../util/buffer-pool.ts';
import { PatchError } from './errors.ts';
import { MAX_PATCH_INPUT, PATCH_LEVEL, PATCH_WINDOW_LOG_MAX } from './media.ts';

const compressAsync = promisify(zstdCompress) as (data: Uint8Array, options: ZstdOptions) => Promise<Buffer>;
const decompressAsync = promisify(zstdDecompress) as (data: Uint8Array, options: ZstdOptions) => Promise<Buffer>;

/** zstd's smallest window. */
const WINDOW_LOG_MIN = 10;
/** Magic of a zstd formatted dictionary: zstd would parse such an old file as one, not as content. */
const ZSTD_DICT_MAGIC = 0xec30a437;

/** Window log for `dictSize` bytes of dictionary and `contentSize` of content: both fit, at most 2^26. */
export function patchWindowLog(dictSize: number, contentSize: number): number {
  const total = Math.max(dictSize + contentSize, 1);
  return Math.min(PATCH_WINDOW_LOG_MAX, Math.max(WINDOW_LOG_MIN, Math.ceil(Math.log2(total)) + 1));
}

/** zstd options with `dictionary` as a raw content dictionary (none when empty). */
function withDictionary(dictionary: Uint8Array, params: Record<number, number>): ZstdOptions {
  return dictionary.length
    ? { dictionary: Buffer.from(dictionary.buffer, dictionary.byteOffset, dictionary.length), params }
    : { params };
}

/** Compression options of a patch (and of the index's files frame): deterministic for the same inputs. */
export function patchCompressOptions(dictionary: Uint8Array, contentSize: number): ZstdOptions {
  return withDictionary(dictionary, {
    [constants.ZSTD_c_compressionLevel]: PATCH_LEVEL,
    [constants.ZSTD_c_windowLog]: patchWindowLog(dictionary.length, contentSize),
    [constants.ZSTD_c_enableLongDistanceMatching]: 1,
  });
}

/** Whether a file pair may get a patch: both within MAX_PATCH_INPUT, and the old one usable as a raw dictionary. */
export function canPatch(old: Uint8Array, content: Uint8Array): boolean {
  if (old.length > MAX_PATCH_INPUT || content.length > MAX_PATCH_INPUT) return false;
  return old.length < 4 || Buffer.from(old.buffer, old.byteOffset, 4).readUInt32LE(0) !== ZSTD_DICT_MAGIC;
}

/**
 * `content` as one zstd frame compressed with `dictionary` (patch parameters), on libuv's thread
 * pool, so a bounded pool of these runs in parallel. For a TOC patch (dictionary: FROM's TOC
 * JSONs) there is no input cap: the window stops at 2^26 and matches further back are not used.
 */
export async function compressWithDictionary(content: Uint8Array, dictionary: Uint8Array): Promise<Buffer> {
  return compressAsync(content, patchCompressOptions(dictionary, content.length));
}

/** The patch that turns `old` into `content`; undefined when the pair cannot be patched (`canPatch`). */
export async function encodePatch(old: Uint8Array, content: Uint8Array): Promise<Buffer | undefined> {
  if (!canPatch(old, content)) return undefined;
  return compressWithDictionary(content, old);
}

/**
 * Whether `buf` is exactly one zstd data frame: Node's decoder stops after the first frame, so
 * trailing bytes (or skippable frames) would otherwise go unnoticed.
 */
export function isSingleZstdFrame(buf: Uint8Array): boolean {
  try {
    const spans = zstdFrameSpans(Buffer.from(buf.buffer, buf.byteOffset, buf.length));
    return spans.length === 1 && spans[0]![0] === 0 && spans[0]![1] === buf.length;
  } catch {
    return false;
  }
}

/** Whether a decode failed because the output passed its bound. */
export function isOutputTooLarge(e: unknown): boolean {
  return (e as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE';
}

/** Node's smallest output chunk (zlib's Z_MIN_CHUNK). */
const MIN_CHUNK = 64;

/**
 * Decode a zstd frame compressed with `dictionary` (raw content; none when empty): the window
 * at most 2^26, the output at most `maxSize` bytes (else Node's ERR_BUFFER_TOO_LARGE,
 * `isOutputTooLarge`). Other failures are zstd's errors as Node throws them.
 *
 * The output chunk is one byte more than `maxSize`: the content comes out in one Buffer of its
 * own (freeNow can free it), where Node's 16 KiB default gathers hundreds of chunks and copies
 * them into a second Buffer of the whole size, twice the file held at once. The spare byte ends
 * the decode in one pass (a full chunk makes Node allocate another to look for more) and is
 * where an over-long output shows: past `maxSize` it is ERR_BUFFER_TOO_LARGE.
 */
export function decodeBounded(frame: Uint8Array, dictionary: Uint8Array, maxSize: number): Buffer {
  return zstdDecompressSync(frame, boundedOptions(dictionary, maxSize));
}

function boundedOptions(dictionary: Uint8Array, maxSize: number): ZstdOptions {
  return {
    ...withDictionary(dictionary, { [constants.ZSTD_d_windowLogMax]: PATCH_WINDOW_LOG_MAX }),
    maxOutputLength: Math.max(maxSize, 1),
    chunkSize: Math.max(maxSize + 1, MIN_CHUNK),
  };
}

/** What a patch must decode to, as the signed TOC (or manifest) declares it; `name` is for messages. */
export interface PatchTarget {
  readonly size: number;
  readonly digest: string;
  readonly name: string;
}

/**
 * The content `patch` makes from `old`, verified: one zstd frame, decoding to exactly
 * `expected.size` bytes (never more are produced) with sha256 `expected.digest`. Anything else
 * is PATCH_INVALID: a damaged patch, a patch for another old file, one larger than declared.
 */
export function decodePatch(patch: Uint8Array, old: Uint8Array, expected: PatchTarget): Buffer {
  checkOneFrame(patch, expected);
  let out: Buffer;
  try {
    out = decodeBounded(patch, old, expected.size);
  } catch (e) {
    throw decodeFailure(e, expected);
  }
  return verified(out, expected);
}

/**
 * decodePatch for an old file read for this patch alone: `old` is freed (freeNow) as soon as
 * the decoder has started, for Node's zstd loads a dictionary by copy when the decoder is made,
 * so the old file is not held twice while the new one is decoded (the largest patched files
 * are what an update with a delta artifact peaks on). The decoding runs on libuv's thread pool.
 */
export async function decodePatchFreeingOld(patch: Uint8Array, old: Buffer, expected: PatchTarget): Promise<Buffer> {
  checkOneFrame(patch, expected, old);
  const decoding = decompressAsync(patch, boundedOptions(old, expected.size));
  freeNow(old);
  let out: Buffer;
  try {
    out = await decoding;
  } catch (e) {
    throw decodeFailure(e, expected);
  }
  return verified(out, expected);
}

/**
 * A decoder of `patch` against `old` for a file too large to hold decoded whole: the caller
 * writes `patch` to it and checks the size and digest of what comes out, `chunkSize` at a time.
 * PATCH_INVALID unless the patch is one zstd frame; `old` is freed once the decoder holds its
 * copy, as in decodePatchFreeingOld.
 */
export function openPatchDecoder(
  patch: Uint8Array,
  old: Buffer,
  expected: PatchTarget,
  chunkSize: number,
): ZstdDecompress {
  checkOneFrame(patch, expected, old);
  const d = createZstdDecompress({
    ...withDictionary(old, { [constants.ZSTD_d_windowLogMax]: PATCH_WINDOW_LOG_MAX }),
    chunkSize,
  });
  freeNow(old);
  return d;
}

const detailsOf = (expected: PatchTarget) => ({ name: expected.name, size: expected.size, digest: expected.digest });

/** PATCH_INVALID unless `patch` is one zstd frame; `freeOnFailure` (the old file) is freed before it throws. */
function checkOneFrame(patch: Uint8Array, expected: PatchTarget, freeOnFailure?: Buffer): void {
  if (isSingleZstdFrame(patch)) return;
  if (freeOnFailure) freeNow(freeOnFailure);
  throw new PatchError(`the patch for ${expected.name} is not one zstd frame`, detailsOf(expected));
}

function decodeFailure(e: unknown, expected: PatchTarget): PatchError {
  if (isOutputTooLarge(e))
    return new PatchError(
      `the patch for ${expected.name} decodes to more than ${expected.size} bytes`,
      detailsOf(expected),
    );
  return new PatchError(
    `the patch for ${expected.name} does not decode: ${(e as Error).message}`,
    detailsOf(expected),
    {
      cause: e,
    },
  );
}

/** `out` when it has the size and digest `expected` declares; PATCH_INVALID otherwise. */
function verified(out: Buffer, expected: PatchTarget): Buffer {
  const details = detailsOf(expected);
  if (out.length !== expected.size)
    throw new PatchError(
      `the patch for ${expected.name} decodes to ${out.length} bytes, expected ${expected.size}`,
      details,
    );
  const digest = sha256(out);
  if (digest !== expected.digest)
    throw new PatchError(`the patch for ${expected.name} decodes to ${digest}, expected ${expected.digest}`, {
      ...details,
      actual: digest,
    });
  return out;
}
