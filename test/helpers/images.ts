/** Small, real OCI images for transport tests: a gzip tar layer, a config, a manifest. */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import type { Target } from '../../src/content/interfaces.ts';
import { sha256 } from '../../src/oci/digest.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import type { Descriptor } from '../../src/oci/types.ts';

export async function tarOf(files: Record<string, Buffer>): Promise<Buffer> {
  const pack = tar.pack();
  for (const [name, data] of Object.entries(files))
    pack.entry({ name, size: data.length, mtime: new Date(0), mode: 0o644 }, data);
  pack.finalize();
  const parts: Buffer[] = [];
  for await (const c of pack) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

export interface Blob {
  desc: Descriptor;
  data: Buffer;
}

export interface TestImage {
  layers: Blob[];
  config: Blob;
  manifest: Blob;
  /** Everything in push order (blobs first). */
  all: Blob[];
}

export function blobOf(data: Buffer, mediaType: string): Blob {
  return { desc: { mediaType, digest: sha256(data), size: data.length }, data };
}

export async function makeImage(
  opts: {
    layerBytes?: number[];
    subject?: Descriptor;
    artifactType?: string;
    annotations?: Record<string, string>;
  } = {},
): Promise<TestImage> {
  const layers: Blob[] = [];
  const diffIds: string[] = [];
  for (const [i, n] of (opts.layerBytes ?? [2000]).entries()) {
    const t = await tarOf({ [`file${i}`]: randomBytes(n) });
    diffIds.push(sha256(t));
    layers.push(blobOf(gzipSync(t, { level: 1 }), MediaType.OciLayerGzip));
  }
  const config = blobOf(
    Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: diffIds } })),
    MediaType.OciConfig,
  );
  const doc: Record<string, unknown> = {
    schemaVersion: 2,
    mediaType: MediaType.OciManifest,
    config: config.desc,
    layers: layers.map((l) => l.desc),
  };
  if (opts.artifactType) doc.artifactType = opts.artifactType;
  if (opts.subject) doc.subject = opts.subject;
  if (opts.annotations) doc.annotations = opts.annotations;
  const manifest = blobOf(Buffer.from(JSON.stringify(doc)), MediaType.OciManifest);
  return { layers, config, manifest, all: [...layers, config, manifest] };
}

export async function pushImage(t: Target, img: TestImage, tag?: string): Promise<void> {
  for (const b of img.all) await t.push(b.desc, Readable.from([b.data]));
  if (tag) await t.tag(img.manifest.desc, tag);
}

export async function readAll(s: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}
