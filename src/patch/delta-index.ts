/**
 * The delta index (layers[0] of a delta artifact), two zstd frames back to back:
 *
 *   1. the header JSON, plain zstd:
 *      {"version":1,"from":D,"to":D,"fromTocs":[D…],"tocs":[{"layer":D,"offset":N,"size":N}…],"files":{"size":N}}
 *   2. the files JSON, zstd with the TOC dictionary (`tocDictionary`), `files.size` bytes:
 *      {"files":[{"path":NAME,"old":D,"new":D,"offset":N,"size":N}…]}
 *
 * Offsets and sizes locate patches in the patches blob (layers[1]): TOC patches from 0, then
 * file patches, each starting where the one before ended, the last ending at the blob's end.
 * The index is not signed, so the reader checks every field and bound; the patches it locates
 * are verified against the signed TO when decoded (codec.ts).
 */
import { zstdCompressSync } from 'node:zlib';
import { constants } from 'node:zlib';
import { zstdFrameSpans } from '../layer/zstd-frames.ts';
import { encodeTocJson, parseTocJson } from '../layer/toc-json.ts';
import type { Digest } from '../oci/types.ts';
import { decodeBounded, isOutputTooLarge, patchCompressOptions } from './codec.ts';
import { DeltaIndexError } from './errors.ts';
import {
  DELTA_INDEX_VERSION,
  MAX_DELTA_FILES_BYTES,
  MAX_DELTA_HEADER_BYTES,
  MAX_DELTA_INDEX_BYTES,
  MAX_DELTA_LAYERS,
  PATCH_LEVEL,
} from './media.ts';

/** A patch of one TO layer's TOC JSON (dictionary: FROM's TOC JSONs, concatenated). */
export interface DeltaTocPatch {
  /** TO's layer digest. */
  readonly layer: Digest;
  readonly offset: number;
  readonly size: number;
}

export interface DeltaHeader {
  readonly version: 1;
  /** FROM's platform image manifest digest. */
  readonly from: Digest;
  /** TO's platform image manifest digest. */
  readonly to: Digest;
  /** The manifest-checksum annotation (sha256 of the compressed TOC) of each FROM layer, in FROM's layer order. */
  readonly fromTocs: readonly Digest[];
  readonly tocs: readonly DeltaTocPatch[];
  /** Uncompressed size of the files JSON (frame 2). */
  readonly files: { readonly size: number };
}

/** A patch of one TO regular file (dictionary: FROM's file at the same path, content `old`). */
export interface DeltaFilePatch {
  /** The TOC name, a binary string (src/layer/toc-json.ts). */
  readonly path: string;
  readonly old: Digest;
  readonly new: Digest;
  readonly offset: number;
  readonly size: number;
}

/** What the reader checks the files against. */
export interface DeltaBounds {
  /** Size of the patches blob, as the artifact manifest declares it. */
  readonly patchesSize: number;
  /** Most files the index may list: the number of regular files in TO's TOCs. */
  readonly maxFiles: number;
}

/** The dictionary of the files frame: FROM's TOC JSONs (FROM layer order), then TO's (TO layer order). */
export function tocDictionary(fromJsons: readonly Uint8Array[], toJsons: readonly Uint8Array[]): Buffer {
  return Buffer.concat([...fromJsons, ...toJsons]);
}

/**
 * The index blob. `header` without `version`/`files` (filled in here); `files` in offset order.
 * Deterministic: the same inputs give the same bytes.
 */
export function encodeDeltaIndex(
  header: Pick<DeltaHeader, 'from' | 'to' | 'fromTocs' | 'tocs'>,
  files: readonly DeltaFilePatch[],
  dictionary: Uint8Array,
): Buffer {
  const filesJson = encodeTocJson({
    files: files.map((f) => ({ path: f.path, old: f.old, new: f.new, offset: f.offset, size: f.size })),
  });
  const headerJson = Buffer.from(
    JSON.stringify({
      version: DELTA_INDEX_VERSION,
      from: header.from,
      to: header.to,
      fromTocs: header.fromTocs,
      tocs: header.tocs.map((t) => ({ layer: t.layer, offset: t.offset, size: t.size })),
      files: { size: filesJson.length },
    }),
  );
  return Buffer.concat([
    zstdCompressSync(headerJson, { params: { [constants.ZSTD_c_compressionLevel]: PATCH_LEVEL } }),
    zstdCompressSync(filesJson, patchCompressOptions(dictionary, filesJson.length)),
  ]);
}

