/**
 * The table of contents of a zstd:chunked layer (containers/storage's format, which tiu's zstd
 * layers follow):
 *
 *   [zstd frames of the tar: tar headers (with the previous file's padding), and one frame per
 *    regular file's content]
 *   [skippable frame: the TOC JSON, zstd-compressed]
 *   [skippable frame: tar-split data, zstd-compressed]
 *   [skippable frame of 64 bytes: the footer]
 *
 * Footer (little-endian u64s): TOC offset, TOC compressed length, TOC uncompressed length,
 * manifest type (1), tar-split offset, its compressed and uncompressed lengths, then the
 * 8 magic bytes "GNUlInUx". Offsets point past the 8-byte skippable frame header.
 * Layer annotations repeat the positions and carry the sha256 of the compressed TOC, so a
 * signed manifest pins the TOC, and the TOC pins every file by sha256.
 *
 * Entry names are the tar header names, byte for byte (directories with their trailing `/`),
 * as binary strings; toc-json.ts writes and reads them the way containers/storage does, so a
 * name that is not UTF-8 travels as its raw bytes.
 */
import { sha256 } from '../oci/digest.ts';
import { createZstdDecompress, zstdDecompressSync } from 'node:zlib';
import { isTiuError } from '../errors.ts';
import { LayerFormatError } from './errors.ts';
import { mtimeParts, sortedXattrs, type EntryType, type TreeEntry } from './entry.ts';
import { encodeTocJson, TocJsonStream } from './toc-json.ts';

export const ZstdChunkedAnnotation = {
  ManifestChecksum: 'io.github.containers.zstd-chunked.manifest-checksum',
  ManifestPosition: 'io.github.containers.zstd-chunked.manifest-position',
  TarSplitPosition: 'io.github.containers.zstd-chunked.tarsplit-position',
} as const;

export const SKIPPABLE_MAGIC = 0x184d2a50;
export const SKIPPABLE_HEADER = 8;
export const FOOTER_SIZE = 64;
export const FOOTER_MAGIC = Buffer.from('GNUlInUx', 'latin1');
export const MANIFEST_TYPE_CRFS = 1;
/** A TOC larger than this (uncompressed) is refused. */
export const MAX_TOC_BYTES = 256 * 1024 * 1024;

export type TocEntryType = EntryType | 'chunk';

/** One TOC entry. `name` and `linkName` are binary strings (toc-json.ts). */
export interface TocEntry {
  type: TocEntryType;
  name: string;
  linkName?: string;
  mode?: number;
  size?: number;
  uid?: number;
  gid?: number;
  /** RFC 3339 with nanoseconds. */
  modtime?: string;
  devMajor?: number;
  devMinor?: number;
  /** name -> base64 of the value. */
  xattrs?: Record<string, string>;
  /** sha256:<hex> of the file content; absent for empty files. */
  digest?: string;
  /** [offset, endOffset) of the file content's zstd frame in the blob. */
  offset?: number;
  endOffset?: number;
  chunkSize?: number;
  chunkOffset?: number;
  chunkDigest?: string;
  chunkType?: string;
}

export interface Toc {
  version: 1;
  entries: TocEntry[];
  tarSplitDigest?: string;
}

export interface Footer {
  offset: number;
  lengthCompressed: number;
  lengthUncompressed: number;
  manifestType: number;
  offsetTarSplit: number;
  lengthCompressedTarSplit: number;
  lengthUncompressedTarSplit: number;
}

export function skippableFrame(data: Uint8Array): Buffer {
  const h = Buffer.alloc(SKIPPABLE_HEADER);
  h.writeUInt32LE(SKIPPABLE_MAGIC, 0);
  h.writeUInt32LE(data.length, 4);
  return Buffer.concat([h, data]);
}

export function encodeFooter(f: Footer): Buffer {
  const b = Buffer.alloc(FOOTER_SIZE);
  const fields = [
    f.offset,
    f.lengthCompressed,
    f.lengthUncompressed,
    f.manifestType,
    f.offsetTarSplit,
    f.lengthCompressedTarSplit,
    f.lengthUncompressedTarSplit,
  ];
  fields.forEach((v, i) => b.writeBigUInt64LE(BigInt(v), i * 8));
  FOOTER_MAGIC.copy(b, 56);
  return b;
}

