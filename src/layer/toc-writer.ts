/**
 * A layer's TOC JSON made as the layer is written, entry by entry, so that a writer holds the
 * JSON bytes (~250 bytes an entry) instead of one TocEntry object per tar member until the
 * layer's end (the larger bench tree's largest layer: 19,000 of them, ~15 MiB of heap beside
 * the level-19 compression of its TOC). The bytes are exactly encodeToc's: the same
 * JSON.stringify of each entry, keys in the order they were set, joined as the document's
 * `entries` array.
 */
import { freeNow } from '../util/buffer-pool.ts';
import { LayerFormatError } from './errors.ts';
import type { TocEntry } from './toc.ts';

/** Encoded entries are gathered in pieces of this size (above Buffer.poolSize: freeNow frees them). */
const PIECE = 128 * 1024;

/** A regular file's entry is complete once it has its content digest and its frame's offsets. */
function complete(t: TocEntry): boolean {
  return t.type !== 'reg' || !t.size || (t.digest !== undefined && t.endOffset !== undefined);
}

export class TocJsonWriter {
  readonly #pieces: Buffer[] = [];
  #piece = Buffer.allocUnsafeSlow(PIECE);
  #used = 0;
  /** Entries added and not yet encoded (the first is incomplete), in tar order. */
  #waiting: TocEntry[] = [];
  #count = 0;

  /** Entries waiting to be encoded (for tests of what a writer holds). */
  get waiting(): number {
    return this.#waiting.length;
  }

  /** Add the next entry in tar order; it may still be completed later (digest, offsets). */
  add(t: TocEntry): void {
    this.#waiting.push(t);
    this.encodeReady();
  }

  /** Encode the entries at the front that are complete (call after completing one). */
  encodeReady(): void {
    let k = 0;
    while (k < this.#waiting.length && complete(this.#waiting[k]!)) this.#append(this.#waiting[k++]!);
    if (k === this.#waiting.length) this.#waiting = [];
    else if (k > 0) this.#waiting = this.#waiting.slice(k);
  }

  #append(t: TocEntry): void {
    const text = (this.#count++ === 0 ? '' : ',') + JSON.stringify(t);
    // Binary strings: one char per byte (toc-json.ts).
    if (this.#used + text.length > this.#piece.length) {
      this.#pieces.push(this.#piece.subarray(0, this.#used));
      this.#piece = Buffer.allocUnsafeSlow(Math.max(PIECE, text.length));
      this.#used = 0;
    }
    this.#used += this.#piece.write(text, this.#used, 'latin1');
  }

  /** The TOC JSON, exactly as encodeToc makes it of `{ version: 1, entries, tarSplitDigest }`. */
  finish(tarSplitDigest?: string): Buffer {
    this.encodeReady();
    const open = this.#waiting[0];
    if (open)
      throw new LayerFormatError('TOC_INVALID', `the TOC entry of ${open.name} was never given its digest and offsets`);
    const tail = tarSplitDigest === undefined ? ']}' : `],"tarSplitDigest":${JSON.stringify(tarSplitDigest)}}`;
    const out = Buffer.concat([
      Buffer.from('{"version":1,"entries":[', 'latin1'),
      ...this.#pieces,
      this.#piece.subarray(0, this.#used),
      Buffer.from(tail, 'latin1'),
    ]);
    // The pieces are copied: their memory goes now, not beside the TOC's compression.
    for (const p of this.#pieces) freeNow(p);
    freeNow(this.#piece);
    this.#pieces.length = 0;
    this.#piece = Buffer.alloc(0);
    this.#used = 0;
    return out;
  }
}
