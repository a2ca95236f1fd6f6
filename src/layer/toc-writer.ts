/**
 * A layer's TOC JSON made as the layer is written, entry by entry, so that a writer holds the
 * JSON bytes (~250 bytes an entry) instead of one TocEntry object per tar member until the
 * layer's end (the larger bench tree's largest layer: 19,000 of them, ~15 MiB of heap beside
 * the level-19 compression of its TOC). The bytes are exactly encodeToc's: the same
 * JSON.stringify of each entry, keys in the order they were set, joined as the document's
 * `entries` array. The JSON leaves as it is made, a piece at a time (the constructor's `spill`:
 * a layer writer's file), so it is not held while the layer waits for its turn to compress it.
 */
import { TextPieces } from '../util/text-pieces.ts';
import { LayerFormatError } from './errors.ts';
import type { TocEntry } from './toc.ts';

/** Encoded entries are gathered in a piece of this size, reused (above Buffer.poolSize: it is freed at the end). */
const PIECE = 128 * 1024;

/** A regular file's entry is complete once it has its content digest and its frame's offsets. */
function complete(t: TocEntry): boolean {
  return t.type !== 'reg' || !t.size || (t.digest !== undefined && t.endOffset !== undefined);
}

const HEAD = '{"version":1,"entries":[';

export class TocJsonWriter {
  readonly #out: TextPieces;
  /** Entries added and not yet encoded (the first is incomplete), in tar order. */
  #waiting: TocEntry[] = [];
  #count = 0;

  /**
   * `spill`: where the JSON goes, in order, a piece at a time as each fills (a layer writer's file:
   * a build holds a layer's TOC until every layer's content is written, ~230 bytes an entry). It
   * must be done with the bytes when it returns: the piece is reused.
   */
  constructor(spill: (bytes: Buffer) => void) {
    // Binary strings: one char per byte (toc-json.ts).
    this.#out = new TextPieces({ size: PIECE, encoding: 'latin1', sink: spill });
    this.#out.write(HEAD);
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
    this.#out.write((this.#count++ === 0 ? '' : ',') + JSON.stringify(t));
  }

  /**
   * End the document as encodeToc writes `{ version: 1, entries, tarSplitDigest }` and spill the
   * rest; returns the JSON's length in bytes.
   */
  finish(tarSplitDigest?: string): number {
    this.encodeReady();
    const open = this.#waiting[0];
    if (open)
      throw new LayerFormatError('TOC_INVALID', `the TOC entry of ${open.name} was never given its digest and offsets`);
    this.#out.write(tarSplitDigest === undefined ? ']}' : `],"tarSplitDigest":${JSON.stringify(tarSplitDigest)}}`);
    this.#out.end();
    return this.#out.handed;
  }
}
