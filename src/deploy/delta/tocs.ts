/**
 * The tables of contents of an image's layers, fetched by range and verified against the
 * manifest-checksum annotation of each layer (the manifest is signed, so a TOC that matches is
 * trusted, and it pins every file by sha256). Decides whether the delta path is possible:
 * every layer must be zstd:chunked with its TOC annotations and the source must serve ranges.
 * Otherwise the answer is the reason for the whole-layer path.
 */
import { buffer } from 'node:stream/consumers';
import { isTiuError } from '../../errors.ts';
import type { Target } from '../../content/interfaces.ts';
import { MediaType } from '../../oci/mediatypes.ts';
import type { Descriptor, ImageManifest } from '../../oci/types.ts';
import { zstdDecompressSync } from 'node:zlib';
import {
  forEachCompressedTocEntry,
  forEachTocEntry,
  parsePosition,
  readCompressedToc,
  ZstdChunkedAnnotation,
  type TocEntry,
} from '../../layer/toc.ts';
import { LayerEntries } from '../apply/toc.ts';
import type { RowSpill } from '../apply/row-spill.ts';
import type { TreeEntry } from '../../layer/entry.ts';
import { DeltaAnnotation } from '../../patch/media.ts';
import type { TocStore } from './toc-store.ts';

export type LayerTocs =
  /** `bytes`: each layer's TOC as verified, none with `keepBytes: false`. */
  | { ok: true; layers: TreeEntry[][]; bytes: TocBytes[]; tocBytes: number; requests: number }
  | { ok: false; reason: string };

/** Why this layer can't be read file by file, or undefined when it can. */
function layerUnusable(d: Descriptor, i: number): string | undefined {
  const a = d.annotations ?? {};
  if (d.mediaType !== MediaType.OciLayerZstd)
    return `layer ${i + 1} (${d.digest}) is ${d.mediaType}, not a zstd:chunked layer`;
  if (
    a[ZstdChunkedAnnotation.ManifestChecksum] === undefined ||
    a[ZstdChunkedAnnotation.ManifestPosition] === undefined
  ) {
    return `layer ${i + 1} (${d.digest}) has no table of contents`;
  }
  return undefined;
}

/**
 * containers/storage splits large files into chunks: a `reg` entry whose frame holds the first
 * chunk, then `chunk` entries. LayerEntries (apply/toc.ts, the one TOC reader) widens the file's
 * range over them; here only the case it would refuse is turned into a reason for the
 * whole-layer path: a chunk with no frame of its own, which can't be fetched by range.
 */
function chunkWithoutFrame(e: TocEntry): string | undefined {
  if (e.type === 'chunk' && (e.offset === undefined || e.endOffset === undefined || e.endOffset <= e.offset))
    return `chunk of ${e.name} has no frame of its own`;
  return undefined;
}

/**
 * Layer `layer`'s entries read straight from its verified TOC, entry by entry: a compressed TOC
 * is decompressed piece by piece, so neither its JSON nor the parsed TOC is ever held whole (on
 * a 45k-entry tree they were tens of MB next to the entries). Or why the layer can't be read
 * file by file.
 */
async function layerEntries(
  b: TocBytes,
  d: Descriptor,
  layer: number,
  ownPath?: (path: string) => string | undefined,
  spill?: RowSpill,
): Promise<TreeEntry[] | { unusable: string }> {
  const out = new LayerEntries(layer, ownPath, spill);
  let unusable: string | undefined;
  const onEntry = (e: TocEntry) => {
    unusable ??= chunkWithoutFrame(e);
    if (unusable === undefined) out.add(e);
  };
  if ('json' in b) forEachTocEntry(b.json, onEntry);
  else {
    const { lengthUncompressed } = parsePosition(d.annotations![ZstdChunkedAnnotation.ManifestPosition]!);
    await forEachCompressedTocEntry(b.compressed, lengthUncompressed, onEntry);
  }
  return unusable === undefined ? out.finish() : { unusable };
}

