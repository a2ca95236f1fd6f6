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
import { bbuf, isUtf8 } from './entry.ts';

// CRC-64 with the ISO polynomial, reflected, complemented before and after (as Go's hash/crc64),
// on two 32-bit halves so it stays fast without BigInt; slicing-by-8 (eight tables, eight bytes
// a step) for the bulk of the data, byte at a time for the rest.
const TAB_LO = Array.from({ length: 8 }, () => new Uint32Array(256));
const TAB_HI = Array.from({ length: 8 }, () => new Uint32Array(256));
for (let i = 0; i < 256; i++) {
  let lo = i;
  let hi = 0;
  for (let k = 0; k < 8; k++) {
    const bit = lo & 1;
    lo = ((lo >>> 1) | ((hi & 1) << 31)) >>> 0;
    hi = hi >>> 1;
    if (bit) hi = (hi ^ 0xd8000000) >>> 0;
  }
  TAB_LO[0]![i] = lo;
  TAB_HI[0]![i] = hi;
}
for (let t = 1; t < 8; t++) {
  for (let i = 0; i < 256; i++) {
    // T[t][i] = (T[t-1][i] >> 8) ^ T[0][T[t-1][i] & 0xff]
    const plo = TAB_LO[t - 1]![i]!;
    const phi = TAB_HI[t - 1]![i]!;
    const idx = plo & 0xff;
    TAB_LO[t]![i] = (((plo >>> 8) | ((phi & 0xff) << 24)) ^ TAB_LO[0]![idx]!) >>> 0;
    TAB_HI[t]![i] = ((phi >>> 8) ^ TAB_HI[0]![idx]!) >>> 0;
  }
}
const [L0, L1, L2, L3, L4, L5, L6, L7] = TAB_LO as [Uint32Array, ...Uint32Array[]] as Uint32Array[];
const [H0, H1, H2, H3, H4, H5, H6, H7] = TAB_HI as [Uint32Array, ...Uint32Array[]] as Uint32Array[];

/**
 * One half (low or high 32 bits, by its tables t0..t7) of the CRC after eight bytes: x and y are
 * the state XOR those bytes. The tables come as separate arguments, not an array of them: this is
 * the hot loop of every build, and indexing an array of tables made it 2.5 times slower.
 */
function eightBytes(
  t0: Uint32Array,
  t1: Uint32Array,
  t2: Uint32Array,
  t3: Uint32Array,
  t4: Uint32Array,
  t5: Uint32Array,
  t6: Uint32Array,
  t7: Uint32Array,
  x: number,
  y: number,
): number {
  return (
    t7[x & 0xff]! ^
    t6[(x >>> 8) & 0xff]! ^
    t5[(x >>> 16) & 0xff]! ^
    t4[x >>> 24]! ^
    t3[y & 0xff]! ^
    t2[(y >>> 8) & 0xff]! ^
    t1[(y >>> 16) & 0xff]! ^
    t0[y >>> 24]!
  );
}

export class Crc64 {
  #lo = 0xffffffff;
  #hi = 0xffffffff;
  update(b: Uint8Array): this {
    let lo = this.#lo;
    let hi = this.#hi;
    let i = 0;
    const n8 = b.length - (b.length % 8);
    for (; i < n8; i += 8) {
      const x = lo ^ (b[i]! | (b[i + 1]! << 8) | (b[i + 2]! << 16) | (b[i + 3]! << 24));
      const y = hi ^ (b[i + 4]! | (b[i + 5]! << 8) | (b[i + 6]! << 16) | (b[i + 7]! << 24));
      lo = eightBytes(L0!, L1!, L2!, L3!, L4!, L5!, L6!, L7!, x, y);
      hi = eightBytes(H0!, H1!, H2!, H3!, H4!, H5!, H6!, H7!, x, y);
    }
    for (; i < b.length; i++) {
      const idx = (lo ^ b[i]!) & 0xff;
      lo = ((lo >>> 8) | ((hi & 0xff) << 24)) ^ L0![idx]!;
      hi = (hi >>> 8) ^ H0![idx]!;
    }
    this.#lo = lo >>> 0;
    this.#hi = hi >>> 0;
    return this;
  }
  /** 8 bytes, big-endian, as Go's Sum appends them. */
  digest(): Buffer {
    const out = Buffer.alloc(8);
    out.writeUInt32BE(~this.#hi >>> 0, 0);
    out.writeUInt32BE(~this.#lo >>> 0, 4);
    return out;
  }
}

/** Builds the JSON lines while a tar is written; hand it to a sink in chunks. */
export class TarSplitWriter {
  #position = 0;
  #segment: Buffer[] = [];
  readonly #sink: (line: Buffer) => void;
  uncompressedSize = 0;
  constructor(sink: (line: Buffer) => void) {
    this.#sink = sink;
  }
  #emit(obj: Record<string, unknown>): void {
    const line = Buffer.from(JSON.stringify(obj) + '\n', 'utf8');
    this.uncompressedSize += line.length;
    this.#sink(line);
  }
  /** Raw tar bytes that are not file content (headers, padding, the end marker). */
  raw(b: Buffer): void {
    if (b.length) this.#segment.push(b);
  }
  #flushSegment(force = false): void {
    if (this.#segment.length === 0 && !force) return;
    this.#emit({ type: 2, payload: Buffer.concat(this.#segment).toString('base64'), position: this.#position++ });
    this.#segment = [];
  }
  /** A tar member: its name as in the header (binary string), content size and CRC. */
  file(name: string, size: number, crc: Buffer | null): void {
    this.#flushSegment(true);
    const e: Record<string, unknown> = { type: 1 };
    if (isUtf8(name)) e.name = bbuf(name).toString('utf8');
    else e.name_raw = bbuf(name).toString('base64');
    if (size) e.size = size;
    e.payload = crc ? crc.toString('base64') : null;
    e.position = this.#position++;
    this.#emit(e);
  }
  /** After the end-of-archive marker went through raw(). */
  end(): void {
    this.#flushSegment(true);
    // tar-split records what follows the end marker as one more (here empty) segment.
    this.#emit({ type: 2, payload: '', position: this.#position++ });
  }
}
