/**
 * A layer's TOC JSON made as the layer is written, entry by entry, so that a writer holds the
 * JSON bytes (~250 bytes an entry) instead of one TocEntry object per tar member until the
 * layer's end (the larger bench tree's largest layer: 19,000 of them, ~15 MiB of heap beside
 * the level-19 compression of its TOC). The bytes are exactly encodeToc's: the same
 * JSON.stringify of each entry, keys in the order they were set, joined as the document's
 * `entries` array. A layer writer spills the JSON to a file as it is made (the constructor's
 * `spill`), so it is not held while the layer waits for its turn to compress it.
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

const HEAD = '{"version":1,"entries":[';

export class TocJsonWriter {
  readonly #pieces: Buffer[] = [];
  #piece = Buffer.allocUnsafeSlow(PIECE);
  #used = 0;
  /** Entries added and not yet encoded (the first is incomplete), in tar order. */
  #waiting: TocEntry[] = [];
  #count = 0;
  readonly #spill: ((bytes: Buffer) => void) | undefined;
  #spilled = 0;

  /**
   * `spill`: where each full piece of the JSON goes, in order (a file: a build holds a layer's
   * TOC until every layer's content is written, ~230 bytes an entry). It must be done with the
   * bytes when it returns: the piece is reused. Without it the pieces are kept for finish().
   */
  constructor(spill?: (bytes: Buffer) => void) {
    this.#spill = spill;
    this.#used = this.#piece.write(HEAD, 0, 'latin1');
  }

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
    // Binary strings: one char per byte (toc-json.ts).
    this.#write((this.#count++ === 0 ? '' : ',') + JSON.stringify(t));
  }

  #write(text: string): void {
    if (this.#used + text.length > this.#piece.length) this.#pieceFull(text.length);
    this.#used += this.#piece.write(text, this.#used, 'latin1');
  }

  /** The piece cannot take `next` more bytes: it goes (spilled, or kept), and the next one is ready. */
  #pieceFull(next: number): void {
    const full = this.#piece.subarray(0, this.#used);
    if (this.#spill) {
      this.#spill(full);
      this.#spilled += full.length;
      if (next > this.#piece.length) {
        freeNow(this.#piece);
        this.#piece = Buffer.allocUnsafeSlow(next);
      }
    } else {
      this.#pieces.push(full);
      this.#piece = Buffer.allocUnsafeSlow(Math.max(PIECE, next));
    }
    this.#used = 0;
  }

  /** The end of the document, `{ version: 1, entries, tarSplitDigest }` as encodeToc writes it. */
  #end(tarSplitDigest: string | undefined): void {
    this.encodeReady();
    const open = this.#waiting[0];
    if (open)
      throw new LayerFormatError('TOC_INVALID', `the TOC entry of ${open.name} was never given its digest and offsets`);
    this.#write(tarSplitDigest === undefined ? ']}' : `],"tarSplitDigest":${JSON.stringify(tarSplitDigest)}}`);
  }

  /** The TOC JSON, exactly as encodeToc makes it of `{ version: 1, entries, tarSplitDigest }`. */
  finish(tarSplitDigest?: string): Buffer {
    if (this.#spill) throw new Error('a spilling TocJsonWriter ends with finishSpilled()');
    this.#end(tarSplitDigest);
    const out = Buffer.concat([...this.#pieces, this.#piece.subarray(0, this.#used)]);
    // The pieces are copied: their memory goes now, not beside the TOC's compression.
    for (const p of this.#pieces) freeNow(p);
    this.#pieces.length = 0;
    this.#release();
    return out;
  }

  /** Spill the rest of the TOC JSON (as finish() would return it); returns its length in bytes. */
  finishSpilled(tarSplitDigest?: string): number {
    if (!this.#spill) throw new Error('a TocJsonWriter without spill ends with finish()');
    this.#end(tarSplitDigest);
    const last = this.#piece.subarray(0, this.#used);
    this.#spill(last);
    this.#spilled += last.length;
    this.#release();
    return this.#spilled;
  }

  #release(): void {
    freeNow(this.#piece);
    this.#piece = Buffer.alloc(0);
    this.#used = 0;
  }
}