/** TOC bytes fetched ahead of their reading, while the paths to name entries with are not there yet. */
const PREFETCH_BYTES = 4 * 1024 * 1024;

function sizeOf(b: TocBytes): number {
  return 'json' in b ? b.json.length : b.compressed.length;
}

/** The compressed TOC's size its (signed) position annotation declares. */
function compressedTocSize(d: Descriptor): number {
  return parsePosition(d.annotations![ZstdChunkedAnnotation.ManifestPosition]!).lengthCompressed;
}

/** Where a layer's TOC came from: the bytes it was verified as (compressed: by the manifest-checksum; json: by the signed json-digest). */
export type TocBytes = { compressed: Buffer } | { json: Buffer };

export interface TocSources {
  /** The TOCs the device verified before (the cache's store): no request for these. */
  store?: TocStore;
  /** A TOC JSON from elsewhere (a delta artifact's patch), already verified against the layer's json-digest; undefined: none. */
  patched?: (wanted: readonly { layer: number; d: Descriptor }[]) => Promise<Map<number, Buffer>>;
  /**
   * false: `bytes` stays empty, each TOC let go once its entries are read (only a delta
   * artifact's file index reads the TOCs again; all of them were ~1.6 MiB on the bench's larger
   * tree, held through the read of the others). Default true.
   */
  keepBytes?: boolean;
  /**
   * Strings to name the entries' paths with where they have the path (LayerEntries): awaited
   * before the first TOC is read, while that TOC's bytes come; undefined: the entries' own.
   */
  ownPaths?: Promise<((path: string) => string | undefined) | undefined>;
  /** Where the files' rows may leave memory (apply/row-spill.ts); undefined: they stay. */
  spill?: RowSpill;
}

/** The stored TOC of layer `d` (as the store verified it); undefined when the store has none. */
async function storedToc(store: TocStore, d: Descriptor): Promise<TocBytes | undefined> {
  const compressed = await store.compressedToc(d);
  if (compressed) return { compressed };
  const json = await store.tocJson(d);
  return json ? { json } : undefined;
}

/** A stored compressed TOC checked against the layer's annotations once more (as if it came by range). */
async function checkedStored(b: TocBytes, d: Descriptor): Promise<TocBytes> {
  if ('json' in b) return b;
  const { compressed } = await readCompressedToc(() => Promise.resolve(b.compressed), d.size, d.annotations ?? {});
  return { compressed };
}

/**
 * Every layer's TOC, verified: from the store where it has the layer's TOC, from `patched`
 * where that gives one, else fetched by range (and then kept in the store). `{ok:false}` with
 * the reason when the delta path is impossible. tocBytes/requests count only what came over
 * the source.
 */
