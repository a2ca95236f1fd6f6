/**
 * Layer decoding for `tiu update` (verified, decompressed tar streams of image layers, and the
 * digest check of cached blobs). The update itself is src/deploy/update/ (index.ts: the stages).
 */
import { pipeline } from 'node:stream/promises';
import { Readable, Writable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { zstdDecompressStream } from '../bundle/zstd-frames.ts';
import type { Target } from '../content/interfaces.ts';
import { VerifyingStream } from '../oci/digest.ts';
import { MediaType } from '../oci/mediatypes.ts';
import type { Descriptor, ImageManifest } from '../oci/types.ts';
import { DiskReserveError } from './apply/space.ts';
import { asError, isTiuError } from '../errors.ts';
import { humanSize } from '../format.ts';
import { UpdateError } from './update/errors.ts';

/** A layer's uncompressed tar, verified against the blob digest as it is read (a mismatch errors the stream). */
export type LayerOpener = () => Promise<Readable>;

/** An image manifest without layers has no tree to deploy: IMAGE_LAYERS_MISSING, before anything is fetched. */
export function withLayers(desc: Descriptor, manifest: ImageManifest): ImageManifest {
  if (manifest.layers.length === 0)
    throw new UpdateError(
      'IMAGE_LAYERS_MISSING',
      `image manifest ${desc.digest} has no layers: there is no tree to deploy`,
      {
        digest: desc.digest,
      },
    );
  return manifest;
}

export function isLayer(mediaType: string): boolean {
  return TAR_LAYER_TYPES.has(mediaType);
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

/**
 * A verified, decompressed tar stream of one layer. zstd goes through the multi-frame decoder:
 * tiu's zstd:chunked layers are one frame per file plus skippable frames for the TOC.
 */
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
  return Readable.from(
    (async function* () {
      let n = 0;
      try {
        for await (const c of stream) {
          n += (c as Buffer).length;
          if (n > limit) {
            stream.destroy();
            throw new DiskReserveError(
              '/',
              `no space left for ${layer}: it expands to more than ${humanSize(limit)}, all the root filesystem holds above its reserve`,
              { layer, limit },
            );
          }
          yield c as Buffer;
        }
      } catch (e) {
        if (!isCorruptCompression(e)) throw e;
        throw new UpdateError(
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

/** Openers for the layers of `manifest`: verified, decompressed tar streams. */
export function layerOpeners(
  target: Target,
  manifest: ImageManifest,
  signal?: AbortSignal,
  expansionLimit = Number.POSITIVE_INFINITY,
): LayerOpener[] {
  for (const layer of manifest.layers) {
    if (!TAR_LAYER_TYPES.has(layer.mediaType)) {
      throw new UpdateError(
        'LAYER_UNSUPPORTED',
        `layer ${layer.digest} has media type ${layer.mediaType}, not a tar, tar+gzip or tar+zstd layer`,
        { mediaType: layer.mediaType, digest: layer.digest },
      );
    }
  }
  return manifest.layers.map((layer, i) => {
    const label = `layer ${i + 1} (${layer.digest})`;
    const open = async () => {
      const raw = await target.fetch(layer, { signal });
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
export async function verifyBlobs(target: Target, blobs: Descriptor[], signal?: AbortSignal): Promise<void> {
  for (const d of blobs) {
    if (!(await target.exists(d, { signal })))
      throw new UpdateError('CACHE_BLOB_MISSING', `blob ${d.digest} is missing from ${target.name}`, {
        digest: d.digest,
      });
    const raw = await target.fetch(d, { signal });
    await pipeline(
      raw,
      new VerifyingStream(d, `blob ${d.digest} in ${target.name}`),
      new Writable({ write: (_c, _e, cb) => cb() }),
      { signal },
    );
  }
}
