/**
 * A delta artifact's TOC dictionary (src/patch/delta-index.ts, `tocDictionary`): FROM's TOC
 * JSONs in FROM layer order, then TO's in TO layer order. FROM's part is the dictionary of the
 * TOC patches, the whole is the dictionary of the index's files frame.
 *
 * Built in one buffer sized up front (FROM's and TO's JSON sizes are known before any is
 * decompressed), each JSON decompressed or decoded once and copied into its place: on the
 * bench's larger tree the JSONs held one by one, then concatenated for the TOC patches, then
 * again with TO's for the files frame were four copies of ~15 MiB each at the planning peak.
 * TO's TOC JSONs that came from patches are handed out as views into this buffer, so the
 * update's TOCs and the dictionary are the same bytes.
 */
import { freeNow } from '../../util/buffer-pool.ts';
import type { Descriptor } from '../../oci/types.ts';
import { MAX_TOC_BYTES, parsePosition, ZstdChunkedAnnotation } from '../../layer/toc.ts';
import { tocJsonOf, type TocBytes } from './tocs.ts';

/**
 * The most the dictionary may reserve: its size is the sum of sizes the manifests declare, before
 * any TOC is seen, so a hostile TO manifest declaring many TOCs at MAX_TOC_BYTES must not make
 * tiu reserve gigabytes. Real dictionaries are tens of MiB (~30 on the bench's larger tree).
 */
export const MAX_DICTIONARY_BYTES = MAX_TOC_BYTES;

/** A TOC JSON's uncompressed size as the (signed) manifest-position annotation declares it; undefined without one. */
function declaredSize(d: Descriptor): number | undefined {
  const position = d.annotations?.[ZstdChunkedAnnotation.ManifestPosition];
  if (position === undefined) return undefined;
  const { lengthUncompressed } = parsePosition(position);
  if (lengthUncompressed > MAX_TOC_BYTES)
    throw new Error(`a table of contents of ${lengthUncompressed} bytes is over the limit of ${MAX_TOC_BYTES}`);
  return lengthUncompressed;
}

/** The size `b` decompresses to: a JSON's own length, a compressed TOC's declared size. */
export function tocJsonSize(b: TocBytes, d: Descriptor): number | undefined {
  return 'json' in b ? b.json.length : declaredSize(d);
}

export class TocDictionary {
  readonly #fromTocs: readonly TocBytes[];
  readonly #fromLayers: readonly Descriptor[];
  readonly #toLayers: readonly Descriptor[];
  /** Where each TO layer's JSON starts; its last item is the end of the dictionary. */
  #toStarts: number[] = [];
  #filled: boolean[] = [];
  #buf: Buffer | undefined;
  #released = false;

  /**
   * `fromTocs`: FROM's TOCs as the store verified them, one per `fromLayers` item. Nothing is
   * allocated or decompressed until a part is asked for.
   */
  constructor(fromTocs: readonly TocBytes[], fromLayers: readonly Descriptor[], toLayers: readonly Descriptor[]) {
    if (fromTocs.length !== fromLayers.length) throw new Error('one stored TOC per FROM layer is needed');
    this.#fromTocs = fromTocs;
    this.#fromLayers = fromLayers;
    this.#toLayers = toLayers;
  }

  /** Allocated with FROM's part filled in; FROM's stored TOCs are let go. */
  #buffer(): Buffer {
    if (this.#buf) return this.#buf;
    if (this.#released) throw new Error('the TOC dictionary was released');
    const fromSizes = this.#fromTocs.map((b, i) => {
      const size = tocJsonSize(b, this.#fromLayers[i]!);
      if (size === undefined) throw new Error(`FROM layer ${i + 1} declares no table of contents size`);
      return size;
    });
    let at = fromSizes.reduce((n, s) => n + s, 0);
    for (const d of this.#toLayers) {
      this.#toStarts.push(at);
      // A TO layer without a declared TOC size leaves the delta path before its JSON is wanted (tocs.ts).
      at += declaredSize(d) ?? 0;
    }
    this.#toStarts.push(at);
    if (at > MAX_DICTIONARY_BYTES)
      throw new Error(`its TOC dictionary would be ${at} bytes, over the limit of ${MAX_DICTIONARY_BYTES}`);
    this.#filled = this.#toLayers.map(() => false);
    const buf = Buffer.allocUnsafe(at);
    let start = 0;
    for (const [i, b] of this.#fromTocs.entries()) {
      place(buf, start, fromSizes[i]!, tocJsonOf(b, this.#fromLayers[i]!), `FROM layer ${i + 1}`);
      start += fromSizes[i]!;
    }
    this.#buf = buf;
    return buf;
  }

  /**
   * Free the dictionary's memory now rather than at a collection: its last reader, the index's
   * files frame, is done with it, and left to the collector its several MiB were still there
   * when the patches' largest files were decoded, the update's peak. Every view handed out
   * (placeTo's) reads as empty afterwards: their TOCs have been read and stored by then.
   */
  release(): void {
    if (this.#buf) freeNow(this.#buf);
    this.#buf = undefined;
    this.#released = true;
  }

  /** FROM's TOC JSONs: the dictionary of the TOC patches. */
  get from(): Buffer {
    return this.#buffer().subarray(0, this.#toStarts[0]);
  }

  /** Put TO layer `layer`'s verified JSON in its place; the answer is that place, the same bytes. */
  placeTo(layer: number, json: Uint8Array): Buffer {
    const buf = this.#buffer();
    const start = this.#toStarts[layer]!;
    const size = this.#toStarts[layer + 1]! - start;
    place(buf, start, size, json, `TO layer ${layer + 1}`);
    this.#filled[layer] = true;
    return buf.subarray(start, start + size);
  }

  /** The whole dictionary, TO's JSONs not placed yet taken from `toTocs` (one per TO layer). */
  whole(toTocs: readonly TocBytes[]): Buffer {
    const buf = this.#buffer();
    for (const [i, b] of toTocs.entries()) if (!this.#filled[i]) this.placeTo(i, tocJsonOf(b, this.#toLayers[i]!));
    return buf;
  }
}

/** Copy `json` into `buf` at `start`, where exactly `size` bytes are reserved for it. */
function place(buf: Buffer, start: number, size: number, json: Uint8Array, what: string): void {
  if (json.length !== size)
    throw new Error(`the table of contents of ${what} is ${json.length} bytes, its manifest declares ${size}`);
  buf.set(json, start);
}
