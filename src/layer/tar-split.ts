/**
 * tar-split metadata, as containers/storage stores it in a zstd:chunked layer (a skippable
 * frame before the footer): newline-delimited JSON entries from which the exact uncompressed
 * tar can be rebuilt from file contents, so a client that fetched only some files can still
 * check the layer's diff_id.
 *
 * Entries: type 2 ("segment", payload = raw tar bytes: headers and padding, base64) and
 * type 1 ("file": name or name_raw, size, payload = CRC-64/ISO of the content as 8 big-endian
 * bytes, null for empty files), each with its position, in the order the tar has them.
 */
import { bbuf, isUtf8, showPath } from './entry.ts';
import { GrowingBytes } from '../util/growing-bytes.ts';
import { TextPieces } from '../util/text-pieces.ts';

// CRC-64 with the ISO polynomial, reflected, complemented before and after (as Go's hash/crc64),
// on two 32-bit halves so it stays fast without BigInt. Slicing-by-8: eight tables, each split
// into its low and high halves, all in one flat array per half (table t at t * 256), so that
// eight bytes take sixteen lookups and no array of arrays is indexed in the hot loop.
const TABLE_LO = new Int32Array(8 * 256);
const TABLE_HI = new Int32Array(8 * 256);
for (let i = 0; i < 256; i++) {
  let lo = i;
  let hi = 0;
  for (let k = 0; k < 8; k++) {
    const bit = lo & 1;
    lo = (lo >>> 1) | ((hi & 1) << 31);
    hi = hi >>> 1;
    if (bit) hi ^= 0xd8000000;
  }
  TABLE_LO[i] = lo;
  TABLE_HI[i] = hi;
}
for (let t = 1; t < 8; t++) {
  for (let i = 0; i < 256; i++) {
    // T[t][i] = (T[t-1][i] >> 8) ^ T[0][T[t-1][i] & 0xff]
    const plo = TABLE_LO[(t - 1) * 256 + i]!;
    const phi = TABLE_HI[(t - 1) * 256 + i]!;
    const idx = plo & 0xff;
    TABLE_LO[t * 256 + i] = ((plo >>> 8) | ((phi & 0xff) << 24)) ^ TABLE_LO[idx]!;
    TABLE_HI[t * 256 + i] = (phi >>> 8) ^ TABLE_HI[idx]!;
  }
}

/** Whether a typed array view of bytes reads them as little-endian words (x86, arm64, ppc64le; not s390x). */
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