/** Parse the footer from the last bytes of a blob (the whole 72-byte skippable frame). */
export function parseFooter(frame: Buffer): Footer {
  if (
    frame.length !== SKIPPABLE_HEADER + FOOTER_SIZE ||
    frame.readUInt32LE(0) !== SKIPPABLE_MAGIC ||
    frame.readUInt32LE(4) !== FOOTER_SIZE
  ) {
    throw new LayerFormatError('TOC_INVALID', 'the blob does not end in a zstd:chunked footer');
  }
  const b = frame.subarray(SKIPPABLE_HEADER);
  if (!b.subarray(56).equals(FOOTER_MAGIC))
    throw new LayerFormatError('TOC_INVALID', 'the footer has no zstd:chunked magic');
  const n = (i: number) => {
    const v = b.readBigUInt64LE(i * 8);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new LayerFormatError('TOC_INVALID', 'footer value out of range');
    return Number(v);
  };
  return {
    offset: n(0),
    lengthCompressed: n(1),
    lengthUncompressed: n(2),
    manifestType: n(3),
    offsetTarSplit: n(4),
    lengthCompressedTarSplit: n(5),
    lengthUncompressedTarSplit: n(6),
  };
}

/** `offset:length:uncompressed:type` of the manifest-position annotation. */
export function parsePosition(value: string): {
  offset: number;
  lengthCompressed: number;
  lengthUncompressed: number;
  manifestType: number;
} {
  const parts = value.split(':');
  const nums = parts.map((p) => (/^\d+$/.test(p) ? Number(p) : NaN));
  if (nums.length !== 4 || nums.some((x) => !Number.isSafeInteger(x)))
    throw new LayerFormatError('TOC_INVALID', `bad manifest-position annotation ${JSON.stringify(value)}`);
  return { offset: nums[0]!, lengthCompressed: nums[1]!, lengthUncompressed: nums[2]!, manifestType: nums[3]! };
}

/**
 * Go's time.Time JSON form: RFC 3339, fraction with trailing zeros dropped. Undefined for times
 * JavaScript dates can't express (a tar may carry any number); the entry then has no modtime.
 */
export function formatModtime(sec: number, nsec: number): string | undefined {
  const d = new Date(sec * 1000);
  if (Number.isNaN(d.getTime()) || d.getUTCFullYear() < 0 || d.getUTCFullYear() > 9999) return undefined;
  const base = d.toISOString().replace(/\.\d{3}Z$/, '');
  const frac = nsec ? '.' + String(nsec).padStart(9, '0').replace(/0+$/, '') : '';
  return `${base}${frac}Z`;
}

/** Bytes [start, end) of a blob. */
export type RangeFetch = (start: number, end: number) => Promise<Buffer>;

const TYPES: readonly string[] = ['reg', 'hardlink', 'symlink', 'dir', 'char', 'block', 'fifo', 'chunk'];

const tocError = (why: string) => new LayerFormatError('TOC_INVALID', `invalid table of contents: ${why}`);

/** One entry of a TOC document, schema-checked. */
function checkEntry(e: unknown, i: number): TocEntry {
  const bad = tocError;
  if (typeof e !== 'object' || e === null) throw bad(`entry ${i} is not an object`);
  const x = e as Record<string, unknown>;
  if (typeof x.type !== 'string' || !TYPES.includes(x.type)) throw bad(`entry ${i} has type ${JSON.stringify(x.type)}`);
  if (typeof x.name !== 'string') throw bad(`entry ${i} has no name`);
  for (const k of NUMBER_FIELDS) {
    if (x[k] !== undefined && (typeof x[k] !== 'number' || !Number.isSafeInteger(x[k]) || x[k] < 0))
      throw bad(`entry ${i} (${x.name}) has a bad ${k}`);
  }
  for (const k of STRING_FIELDS) {
    if (x[k] !== undefined && typeof x[k] !== 'string') throw bad(`entry ${i} (${x.name}) has a bad ${k}`);
  }
  if (x.digest !== undefined && !/^sha256:[0-9a-f]{64}$/.test(x.digest as string))
    throw bad(`entry ${i} (${x.name}) has a bad digest`);
  if (x.xattrs !== undefined) {
    if (typeof x.xattrs !== 'object' || x.xattrs === null || Object.values(x.xattrs).some((s) => typeof s !== 'string'))
      throw bad(`entry ${i} (${x.name}) has bad xattrs`);
  }
  return x as unknown as TocEntry;
}

