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
// on two 32-bit halves so it stays fast without BigInt.
const TAB_LO = new Uint32Array(256);
const TAB_HI = new Uint32Array(256);
for (let i = 0; i < 256; i++) {
  let lo = i;
  let hi = 0;
  for (let k = 0; k < 8; k++) {
    const bit = lo & 1;
    lo = ((lo >>> 1) | ((hi & 1) << 31)) >>> 0;
    hi = hi >>> 1;
    if (bit) hi = (hi ^ 0xd8000000) >>> 0;
  }
  TAB_LO[i] = lo;
  TAB_HI[i] = hi;
}

export class Crc64 {
  #lo = 0xffffffff;
  #hi = 0xffffffff;
  update(b: Uint8Array): this {
    let lo = this.#lo;
    let hi = this.#hi;
    for (let i = 0; i < b.length; i++) {
      const idx = (lo ^ b[i]!) & 0xff;
      lo = ((lo >>> 8) | ((hi & 0xff) << 24)) ^ TAB_LO[idx]!;
      hi = (hi >>> 8) ^ TAB_HI[idx]!;
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