export class Crc64 {
  #lo = -1;
  #hi = -1;
  readonly #wordLoads: boolean;
  /**
   * `wordLoads`: read the data four bytes at a time through an Int32Array view (twice as fast
   * as assembling each word from bytes); only correct on little-endian hosts, the default there.
   */
  constructor(wordLoads = LITTLE_ENDIAN) {
    this.#wordLoads = wordLoads;
  }
  update(b: Uint8Array): this {
    let i = 0;
    if (this.#wordLoads && b.length >= 16) {
      // Bytes up to a 4-byte boundary one at a time, then whole words.
      i = this.#bytes(b, 0, (4 - (b.byteOffset & 3)) & 3);
      i = this.#wordsLittleEndian(b, i);
    } else {
      i = this.#wordsFromBytes(b);
    }
    this.#bytes(b, i, b.length);
    return this;
  }
  /** One byte at a time over b[from, to); returns `to`. */
  #bytes(b: Uint8Array, from: number, to: number): number {
    const L = TABLE_LO;
    const H = TABLE_HI;
    let lo = this.#lo;
    let hi = this.#hi;
    for (let i = from; i < to; i++) {
      const idx = (lo ^ b[i]!) & 0xff;
      lo = ((lo >>> 8) | ((hi & 0xff) << 24)) ^ L[idx]!;
      hi = (hi >>> 8) ^ H[idx]!;
    }
    this.#lo = lo;
    this.#hi = hi;
    return to;
  }
  /** Eight bytes at a time from `from` (4-byte aligned) through an Int32Array view; returns where it stopped. */
  #wordsLittleEndian(b: Uint8Array, from: number): number {
    const words = new Int32Array(b.buffer, b.byteOffset + from, ((b.length - from) >>> 3) << 1);
    let lo = this.#lo;
    let hi = this.#hi;
    for (let w = 0; w < words.length; w += 2) {
      const x = lo ^ words[w]!;
      const y = hi ^ words[w + 1]!;
      lo = eightBytes(TABLE_LO, x, y);
      hi = eightBytes(TABLE_HI, x, y);
    }
    this.#lo = lo;
    this.#hi = hi;
    return from + words.length * 4;
  }
  /** Eight bytes at a time, each word assembled from its bytes (any host); returns where it stopped. */
  #wordsFromBytes(b: Uint8Array): number {
    let lo = this.#lo;
    let hi = this.#hi;
    const n8 = b.length - (b.length % 8);
    for (let i = 0; i < n8; i += 8) {
      const x = lo ^ (b[i]! | (b[i + 1]! << 8) | (b[i + 2]! << 16) | (b[i + 3]! << 24));
      const y = hi ^ (b[i + 4]! | (b[i + 5]! << 8) | (b[i + 6]! << 16) | (b[i + 7]! << 24));
      lo = eightBytes(TABLE_LO, x, y);
      hi = eightBytes(TABLE_HI, x, y);
    }
    this.#lo = lo;
    this.#hi = hi;
    return n8;
  }
  /** 8 bytes, big-endian, as Go's Sum appends them. */
  digest(): Buffer {
    const out = Buffer.alloc(8);
    out.writeUInt32BE(~this.#hi >>> 0, 0);
    out.writeUInt32BE(~this.#lo >>> 0, 4);
    return out;
  }
}

/**
 * One half (low or high 32 bits, by its flat tables `t`) of the CRC after eight bytes: x and y
 * are the state XOR those bytes as little-endian words.
 */
function eightBytes(t: Int32Array, x: number, y: number): number {
  return (
    t[1792 + (x & 0xff)]! ^
    t[1536 + ((x >>> 8) & 0xff)]! ^
    t[1280 + ((x >>> 16) & 0xff)]! ^
    t[1024 + (x >>> 24)]! ^
    t[768 + (y & 0xff)]! ^
    t[512 + ((y >>> 8) & 0xff)]! ^
    t[256 + ((y >>> 16) & 0xff)]! ^
    t[y >>> 24]!
  );
}

/**
 * Lines are handed to the sink in batches of at least this many bytes (a call per line was a
 * zstd call per tar member; the sink's compressor makes the same bytes however its input is
 * cut, as long as nothing flushes it in between).
 */
export const TAR_SPLIT_BATCH = 64 * 1024;

/** Builds the JSON lines while a tar is written; hands them to a sink in batches (TAR_SPLIT_BATCH, the rest at end()). */
export class TarSplitWriter {
  #position = 0;
  /**
   * The raw bytes since the last member, copied into one buffer reused all layer long: a
   * header's Buffer may then be reused at once, and a segment is not a concatenation per member
   * (the larger bench tree: 46,000 of them, ~35 MiB of garbage in a build).
   */
  readonly #segment = new GrowingBytes(4096);
  /**
   * The lines, written as UTF-8 as each is made into one buffer reused all layer long, handed on
   * in batches. Kept as strings until a batch was full, they outlived young-generation
   * collections, and a batch was a Buffer of its own: about half of what a build's content phase
   * left for full collections (the larger bench tree: ~10 MiB; 48 MiB of batches).
   */
  readonly #lines: TextPieces;
  /** `sink`: gets each batch, and must be done with its bytes when it returns (the buffer is reused). */
  constructor(sink: (lines: Buffer) => void) {
    this.#lines = new TextPieces({ size: 2 * TAR_SPLIT_BATCH, handAt: TAR_SPLIT_BATCH, encoding: 'utf8', sink });
  }
  /** Bytes handed to the sink (all of them after end()). */
  get uncompressedSize(): number {
    return this.#lines.handed;
  }
  /** Raw tar bytes that are not file content (headers, padding, the end marker); copied. */
  raw(b: Uint8Array): void {
    this.#segment.append(b);
  }
  // The lines are JSON.stringify's text of { type, name | name_raw, size?, payload, position } in
  // that key order and a newline, spelled out: base64 and numbers need no escaping, a name is
  // JSON.stringify's.
  #flushSegment(): void {
    const payload = this.#segment.bytes.toString('base64');
    this.#lines.write(`{"type":2,"payload":"${payload}","position":${this.#position++}}\n`);
    this.#segment.clear();
  }
  /** A tar member: its name as in the header (binary string), content size and CRC. */
  file(name: string, size: number, crc: Buffer | null): void {
    this.#flushSegment();
    const named = isUtf8(name)
      ? `"name":${JSON.stringify(showPath(name))}`
      : `"name_raw":"${bbuf(name).toString('base64')}"`;
    const sized = size ? `,"size":${size}` : '';
    const payload = crc ? `"${crc.toString('base64')}"` : 'null';
    this.#lines.write(`{"type":1,${named}${sized},"payload":${payload},"position":${this.#position++}}\n`);
  }
  /** After the end-of-archive marker went through raw(). */
  end(): void {
    this.#flushSegment();
    // tar-split records what follows the end marker as one more (here empty) segment.
    this.#lines.write(`{"type":2,"payload":"","position":${this.#position++}}\n`);
    this.#lines.end();
  }
}