const NUMBER_FIELDS = [
  'mode',
  'size',
  'uid',
  'gid',
  'devMajor',
  'devMinor',
  'offset',
  'endOffset',
  'chunkSize',
  'chunkOffset',
];
const STRING_FIELDS = ['linkName', 'modtime', 'digest', 'chunkDigest', 'chunkType'];

/**
 * Read a TOC from its JSON bytes (verified by the caller: a checksum or a signed digest) entry
 * by entry, each schema-checked before `onEntry` gets it; nothing keeps the document's text or
 * its array. The rest of the TOC comes back. A TOC that turns out invalid after some entries
 * went out throws then: the caller uses what it collected only when this returns.
 */
export function forEachTocEntry(json: Uint8Array, onEntry: (e: TocEntry, index: number) => void): Omit<Toc, 'entries'> {
  const read = new TocReading(onEntry);
  read.push(Buffer.from(json.buffer, json.byteOffset, json.length));
  return read.end();
}

/**
 * forEachTocEntry over the compressed TOC (verified by the caller against the manifest-checksum),
 * decompressed piece by piece: not even the JSON bytes are held whole.
 */
export async function forEachCompressedTocEntry(
  compressed: Buffer,
  lengthUncompressed: number,
  onEntry: (e: TocEntry, index: number) => void,
): Promise<Omit<Toc, 'entries'>> {
  const read = new TocReading(onEntry);
  const z = createZstdDecompress();
  z.end(compressed);
  let total = 0;
  try {
    for await (const chunk of z) {
      total += (chunk as Buffer).length;
      if (total > lengthUncompressed) break;
      read.push(chunk as Buffer);
    }
  } catch (e) {
    if (isTiuError(e)) throw e;
    throw new LayerFormatError('TOC_INVALID', `table of contents does not decompress: ${(e as Error).message}`);
  } finally {
    z.destroy();
  }
  if (total !== lengthUncompressed)
    throw new LayerFormatError(
      'TOC_INVALID',
      total > lengthUncompressed
        ? `table of contents is larger than the ${lengthUncompressed} bytes its position declares`
        : `table of contents is ${total} bytes, expected ${lengthUncompressed}`,
    );
  return read.end();
}

/** A TOC document read as its bytes come: entries checked one by one, then the rest. */
class TocReading {
  readonly #stream: TocJsonStream;

  constructor(onEntry: (e: TocEntry, index: number) => void) {
    this.#stream = new TocJsonStream((e, i) => onEntry(checkEntry(e, i), i));
  }

  push(bytes: Buffer): void {
    notJson(() => this.#stream.push(bytes));
  }

  end(): Omit<Toc, 'entries'> {
    const read = notJson(() => this.#stream.end());
    const version = read.rest.version;
    if (version !== 1) throw tocError(`version ${JSON.stringify(version)} is not 1`);
    if (read.entries === undefined) throw tocError('no entries array');
    return read.rest as unknown as Omit<Toc, 'entries'>;
  }
}

function notJson<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof SyntaxError)
      throw new LayerFormatError('TOC_INVALID', `table of contents is not JSON: ${e.message}`);
    throw e;
  }
}

/**
 * Fetch and parse the TOC of a zstd:chunked blob of `blobSize` bytes. Where the layer's
 * annotations are given, the TOC position comes from them and the compressed TOC must match
 * the manifest-checksum annotation (pass them whenever the manifest is trusted: that is what
 * makes the TOC trustworthy). Without annotations the footer is read, and nothing is verified.
 */
export async function readTocFromFooter(
  fetch: RangeFetch,
  blobSize: number,
  annotations?: Record<string, string>,
): Promise<Toc> {
  const { compressed, lengthUncompressed } = await readCompressedToc(fetch, blobSize, annotations);
  let json: Buffer;
  try {
    json = zstdDecompressSync(compressed, { maxOutputLength: Math.max(lengthUncompressed, 1) });
  } catch (e) {
    throw new LayerFormatError('TOC_INVALID', `table of contents does not decompress: ${(e as Error).message}`);
  }
  if (json.length !== lengthUncompressed)
    throw new LayerFormatError(
      'TOC_INVALID',
      `table of contents is ${json.length} bytes, expected ${lengthUncompressed}`,
    );
  return parseToc(json);
}

