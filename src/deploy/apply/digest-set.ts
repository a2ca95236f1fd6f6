/**
 * A set of sha256 digests, each held as its 32 raw bytes in one growing buffer and found
 * through an open-addressing table of slot numbers: ~40 bytes a digest where a Set of
 * `sha256:<hex>` strings took ~110 (the string and its slot). The plan (which content it
 * writes first) and the delta's content store hold one digest per file of an image.
 *
 * Members are numbered in the order they were added (`add` returns the number), so a caller
 * can keep a value per digest in a plain array beside it.
 */
import { freeArray, resized } from '../../util/typed-resize.ts';
import { writeDigestAt } from './digest-bytes.ts';

const DIGEST_BYTES = 32;
const SHA256 = /^sha256:[0-9a-f]{64}$/;
const EMPTY = -1;

/** Is this `sha256:<64 lowercase hex>` (the only digest text a TOC may give a file)? */
export function isSha256(digest: string): boolean {
  return SHA256.test(digest);
}

export class DigestSet {
  #bytes = Buffer.alloc(DIGEST_BYTES * 256);
  /** Member numbers by hash position (EMPTY: free); its length is a power of two, at most half full. */
  #table = new Int32Array(512).fill(EMPTY);
  #size = 0;
  /** The digest looked up, as bytes (one buffer for every call). */
  readonly #probe = Buffer.alloc(DIGEST_BYTES);

  get size(): number {
    return this.#size;
  }

  has(digest: string): boolean {
    return this.indexOf(digest) !== EMPTY;
  }

  /** The member number of `digest`, or -1 (also for text that is not a sha256 digest). */
  indexOf(digest: string): number {
    if (!this.#parse(digest)) return EMPTY;
    return this.#table[this.#position()]!;
  }

  /** Add `digest` (`sha256:<64 lowercase hex>`, else a TypeError); its member number, new or not. */
  add(digest: string): number {
    if (!this.#parse(digest)) throw new TypeError(`not a sha256 digest: ${JSON.stringify(digest.slice(0, 80))}`);
    const pos = this.#position();
    const found = this.#table[pos]!;
    if (found !== EMPTY) return found;
    const n = this.#size++;
    // Moved, not copied (util/typed-resize.ts): the superseded buffers and tables of a first
    // install's plan (every file's digest, ~1.3 MiB of them) stayed in RSS until a full collection.
    if ((n + 1) * DIGEST_BYTES > this.#bytes.length) this.#bytes = resized(this.#bytes, this.#bytes.length * 2);
    this.#probe.copy(this.#bytes, n * DIGEST_BYTES);
    this.#table[pos] = n;
    if (this.#size * 2 > this.#table.length) this.#rehash();
    return n;
  }

  /** `sha256:<hex>` of member `n`. */
  digestAt(n: number): string {
    if (!(n >= 0 && n < this.#size)) throw new RangeError(`no member ${n}`);
    return `sha256:${this.#bytes.toString('hex', n * DIGEST_BYTES, (n + 1) * DIGEST_BYTES)}`;
  }

  #parse(digest: string): boolean {
    if (!SHA256.test(digest)) return false;
    writeDigestAt(this.#probe, 0, digest);
    return true;
  }

  /** Where the probe is in the table, or the free position it would take (linear probing). */
  #position(): number {
    const mask = this.#table.length - 1;
    // sha256 bytes are uniform: the first four are as good a hash as any.
    for (let pos = this.#probe.readUInt32LE(0) & mask; ; pos = (pos + 1) & mask) {
      const n = this.#table[pos]!;
      if (n === EMPTY) return pos;
      if (this.#bytes.compare(this.#probe, 0, DIGEST_BYTES, n * DIGEST_BYTES, (n + 1) * DIGEST_BYTES) === 0) return pos;
    }
  }

  #rehash(): void {
    const table = new Int32Array(this.#table.length * 2).fill(EMPTY);
    const mask = table.length - 1;
    for (let n = 0; n < this.#size; n++) {
      let pos = this.#bytes.readUInt32LE(n * DIGEST_BYTES) & mask;
      while (table[pos] !== EMPTY) pos = (pos + 1) & mask;
      table[pos] = n;
    }
    freeArray(this.#table);
    this.#table = table;
  }
}