const invalid = (why: string, details: Record<string, unknown> = {}) =>
  new DeltaIndexError('DELTA_INDEX_INVALID', `invalid delta index: ${why}`, details);

/** The two frames of the index, exactly: nothing before, between or after them. */
function indexFrames(blob: Buffer): [Buffer, Buffer] {
  if (blob.length > MAX_DELTA_INDEX_BYTES)
    throw new DeltaIndexError(
      'DELTA_INDEX_TOO_LARGE',
      `the delta index is ${blob.length} bytes, more than the limit of ${MAX_DELTA_INDEX_BYTES}`,
    );
  let spans: [number, number][];
  try {
    spans = zstdFrameSpans(blob);
  } catch (e) {
    throw invalid(`not zstd frames: ${(e as Error).message}`);
  }
  const [a, b] = spans;
  if (spans.length !== 2 || !a || !b || a[0] !== 0 || b[0] !== a[1] || b[1] !== blob.length)
    throw invalid(`expected two zstd frames and nothing else, found ${spans.length} frames`);
  return [blob.subarray(a[0], a[1]), blob.subarray(b[0], b[1])];
}

type Json = Record<string, unknown>;

function object(v: unknown, what: string, keys: readonly string[]): Json {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw invalid(`${what} is not an object`);
  const o = v as Json;
  for (const k of Object.keys(o))
    if (!keys.includes(k)) throw invalid(`${what} has an unknown field ${JSON.stringify(k)}`);
  for (const k of keys) if (!(k in o)) throw invalid(`${what} has no ${k}`);
  return o;
}

function digest(v: unknown, what: string): Digest {
  if (typeof v !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(v)) throw invalid(`${what} is not a sha256 digest`);
  return v as Digest;
}

function count(v: unknown, what: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max)
    throw invalid(`${what} is not a whole number from ${min} to ${max}`);
  return v;
}

function array(v: unknown, what: string, max: number): unknown[] {
  if (!Array.isArray(v)) throw invalid(`${what} is not an array`);
  if (v.length > max) throw invalid(`${what} has ${v.length} items, more than ${max}`);
  return v as unknown[];
}

/** A patch's place: `offset` must be `at` (patches are contiguous), the end within the patches blob. */
function place(o: Json, what: string, at: number, patchesSize: number): { offset: number; size: number } {
  const offset = count(o.offset, `${what} offset`, 0, Number.MAX_SAFE_INTEGER);
  const size = count(o.size, `${what} size`, 1, Number.MAX_SAFE_INTEGER);
  if (offset !== at) throw invalid(`${what} starts at ${offset}, expected ${at} (patches follow each other)`);
  if (offset + size > patchesSize)
    throw invalid(`${what} ends at ${offset + size}, past the patches blob (${patchesSize} bytes)`);
  return { offset, size };
}

/** The end of the TOC patches: where the file patches begin. */
export function tocPatchesEnd(header: DeltaHeader): number {
  const last = header.tocs[header.tocs.length - 1];
  return last ? last.offset + last.size : 0;
}

