/**
 * A minimal in-memory Target for the trust unit tests (content by digest, tags), with a hook
 * to tamper with stored bytes. Verifies digests on push like the real targets do.
 */
import { Readable } from 'node:stream';
import { text } from 'node:stream/consumers';
import type { Target } from '../../src/content/interfaces.ts';
import { NotFoundError } from '../../src/content/errors.ts';
import { verifyBuffer } from '../../src/oci/digest.ts';
import type { Descriptor } from '../../src/oci/types.ts';

export class TestTarget implements Target {
  readonly name: string;
  readonly blobs = new Map<string, Buffer>();
  readonly tagsMap = new Map<string, Descriptor>();
  readonly manifests = new Map<string, Descriptor>();
  constructor(name = 'memory:test') {
    this.name = name;
  }
  fetch(desc: Descriptor): Promise<Readable> {
    const b = this.blobs.get(desc.digest);
    if (!b) return Promise.reject(new NotFoundError(desc.digest, this.name));
    return Promise.resolve(Readable.from([b]));
  }
  async push(desc: Descriptor, content: Readable): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of content) chunks.push(Buffer.from(c as Buffer));
    const data = Buffer.concat(chunks);
    verifyBuffer(desc, data);
    this.blobs.set(desc.digest, data);
    this.manifests.set(desc.digest, { mediaType: desc.mediaType, digest: desc.digest, size: desc.size });
  }
  exists(desc: Descriptor): Promise<boolean> {
    return Promise.resolve(this.blobs.has(desc.digest));
  }
  resolve(reference: string): Promise<Descriptor> {
    const d = this.tagsMap.get(reference) ?? (reference.includes(':') ? this.manifests.get(reference) : undefined);
    if (!d) return Promise.reject(new NotFoundError(`reference ${reference}`, this.name));
    return Promise.resolve(d);
  }
  tag(desc: Descriptor, reference: string): Promise<void> {
    if (!this.blobs.has(desc.digest)) return Promise.reject(new NotFoundError(desc.digest, this.name));
    this.tagsMap.set(reference, { mediaType: desc.mediaType, digest: desc.digest, size: desc.size });
    return Promise.resolve();
  }
  /** Manifests pushed here whose `subject` is `desc`. */
  referrers(desc: Descriptor, artifactType?: string): Promise<Descriptor[]> {
    const out: Descriptor[] = [];
    for (const [digest, m] of this.manifests) {
      if (m.mediaType !== 'application/vnd.oci.image.manifest.v1+json') continue;
      let doc: { subject?: { digest?: string }; artifactType?: string; config?: { mediaType?: string } };
      try {
        doc = JSON.parse(this.blobs.get(digest)!.toString()) as typeof doc;
      } catch {
        continue;
      }
      const at = doc.artifactType ?? doc.config?.mediaType;
      if (doc.subject?.digest === desc.digest && (artifactType === undefined || at === artifactType))
        out.push({ ...m, ...(at ? { artifactType: at } : {}) });
    }
    return Promise.resolve(out);
  }
  tags(): Promise<string[]> {
    return Promise.resolve([...this.tagsMap.keys()]);
  }
  /** Store bytes under a digest without checking (to simulate tampering). */
  putRaw(digest: string, data: Buffer): void {
    this.blobs.set(digest, data);
  }
  async json(desc: Descriptor): Promise<unknown> {
    return JSON.parse(await text(await this.fetch(desc))) as unknown;
  }
}

/** Store a small OCI image (config + one layer + manifest) in `t` and tag it; returns the manifest descriptor. */
export async function putImage(t: Target, tag: string, content = 'hello'): Promise<Descriptor> {
  const { createHash } = await import('node:crypto');
  const d = (mediaType: string, b: Buffer): Descriptor => ({
    mediaType,
    digest: `sha256:${createHash('sha256').update(b).digest('hex')}`,
    size: b.length,
  });
  const layer = Buffer.from(content);
  const layerDesc = d('application/vnd.oci.image.layer.v1.tar', layer);
  const config = Buffer.from(
    JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [layerDesc.digest] } }),
  );
  const configDesc = d('application/vnd.oci.image.config.v1+json', config);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: configDesc,
      layers: [layerDesc],
    }),
  );
  const mDesc = d('application/vnd.oci.image.manifest.v1+json', manifest);
  for (const [desc, b] of [
    [layerDesc, layer],
    [configDesc, config],
    [mDesc, manifest],
  ] as const) {
    if (!(await t.exists(desc))) await t.push(desc, Readable.from([b]));
  }
  await t.tag(mDesc, tag);
  return mDesc;
}

/** A cosign signature manifest for `subject`, put together by hand from the cosign spec, without tiu's code. */
export async function handMadeSignature(
  t: Pick<Target, 'push' | 'tag'>,
  subject: Descriptor,
  payload: Buffer,
  sigB64: string,
): Promise<void> {
  const { createHash } = await import('node:crypto');
  const sha = (b: Buffer): `sha256:${string}` => `sha256:${createHash('sha256').update(b).digest('hex')}`;
  const layer = {
    mediaType: 'application/vnd.dev.cosign.simplesigning.v1+json',
    size: payload.length,
    digest: sha(payload),
    annotations: { 'dev.cosignproject.cosign/signature': sigB64 },
  };
  const config = Buffer.from(
    JSON.stringify({
      architecture: '',
      created: '0001-01-01T00:00:00Z',
      history: [{ created: '0001-01-01T00:00:00Z' }],
      os: '',
      rootfs: { type: 'layers', diff_ids: [layer.digest] },
      config: {},
    }),
  );
  const configDesc = {
    mediaType: 'application/vnd.oci.image.config.v1+json',
    size: config.length,
    digest: sha(config),
  };
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: configDesc,
      layers: [layer],
    }),
  );
  const mDesc = {
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    size: manifest.length,
    digest: sha(manifest),
  };
  await t.push(layer, Readable.from([payload]));
  await t.push(configDesc, Readable.from([config]));
  await t.push(mDesc, Readable.from([manifest]));
  await t.tag(mDesc, `sha256-${subject.digest.slice(7)}.sig`);
}
