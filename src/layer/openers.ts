/**
 * Layers of an image as tar streams: which media types are layers tiu applies, and openers
 * that read a layer blob through its digest and decompress it (gzip; zstd through the
 * multi-frame decoder, since tiu's zstd:chunked layers are one frame per file plus skippable
 * frames for the TOC). The device's whole-layer path (validate, then apply) reads layers
 * only through these.
 */
import type { Readable } from 'node:stream';
import { Readable as ReadableStream, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { TiuError, asError, isTiuError } from '../errors.ts';
import { humanSize } from '../format.ts';
import { VerifyingStream } from '../oci/digest.ts';
import { MediaType } from '../oci/mediatypes.ts';
import type { Descriptor, ImageManifest } from '../oci/types.ts';
import { zstdDecompressStream } from './zstd-frames.ts';

/** A layer's uncompressed tar, opened when its turn comes (verified against the blob digest as it is read where it comes from a store). */
export type LayerOpener = (() => Promise<Readable> | Readable) & {
  /** How refusals name the layer, e.g. `layer 2 (sha256:…)`; default `layer N`. */
  label?: string;
};

/** Where layer blobs come from (a Target of src/content has this shape). */
export interface BlobSource {
  readonly name: string;
  fetch(desc: Descriptor, opts?: { signal?: AbortSignal }): Promise<Readable>;
  exists(desc: Descriptor, opts?: { signal?: AbortSignal }): Promise<boolean>;
}

/** The layers of an image that cannot be used as they are (codes IMAGE_LAYERS_MISSING, LAYER_UNSUPPORTED, LAYER_CORRUPT, CACHE_BLOB_MISSING). */
export class LayerError extends TiuError {}

/** A layer that expands past the room the root filesystem has above its reserve: DISK_FULL, before it is written. */
export class LayerTooLargeError extends TiuError {
  constructor(layer: string, limit: number) {
    super(
      'DISK_FULL',
      `no space left for ${layer}: it expands to more than ${humanSize(limit)}, all the root filesystem holds above its reserve`,
      { filesystem: '/', layer, limit },
    );
  }
}

/** An image manifest without layers has no tree to deploy: IMAGE_LAYERS_MISSING, before anything is fetched. */
export function withLayers(desc: Descriptor, manifest: ImageManifest): ImageManifest {
  if (manifest.layers.length === 0)
    throw new LayerError(
      'IMAGE_LAYERS_MISSING',
      `image manifest ${desc.digest} has no layers: there is no tree to deploy`,
      {
        digest: desc.digest,
      },
    );
  return manifest;
}

/** Layer media types tiu applies (tar, tar+gzip, tar+zstd; OCI and Docker). */
const TAR_LAYER_TYPES = new Set<string>([
  MediaType.OciLayerTar,
  MediaType.OciLayerGzip,
  MediaType.OciLayerZstd,
  MediaType.DockerLayerGzip,
  'application/vnd.docker.image.rootfs.diff.tar',
  'application/vnd.docker.image.rootfs.diff.tar.zstd',
]);

export function isLayer(mediaType: string): boolean {
  return TAR_LAYER_TYPES.has(mediaType);
}

/** The decompressed tar of a verified layer blob, by its media type. */
function decompressed(mediaType: string, verified: Readable, layer: string, limit: number): Readable {
  switch (mediaType) {
    case MediaType.OciLayerGzip:
    case MediaType.DockerLayerGzip: {
      const gunzip = createGunzip();
      // pipeline, not pipe: an error reaches gunzip, and a reader that destroys gunzip destroys `verified`
      pipeline(verified, gunzip).catch(() => undefined);
      return guarded(gunzip, layer, 'gzip', limit);
    }
    case MediaType.OciLayerZstd:
    case 'application/vnd.docker.image.rootfs.diff.tar.zstd':
      return guarded(zstdDecompressStream(verified), layer, 'zstd', limit);
    default:
      return verified;
  }
}

/** A compressed stream that does not decode: the decompressor's own codes (zlib, zstd) and the frame walker's. */
function isCorruptCompression(e: unknown): boolean {
  if (isTiuError(e)) return e.code === 'TAR_INVALID';
  const code = (e as NodeJS.ErrnoException | undefined)?.code ?? '';
  return code.startsWith('Z_') || code.startsWith('ZSTD_') || code === 'ERR_ZLIB_INITIALIZATION_FAILED';
}

/**
 * The decompressed stream, with a decoding failure said as LAYER_CORRUPT naming the layer
 * (instead of zlib's text), and DISK_FULL once it expands past `limit` bytes. Digest failures,
 * I/O errors and aborts pass unchanged.
 */
function guarded(stream: Readable, layer: string, format: 'gzip' | 'zstd', limit: number): Readable {
  return ReadableStream.from(
    (async function* () {
      let n = 0;
      try {
        for await (const c of stream) {
          n += (c as Buffer).length;
          if (n > limit) {
            stream.destroy();
            throw new LayerTooLargeError(layer, limit);
          }
          yield c as Buffer;
        }
      } catch (e) {
        if (!isCorruptCompression(e)) throw e;
        throw new LayerError(
          'LAYER_CORRUPT',
          `${layer} is not valid ${format}: ${asError(e).message}`,
          { layer, format },
          { cause: e },
        );
      }
    })(),
    { objectMode: false },
  );
}

/** Openers for the layers of `manifest`: verified, decompressed tar streams, labelled for refusals. */
export function layerOpeners(
  source: BlobSource,
  manifest: ImageManifest,
  signal?: AbortSignal,
  expansionLimit = Number.POSITIVE_INFINITY,
): LayerOpener[] {
  for (const layer of manifest.layers) {
    if (!isLayer(layer.mediaType)) {
      throw new LayerError(
        'LAYER_UNSUPPORTED',
        `layer ${layer.digest} has media type ${layer.mediaType}, not a tar, tar+gzip or tar+zstd layer`,
        { mediaType: layer.mediaType, digest: layer.digest },
      );
    }
  }
  return manifest.layers.map((layer, i) => {
    const label = `layer ${i + 1} (${layer.digest})`;
    const open = async () => {
      const raw = await source.fetch(layer, { signal });
      const verify = new VerifyingStream(layer, label);
      // One chain: errors reach the reader, and a reader that stops early (the apply engine stops at
      // the tar's end blocks) closes the blob too instead of leaving its FileHandle to the GC.
      pipeline(raw, verify).catch(() => undefined);
      return decompressed(layer.mediaType, verify, label, expansionLimit);
    };
    // The apply names the layer in a refusal of its tar (TAR_INVALID, ENTRY_INVALID …).
    return Object.assign(open, { label });
  });
}

/** Read every layer blob once through its digest: the cache may have rotted since the download. */
export async function verifyBlobs(source: BlobSource, blobs: Descriptor[], signal?: AbortSignal): Promise<void> {
  for (const d of blobs) {
    if (!(await source.exists(d, { signal })))
      throw new LayerError('CACHE_BLOB_MISSING', `blob ${d.digest} is missing from ${source.name}`, {
        digest: d.digest,
      });
    const raw = await source.fetch(d, { signal });
    await pipeline(
      raw,
      new VerifyingStream(d, `blob ${d.digest} in ${source.name}`),
      new Writable({ write: (_c, _e, cb) => cb() }),
      { signal },
    );
  }
}