/** Parse and check frame 1 of the index against the patches blob's size. DELTA_INDEX_INVALID / _TOO_LARGE. */
export function parseDeltaHeader(blob: Buffer, patchesSize: number): DeltaHeader {
  const [frame] = indexFrames(blob);
  let json: Buffer;
  try {
    json = decodeBounded(frame, Buffer.alloc(0), MAX_DELTA_HEADER_BYTES);
  } catch (e) {
    if (isOutputTooLarge(e))
      throw new DeltaIndexError(
        'DELTA_INDEX_TOO_LARGE',
        `the delta index header is larger than the limit of ${MAX_DELTA_HEADER_BYTES} bytes`,
      );
    throw invalid(`the header frame does not decode: ${(e as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(json.toString('utf8'));
  } catch (e) {
    throw invalid(`the header is not JSON: ${(e as Error).message}`);
  }
  const h = object(parsed, 'the header', ['version', 'from', 'to', 'fromTocs', 'tocs', 'files']);
  if (h.version !== DELTA_INDEX_VERSION)
    throw invalid(`version ${JSON.stringify(h.version)} is not ${DELTA_INDEX_VERSION}`);
  const from = digest(h.from, 'from');
  const to = digest(h.to, 'to');
  const fromTocs = array(h.fromTocs, 'fromTocs', MAX_DELTA_LAYERS).map((d, i) => digest(d, `fromTocs[${i}]`));
  let at = 0;
  const layers = new Set<string>();
  const tocs = array(h.tocs, 'tocs', MAX_DELTA_LAYERS).map((t, i): DeltaTocPatch => {
    const what = `tocs[${i}]`;
    const o = object(t, what, ['layer', 'offset', 'size']);
    const layer = digest(o.layer, `${what} layer`);
    if (layers.has(layer)) throw invalid(`${what} names layer ${layer} a second time`);
    layers.add(layer);
    const p = place(o, what, at, patchesSize);
    at = p.offset + p.size;
    return { layer, ...p };
  });
  const f = object(h.files, 'files', ['size']);
  const files = { size: count(f.size, 'files size', 0, MAX_DELTA_FILES_BYTES) };
  return { version: DELTA_INDEX_VERSION, from, to, fromTocs, tocs, files };
}

/** Most bytes of a file name (PATH_MAX). */
const MAX_PATH_BYTES = 4096;

/**
 * Parse and check frame 2 of the index (decoded with `dictionary`, `tocDictionary` of the
 * TOCs the header names): at most `bounds.maxFiles` entries, each path once, patches
 * contiguous after the TOC patches and ending exactly at the patches blob's end.
 */
export function parseDeltaFiles(
  blob: Buffer,
  header: DeltaHeader,
  dictionary: Uint8Array,
  bounds: DeltaBounds,
): DeltaFilePatch[] {
  const [, frame] = indexFrames(blob);
  let json: Buffer;
  try {
    json = decodeBounded(frame, dictionary, header.files.size);
  } catch (e) {
    if (isOutputTooLarge(e))
      throw invalid(`the files frame decodes to more than the ${header.files.size} bytes the header declares`);
    throw invalid(`the files frame does not decode: ${(e as Error).message}`);
  }
  if (json.length !== header.files.size)
    throw invalid(`the files frame decodes to ${json.length} bytes, the header declares ${header.files.size}`);
  let parsed: unknown;
  try {
    parsed = parseTocJson(json);
  } catch (e) {
    throw invalid(`the files frame is not JSON: ${(e as Error).message}`);
  }
  const list = array(object(parsed, 'the files frame', ['files']).files, 'files', bounds.maxFiles);
  let at = tocPatchesEnd(header);
  const paths = new Set<string>();
  const files = list.map((x, i): DeltaFilePatch => {
    const what = `files[${i}]`;
    const o = object(x, what, ['path', 'old', 'new', 'offset', 'size']);
    const path = o.path;
    if (typeof path !== 'string' || path === '' || path.length > MAX_PATH_BYTES || path.includes('\0'))
      throw invalid(`${what} path is not a file name of 1 to ${MAX_PATH_BYTES} bytes without NUL`);
    if (paths.has(path)) throw invalid(`${what} names ${JSON.stringify(path)} a second time`);
    paths.add(path);
    const old = digest(o.old, `${what} old`);
    const neu = digest(o.new, `${what} new`);
    if (old === neu) throw invalid(`${what} patches ${old} into itself`);
    const p = place(o, what, at, bounds.patchesSize);
    at = p.offset + p.size;
    return { path, old, new: neu, ...p };
  });
  if (at !== bounds.patchesSize)
    throw invalid(`the patches end at ${at}, but the patches blob has ${bounds.patchesSize} bytes`);
  return files;
}