export async function fetchLayerTocs(
  source: Target,
  manifest: ImageManifest,
  signal?: AbortSignal,
  from: TocSources = {},
): Promise<LayerTocs> {
  const fetchRange = source.fetchRange?.bind(source);
  if (!fetchRange) return { ok: false, reason: `${source.name} does not serve byte ranges` };
  if (manifest.layers.length === 0) return { ok: false, reason: 'the image has no layers' };
  for (const [i, d] of manifest.layers.entries()) {
    const why = layerUnusable(d, i);
    if (why) return { ok: false, reason: why };
  }
  const layers: TreeEntry[][] = [];
  const bytes: TocBytes[] = [];
  let patchedAny = false;
  let tocBytes = 0;
  let requests = 0;
  const fetched = async (d: Descriptor, s: number, e: number): Promise<Buffer> => {
    requests++;
    const b = await buffer(await fetchRange(d, s, e, { signal }));
    tocBytes += b.length;
    return b;
  };
  // Smallest layer first: a registry that answers a Range request with the whole blob (200)
  // then costs at most the smallest layer's bytes in flight before the answer is dropped.
  const order = [...manifest.layers.keys()].sort((a, b) => manifest.layers[a]!.size - manifest.layers[b]!.size);
  try {
    // The stored TOCs first: the TOC patches the rest can have come in one go.
    const stored = new Map<number, Awaited<ReturnType<typeof storedToc>>>();
    for (const i of order) {
      const s = from.store ? await storedToc(from.store, manifest.layers[i]!) : undefined;
      if (s) stored.set(i, s);
    }
    const wanted = order.filter((i) => !stored.has(i)).map((i) => ({ layer: i, d: manifest.layers[i]! }));
    const patched = from.patched && wanted.length ? await from.patched(wanted) : new Map<number, Buffer>();
    /** Layer i's verified TOC bytes: stored, patched or fetched (and then kept). */
    const tocOf = async (i: number): Promise<TocBytes> => {
      const d = manifest.layers[i]!;
      const kept = stored.get(i);
      stored.delete(i);
      let got: TocBytes | undefined = kept && (await checkedStored(kept, d));
      const json = patched.get(i);
      if (json) {
        patchedAny = true;
        got = { json };
        await from.store?.keepTocJson(d.annotations![DeltaAnnotation.TocJsonDigest]!, json);
      }
      if (!got) {
        const read = await readCompressedToc((s, e) => fetched(d, s, e), d.size, d.annotations ?? {});
        // Verified against the signed checksum by readCompressedToc: worth keeping.
        await from.store?.keepCompressedToc(d.annotations![ZstdChunkedAnnotation.ManifestChecksum]!, read.compressed);
        got = { compressed: read.compressed };
      }
      return got;
    };
    // While the paths to name the entries with are still coming (the booted tree's scan), the
    // next layers' TOCs come ahead, at most PREFETCH_BYTES of them held: their round trips
    // overlap the scan as when each TOC was read as soon as it came.
    let pathsReady = from.ownPaths === undefined;
    from.ownPaths?.then(
      () => (pathsReady = true),
      () => (pathsReady = true),
    );
    const ahead = new Map<number, TocBytes>();
    let aheadBytes = 0;
    for (const [k, i] of order.entries()) {
      const d = manifest.layers[i]!;
      const early = ahead.get(i);
      ahead.delete(i);
      if (early) aheadBytes -= sizeOf(early);
      const got = early ?? (await tocOf(i));
      for (let j = k + 1; !pathsReady && j < order.length; j++) {
        const next = order[j]!;
        if (ahead.has(next)) continue;
        if (aheadBytes + compressedTocSize(manifest.layers[next]!) > PREFETCH_BYTES) break;
        const b = await tocOf(next);
        ahead.set(next, b);
        aheadBytes += sizeOf(b);
      }
      const entries = await layerEntries(got, d, i, await from.ownPaths, from.spill);
      if ('unusable' in entries) return { ok: false, reason: `layer ${i + 1} (${d.digest}): ${entries.unusable}` };
      layers[i] = entries;
      if (from.keepBytes !== false) bytes[i] = got;
    }
    // No TOC came by range (a patch came by range from the same source): one byte tells whether
    // the source serves ranges, before the plan relies on it.
    if (requests === 0 && !patchedAny) await fetched(manifest.layers[order[0]!]!, 0, 1);
  } catch (e) {
    // A registry that answers a Range request with the whole blob: nothing usable by range.
    if (isTiuError(e, 'RANGE_UNSUPPORTED')) return { ok: false, reason: `${source.name} ignores HTTP Range requests` };
    // TOC_CHECKSUM_MISMATCH (tampering with signed content), TOC_INVALID, TOC_TOO_LARGE: refused.
    throw e;
  }
  return { ok: true, layers, bytes, tocBytes, requests };
}

/** The uncompressed TOC JSON of layer `d` from the bytes it was verified as. */
export function tocJsonOf(b: TocBytes, d: Descriptor): Buffer {
  if ('json' in b) return b.json;
  const { lengthUncompressed } = parsePosition(d.annotations![ZstdChunkedAnnotation.ManifestPosition]!);
  // Verified by its checksum already; the bound is the signed size.
  return zstdDecompressSync(b.compressed, { maxOutputLength: Math.max(lengthUncompressed, 1) });
}
