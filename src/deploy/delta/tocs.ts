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
import { readTocFromFooter, ZstdChunkedAnnotation, type Toc } from '../../layer/toc.ts';
import { tocToEntries, type TreeEntry } from '../apply/index.ts';

export type LayerTocs =
  { ok: true; layers: TreeEntry[][]; tocBytes: number; requests: number } | { ok: false; reason: string };

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
 * chunk, then `chunk` entries. tocToEntries (apply/toc.ts, the one TOC reader) widens the file's
 * range over them; here only the case it would refuse is turned into a reason for the
 * whole-layer path: a chunk with no frame of its own, which can't be fetched by range.
 */
function chunkWithoutFrame(toc: Toc): string | undefined {
  for (const e of toc.entries) {
    if (e.type === 'chunk' && (e.offset === undefined || e.endOffset === undefined || e.endOffset <= e.offset))
      return `chunk of ${e.name} has no frame of its own`;
  }
  return undefined;
}

/** Fetch and verify every layer's TOC; `{ok:false}` with the reason when the delta path is impossible. */
export async function fetchLayerTocs(
  source: Target,
  manifest: ImageManifest,
  signal?: AbortSignal,
): Promise<LayerTocs> {
  const fetchRange = source.fetchRange?.bind(source);
  if (!fetchRange) return { ok: false, reason: `${source.name} does not serve byte ranges` };
  if (manifest.layers.length === 0) return { ok: false, reason: 'the image has no layers' };
  for (const [i, d] of manifest.layers.entries()) {
    const why = layerUnusable(d, i);
    if (why) return { ok: false, reason: why };
  }
  const layers: TreeEntry[][] = [];
  let tocBytes = 0;
  let requests = 0;
  // Smallest layer first: a registry that answers a Range request with the whole blob (200)
  // then costs at most the smallest layer's bytes in flight before the answer is dropped.
  const order = [...manifest.layers.keys()].sort((a, b) => manifest.layers[a]!.size - manifest.layers[b]!.size);
  for (const i of order) {
    const d = manifest.layers[i]!;
    let toc: Toc;
    try {
      toc = await readTocFromFooter(
        async (s, e) => {
          requests++;
          const b = await buffer(await fetchRange(d, s, e, { signal }));
          tocBytes += b.length;
          return b;
        },
        d.size,
        d.annotations ?? {},
      );
    } catch (e) {
      // A registry that answers a Range request with the whole blob: nothing usable by range.
      if (isTiuError(e, 'RANGE_UNSUPPORTED'))
        return { ok: false, reason: `${source.name} ignores HTTP Range requests` };
      // TOC_CHECKSUM_MISMATCH (tampering with signed content), TOC_INVALID, TOC_TOO_LARGE: refused.
      throw e;
    }
    const chunkless = chunkWithoutFrame(toc);
    if (chunkless) return { ok: false, reason: `layer ${i + 1} (${d.digest}): ${chunkless}` };
    layers[i] = tocToEntries(toc, i);
  }
  return { ok: true, layers, tocBytes, requests };
}
