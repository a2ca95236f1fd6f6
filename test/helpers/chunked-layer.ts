/**
 * Hand-made zstd:chunked layer blobs for tests of the delta path: one zstd frame per file with
 * content, then the table of contents (any entries the test wants, hostile ones included) in a
 * skippable frame, then the footer, with the annotations a signed manifest would carry. The
 * blob holds no tar headers: only the delta path (TOC by range, frames by range) reads it.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { zstdCompressSync } from 'node:zlib';
import {
  encodeFooter,
  MANIFEST_TYPE_CRFS,
  SKIPPABLE_HEADER,
  skippableFrame,
  ZstdChunkedAnnotation,
  type TocEntry,
} from '../../src/layer/toc.ts';
import type { MemoryTarget } from './memory-target.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import type { Descriptor, Digest, ImageManifest } from '../../src/oci/types.ts';

const sha = (b: Uint8Array): Digest => `sha256:${createHash('sha256').update(b).digest('hex')}`;

export interface CraftedEntry {
  /** The TOC entry as written; size, digest, offset and endOffset are filled in from `content` unless given. */
  toc: TocEntry;
  content?: Buffer;
  /** Raw bytes to place as this entry's frame instead of zstd(content) (a bomb, garbage); offsets are filled in. */
  frame?: Buffer;
}

export function chunkedLayer(entries: readonly CraftedEntry[]): { desc: Descriptor; data: Buffer } {
  const parts: Buffer[] = [];
  const toc: TocEntry[] = [];
  let off = 0;
  for (const { toc: t, content, frame: raw } of entries) {
    const e: TocEntry = { ...t };
    const frame = raw ?? (content?.length ? zstdCompressSync(content) : undefined);
    if (frame) {
      if (content) {
        e.size ??= content.length;
        e.digest ??= sha(content);
      }
      e.offset ??= off;
      e.endOffset ??= off + frame.length;
      parts.push(frame);
      off += frame.length;
    }
    toc.push(e);
  }
  const json = Buffer.from(JSON.stringify({ version: 1, entries: toc }));
  const z = zstdCompressSync(json);
  const tocOffset = off + SKIPPABLE_HEADER;
  const footer = encodeFooter({
    offset: tocOffset,
    lengthCompressed: z.length,
    lengthUncompressed: json.length,
    manifestType: MANIFEST_TYPE_CRFS,
    offsetTarSplit: 0,
    lengthCompressedTarSplit: 0,
    lengthUncompressedTarSplit: 0,
  });
  const data = Buffer.concat([...parts, skippableFrame(z), skippableFrame(footer)]);
  const desc: Descriptor = {
    mediaType: MediaType.OciLayerZstd,
    digest: sha(data),
    size: data.length,
    annotations: {
      [ZstdChunkedAnnotation.ManifestChecksum]: sha(z),
      [ZstdChunkedAnnotation.ManifestPosition]: `${tocOffset}:${z.length}:${json.length}:${MANIFEST_TYPE_CRFS}`,
    },
  };
  return { desc, data };
}

/** An image manifest of `layers` (the config is not read by the delta path). */
export function manifestOf(layers: readonly Descriptor[]): ImageManifest {
  const config: Descriptor = { mediaType: MediaType.OciConfig, digest: sha(Buffer.from('{}')), size: 2 };
  return { schemaVersion: 2, mediaType: MediaType.OciManifest, config, layers: [...layers] };
}

/** Push crafted layers into `target`; their manifest. */
export async function pushLayers(
  target: MemoryTarget,
  layers: readonly { desc: Descriptor; data: Buffer }[],
): Promise<ImageManifest> {
  for (const l of layers) if (!(await target.exists(l.desc))) await target.push(l.desc, Readable.from([l.data]));
  return manifestOf(layers.map((l) => l.desc));
}