/**
 * The compressed TOC of a blob, found and verified as readTocFromFooter does, with the length
 * its JSON must have (forEachCompressedTocEntry reads it without ever holding that JSON).
 */
export async function readCompressedToc(
  fetch: RangeFetch,
  blobSize: number,
  annotations?: Record<string, string>,
): Promise<{ compressed: Buffer; lengthUncompressed: number }> {
  let pos: { offset: number; lengthCompressed: number; lengthUncompressed: number; manifestType: number };
  const position = annotations?.[ZstdChunkedAnnotation.ManifestPosition];
  if (position !== undefined) {
    pos = parsePosition(position);
  } else {
    const size = SKIPPABLE_HEADER + FOOTER_SIZE;
    if (blobSize < size)
      throw new LayerFormatError('TOC_INVALID', `a blob of ${blobSize} bytes is too small for a zstd:chunked footer`);
    pos = parseFooter(await fetch(blobSize - size, blobSize));
  }
  if (pos.manifestType !== MANIFEST_TYPE_CRFS)
    throw new LayerFormatError('TOC_INVALID', `unknown TOC type ${pos.manifestType}`);
  if (pos.lengthUncompressed > MAX_TOC_BYTES || pos.lengthCompressed > MAX_TOC_BYTES) {
    throw new LayerFormatError(
      'TOC_TOO_LARGE',
      `table of contents of ${pos.lengthUncompressed} bytes exceeds the limit of ${MAX_TOC_BYTES}`,
    );
  }
  if (pos.offset < SKIPPABLE_HEADER || pos.offset + pos.lengthCompressed > blobSize)
    throw new LayerFormatError('TOC_INVALID', 'TOC position lies outside the blob');
  const compressed = await fetch(pos.offset, pos.offset + pos.lengthCompressed);
  if (compressed.length !== pos.lengthCompressed)
    throw new LayerFormatError(
      'TOC_INVALID',
      `fetched ${compressed.length} TOC bytes, expected ${pos.lengthCompressed}`,
    );
  const expected = annotations?.[ZstdChunkedAnnotation.ManifestChecksum];
  if (annotations && expected === undefined)
    throw new LayerFormatError('TOC_INVALID', 'the layer has no manifest-checksum annotation');
  if (expected !== undefined) {
    const actual = sha256(compressed);
    if (actual !== expected)
      throw new LayerFormatError(
        'TOC_CHECKSUM_MISMATCH',
        `table of contents ${actual} does not match the layer annotation ${expected}`,
        { expected, actual },
      );
  }
  return { compressed, lengthUncompressed: pos.lengthUncompressed };
}

/** A TOC from its JSON bytes (verified by the caller: a checksum or a signed digest), schema-checked. */
export function parseToc(json: Uint8Array): Toc {
  const entries: TocEntry[] = [];
  const rest = forEachTocEntry(json, (e) => entries.push(e));
  return { ...rest, entries };
}

/** The TOC entry of a tree entry, named as its tar header names it (offsets and digest are the writer's). */
export function tocEntryOf(e: TreeEntry): TocEntry {
  const t: TocEntry = { type: e.type, name: e.type === 'dir' ? e.path + '/' : e.path };
  if (e.linkname !== undefined) t.linkName = e.linkname;
  if (e.mode) t.mode = e.mode;
  if (e.type === 'reg' && e.size) t.size = e.size;
  if (e.uid) t.uid = e.uid;
  if (e.gid) t.gid = e.gid;
  const { sec, nsec } = mtimeParts(e.mtimeNs);
  const modtime = formatModtime(sec, nsec);
  if (modtime !== undefined) t.modtime = modtime;
  if (e.type === 'char' || e.type === 'block') {
    if (e.devmajor) t.devMajor = e.devmajor;
    if (e.devminor) t.devMinor = e.devminor;
  }
  const xattrs = sortedXattrs(e.xattrs);
  if (xattrs.length) t.xattrs = Object.fromEntries(xattrs.map(([k, v]) => [k, v.toString('base64')]));
  return t;
}

/** The TOC as the bytes of its JSON (names as raw bytes, toc-json.ts). */
export function encodeToc(toc: Toc): Buffer {
  return encodeTocJson(toc);
}
