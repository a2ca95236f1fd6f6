/**
 * What `tiu delta` reads of its two images: the platform image manifests of a root (a manifest,
 * or an index's platform entries), each zstd:chunked layer's TOC (by range where the target
 * serves ranges, verified against the manifest's annotations) and single files' frames,
 * verified against the TOC's sha256. Nothing here writes.
 */
import { buffer } from 'node:stream/consumers';
import { zstdDecompressSync } from 'node:zlib';
import { fetchManifest, fetchVerified } from '../content/graph.ts';
import type { Target } from '../content/interfaces.ts';
import { isTiuError, TiuError } from '../errors.ts';
import { showPath } from '../layer/entry.ts';
import { LayerFormatError } from '../layer/errors.ts';
import { parsePosition, readTocFromFooter, ZstdChunkedAnnotation, type Toc, type TocEntry } from '../layer/toc.ts';
import { zstdDecompressBufferSync } from '../layer/zstd-frames.ts';
import { DigestMismatchError, sha256 } from '../oci/digest.ts';
import { isManifestType, MediaType } from '../oci/mediatypes.ts';
import type { Descriptor, Digest, ImageManifest } from '../oci/types.ts';
import { MAX_CONFIG_BYTES, parseConfigBytes } from '../oci/validate.ts';
import { DeltaAnnotation } from '../patch/media.ts';

/** An image `tiu delta` cannot make a delta for (or from). */
export class DeltaImageError extends TiuError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super('DELTA_IMAGE_UNSUPPORTED', message, details);
  }
}

/** One platform's image manifest. `platform` is `os/architecture[/variant]`. */
export interface PlatformImage {
  readonly desc: Descriptor;
  readonly manifest: ImageManifest;
  readonly platform: string;
}

const platformName = (p: { os: string; architecture: string; variant?: string }): string =>
  [p.os, p.architecture, ...(p.variant ? [p.variant] : [])].join('/');

/**
 * The platform image manifests under `root`: the manifest itself (its platform from its config),
 * or every entry of an index that names a platform (attestations, `unknown/unknown`, are left out).
 */
export async function platformImages(target: Target, root: Descriptor): Promise<PlatformImage[]> {
  const { parsed } = await fetchManifest(target, root);
  if (parsed.kind === 'manifest') {
    const config = parseConfigBytes(await fetchVerified(target, parsed.manifest.config, MAX_CONFIG_BYTES));
    return [{ desc: root, manifest: parsed.manifest, platform: platformName(config) }];
  }
  const out: PlatformImage[] = [];
  for (const d of parsed.index.manifests) {
    if (!isManifestType(d.mediaType) || !d.platform || d.platform.os === 'unknown') continue;
    const m = await fetchManifest(target, d);
    if (m.parsed.kind === 'manifest')
      out.push({ desc: d, manifest: m.parsed.manifest, platform: platformName(d.platform) });
  }
  return out;
}

/** Bytes [start, end) of a blob: by range where the target serves ranges, else read through the whole blob. */
export type BlobRange = (d: Descriptor, start: number, end: number) => Promise<Buffer>;

export function blobRanges(target: Target): BlobRange {
  let ranges = target.fetchRange !== undefined;
  const whole = async (d: Descriptor, start: number, end: number): Promise<Buffer> => {
    const parts: Buffer[] = [];
    let at = 0;
    for await (const chunk of await target.fetch(d)) {
      const b = chunk as Buffer;
      if (at + b.length > start && at < end)
        parts.push(b.subarray(Math.max(0, start - at), Math.min(b.length, end - at)));
      at += b.length;
      if (at >= end) break;
    }
    return Buffer.concat(parts);
  };
  return async (d, start, end) => {
    if (ranges) {
      try {
        return await buffer(await target.fetchRange!(d, start, end));
      } catch (e) {
        if (!isTiuError(e, 'RANGE_UNSUPPORTED')) throw e;
        ranges = false;
      }
    }
    return whole(d, start, end);
  };
}

