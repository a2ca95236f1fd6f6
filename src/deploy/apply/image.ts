/**
 * Apply an OCI image (manifest + layers from any Target) into a directory: the glue between
 * the content layer and the diff-apply engine.
 *
 * - 'toc' mode (every layer is zstd:chunked with its TOC annotations, and the source serves
 *   byte ranges): each layer's table of contents is fetched by range and checked against the
 *   manifest-checksum annotation (the manifest is signed, so the TOC is trusted and pins every
 *   file by sha256); the planner decides; only the new files are fetched (ranged requests,
 *   coalesced), or, with `ranged: false`, taken from one pass over each needed layer.
 * - 'tar' mode (ordinary OCI/Docker images, gzip or zstd or plain): each layer is streamed,
 *   verified against its digest, decompressed and compared on the fly (applyTarLayers).
 */
import { pipeline } from 'node:stream';
import { PassThrough, type Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import type { Fetcher, RangeFetcher } from '../../content/interfaces.ts';
import { isTiuError } from '../../errors.ts';
import { VerifyingStream } from '../../oci/digest.ts';
import type { Descriptor, ImageManifest } from '../../oci/types.ts';
import { decompressStream } from '../../bundle/decompress.ts';
import { readTocFromFooter, ZstdChunkedAnnotation } from '../../bundle/toc.ts';
import { rangeProvider, tarLayerProvider, type RangeOptions } from './content.ts';
import { applyFromToc, type ApplyOptions, type ApplyResult } from './toc-apply.ts';
import { applyTarLayers } from './tar-apply.ts';
import { tocToEntries } from './toc.ts';
import { ContentIndex } from './scan.ts';
import type { ApplyReport, TreeEntry } from './types.ts';

export type LayerSource = Fetcher & Partial<RangeFetcher>;

export interface ApplyImageOptions extends ApplyOptions {
  /** 'auto' (default): 'toc' when every layer has a TOC and the source serves ranges, else 'tar'. */
  mode?: 'auto' | 'toc' | 'tar';
  /** In 'toc' mode, fetch single files by range (default) or read whole layers once. */
  ranged?: boolean;
  range?: RangeOptions;
  signal?: AbortSignal;
}

export interface ApplyImageResult {
  mode: 'toc' | 'tar';
  report: ApplyReport | null;
  /** 'toc' mode: the plan and hashing counts. */
  toc?: ApplyResult;
  /** Compressed bytes fetched from the source for layer content (TOCs not counted). */
  fetchedBytes: number;
}

function hasToc(d: Descriptor): boolean {
  const a = d.annotations ?? {};
  return a[ZstdChunkedAnnotation.ManifestChecksum] !== undefined && a[ZstdChunkedAnnotation.ManifestPosition] !== undefined;
}

class Counting extends PassThrough {
  constructor(onBytes: (n: number) => void) {
    super({
      transform(chunk: Buffer, _enc, cb) {
        onBytes(chunk.length);
        cb(null, chunk);
      },
    });
  }
}

/** A layer blob as an uncompressed tar stream, verified against its digest and size as it flows. */
export async function openLayerTar(source: LayerSource, desc: Descriptor, opts: { signal?: AbortSignal; onBytes?: (n: number) => void } = {}): Promise<Readable> {
  const raw = await source.fetch(desc, { signal: opts.signal });
  const verifier = new VerifyingStream(desc, `layer ${desc.digest}`);
  const counted = opts.onBytes ? new Counting(opts.onBytes) : new PassThrough();
  pipeline(raw, counted, verifier, () => undefined); // errors surface on `verifier`, which the reader consumes
  const { stream } = await decompressStream(verifier, { signal: opts.signal });
  return stream;
}

export async function applyImage(root: string, source: LayerSource, manifest: ImageManifest, opts: ApplyImageOptions = {}): Promise<ApplyImageResult> {
  const layers = manifest.layers;
  let fetchedBytes = 0;
  const count = (n: number): void => {
    fetchedBytes += n;
  };
  let mode: 'toc' | 'tar' = opts.mode === 'tar' ? 'tar' : 'toc';
  if (opts.mode !== 'toc' && opts.mode !== 'tar') mode = layers.length > 0 && layers.every(hasToc) && typeof source.fetchRange === 'function' ? 'toc' : 'tar';

  if (mode === 'toc') {
    const fetchRange = source.fetchRange?.bind(source);
    if (!fetchRange) throw new TypeError('toc mode needs a source that serves byte ranges');
    let entries: TreeEntry[][] | null = [];
    try {
      for (const [i, d] of layers.entries()) {
        const toc = await readTocFromFooter(async (s, e) => buffer(await fetchRange(d, s, e, { signal: opts.signal })), d.size, d.annotations ?? {});
        entries.push(tocToEntries(toc, i));
      }
    } catch (e) {
      // A registry without Range support: fall back to streaming whole layers, unless asked for toc.
      if (opts.mode !== 'toc' && isTiuError(e, 'RANGE_UNSUPPORTED')) entries = null;
      else throw e;
    }
    if (entries) {
      const provider = opts.ranged === false
        ? tarLayerProvider((i) => openLayerTar(source, layers[i]!, { signal: opts.signal, onBytes: count }))
        : rangeProvider(async (i, s, e) => {
          count(e - s);
          return fetchRange(layers[i]!, s, e, { signal: opts.signal });
        }, opts.range);
      const r = await applyFromToc(root, entries, provider, opts);
      return { mode: 'toc', report: r.report, toc: r, fetchedBytes };
    }
    mode = 'tar';
  }
  const report = await applyTarLayers(root, layers.map((d) => () => openLayerTar(source, d, { signal: opts.signal, onBytes: count })), {
    preserve: opts.preserve ?? [],
    allowCopyFallback: opts.allowCopyFallback ?? false,
    noXattrs: opts.noXattrs ?? false,
    ...(opts.indexFile ? { index: await ContentIndex.load(root, opts.indexFile) } : {}),
  });
  return { mode: 'tar', report, fetchedBytes };
}