/** One layer's TOC: the parsed form, its JSON bytes, and what the signed manifest says of it. */
export interface LayerToc {
  readonly layer: Descriptor;
  /** The manifest-checksum annotation: sha256 of the compressed TOC. */
  readonly checksum: Digest;
  /** Size of the compressed TOC (what a TOC patch must beat). */
  readonly compressedSize: number;
  /** The json-digest annotation, when the layer has one (tiu builds): only then may a TOC patch replace it. */
  readonly jsonDigest: Digest | undefined;
  readonly json: Buffer;
  readonly toc: Toc;
}

/**
 * The TOC of every layer of `image`, verified against the manifest's annotations
 * (manifest-checksum; json-digest where present). Every layer must be zstd:chunked with a TOC.
 */
export async function readLayerTocs(target: Target, image: PlatformImage, range: BlobRange): Promise<LayerToc[]> {
  const out: LayerToc[] = [];
  for (const [i, d] of image.manifest.layers.entries()) {
    const a = d.annotations ?? {};
    const checksum = a[ZstdChunkedAnnotation.ManifestChecksum];
    const position = a[ZstdChunkedAnnotation.ManifestPosition];
    if (d.mediaType !== MediaType.OciLayerZstd || checksum === undefined || position === undefined)
      throw new DeltaImageError(
        `layer ${i + 1} (${d.digest}) of ${image.desc.digest} is not a zstd:chunked layer with a table of contents`,
        { image: image.desc.digest, layer: d.digest },
      );
    let compressed: Buffer | undefined;
    const toc = await readTocFromFooter(async (s, e) => (compressed = await range(d, s, e)), d.size, a);
    // readTocFromFooter verified the compressed bytes against the checksum; the bound is the signed size.
    const json = zstdDecompressSync(compressed!, {
      maxOutputLength: Math.max(parsePosition(position).lengthUncompressed, 1),
    });
    const jsonDigest = a[DeltaAnnotation.TocJsonDigest] as Digest | undefined;
    if (jsonDigest !== undefined && sha256(json) !== jsonDigest)
      throw new LayerFormatError(
        'TOC_CHECKSUM_MISMATCH',
        `the table of contents of layer ${d.digest} is ${sha256(json)}, its json-digest annotation says ${jsonDigest}`,
        { layer: d.digest, expected: jsonDigest, actual: sha256(json) },
      );
    out.push({ layer: d, checksum: checksum as Digest, compressedSize: compressed!.length, jsonDigest, json, toc });
  }
  return out;
}

/** A regular file of an image as its TOC describes it, with the layer holding its frame. */
export interface ImageFile {
  readonly path: string;
  readonly digest: Digest;
  readonly size: number;
  readonly layer: Descriptor;
  readonly offset: number;
  readonly endOffset: number;
  /** Split into chunks (containers/storage): the frame holds only the first one. */
  readonly chunked: boolean;
}

/** The regular files with content of an image, by TOC name; a later layer's file replaces an earlier one's. */
export function imageFiles(tocs: readonly LayerToc[]): Map<string, ImageFile> {
  const files = new Map<string, ImageFile>();
  for (const t of tocs) {
    const chunked = new Set(t.toc.entries.filter((e) => e.type === 'chunk').map((e) => e.name));
    for (const e of t.toc.entries) {
      const f = fileOf(e, t.layer, chunked);
      if (f) files.set(f.path, f);
    }
  }
  return files;
}

function fileOf(e: TocEntry, layer: Descriptor, chunked: ReadonlySet<string>): ImageFile | undefined {
  if (e.type !== 'reg' || e.digest === undefined || e.offset === undefined || e.endOffset === undefined)
    return undefined;
  if (e.endOffset <= e.offset) return undefined;
  return {
    path: e.name,
    digest: e.digest as Digest,
    size: e.size ?? 0,
    layer,
    offset: e.offset,
    endOffset: e.endOffset,
    chunked: chunked.has(e.name),
  };
}

/** A file's content, from its frame, verified against the TOC's size and sha256. */
export async function readImageFile(range: BlobRange, f: ImageFile): Promise<Buffer> {
  const frame = await range(f.layer, f.offset, f.endOffset);
  const content = zstdDecompressBufferSync(frame, f.size);
  const actual = sha256(content);
  if (content.length !== f.size || actual !== f.digest)
    throw new DigestMismatchError(
      f.digest,
      actual,
      `file ${JSON.stringify(showPath(f.path))} of layer ${f.layer.digest}`,
    );
  return content;
}
