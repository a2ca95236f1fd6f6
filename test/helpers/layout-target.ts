/**
 * A small OCI image layout Target for the build tests, until the real one (src/content/
 * oci-layout.ts) is in main. Writes blobs/sha256/<hex>, index.json with ref.name annotations
 * and the oci-layout marker, which is all skopeo and umoci need to read it.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readFile, rename, stat, writeFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Target } from '../../src/content/interfaces.ts';
import { VerifyingStream, parseDigest } from '../../src/oci/digest.ts';
import type { Descriptor, ImageIndex } from '../../src/oci/types.ts';

export class TestLayoutTarget implements Target {
  readonly dir: string;
  readonly name: string;
  constructor(dir: string) {
    this.dir = dir;
    this.name = `oci:${dir}`;
  }
  blobPath(d: Pick<Descriptor, 'digest'>): string {
    const { algorithm, hex } = parseDigest(d.digest);
    return join(this.dir, 'blobs', algorithm, hex);
  }
  async #index(): Promise<ImageIndex> {
    try {
      return JSON.parse(await readFile(join(this.dir, 'index.json'), 'utf8')) as ImageIndex;
    } catch {
      return { schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [] };
    }
  }
  async push(desc: Descriptor, content: Readable): Promise<void> {
    const p = this.blobPath(desc);
    await mkdir(join(p, '..'), { recursive: true });
    const tmp = `${p}.tmp`;
    try {
      await pipeline(content, new VerifyingStream(desc), createWriteStream(tmp));
    } catch (e) {
      await rm(tmp, { force: true });
      throw e;
    }
    await rename(tmp, p);
    await writeFile(join(this.dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  }
  async exists(desc: Descriptor): Promise<boolean> {
    return stat(this.blobPath(desc)).then(
      () => true,
      () => false,
    );
  }
  fetch(desc: Descriptor): Promise<Readable> {
    return Promise.resolve(createReadStream(this.blobPath(desc)));
  }
  fetchRange(desc: Descriptor, start: number, end: number): Promise<Readable> {
    return Promise.resolve(createReadStream(this.blobPath(desc), { start, end: end - 1 }));
  }
  async resolve(reference: string): Promise<Descriptor> {
    const idx = await this.#index();
    const m = idx.manifests.find((d) => d.annotations?.['org.opencontainers.image.ref.name'] === reference || d.digest === reference);
    if (!m) throw new Error(`${reference} not in ${this.dir}`);
    return m;
  }
  async tag(desc: Descriptor, reference: string): Promise<void> {
    const idx = await this.#index();
    idx.manifests = idx.manifests.filter((d) => d.annotations?.['org.opencontainers.image.ref.name'] !== reference);
    idx.manifests.push({ mediaType: desc.mediaType, digest: desc.digest, size: desc.size, annotations: { 'org.opencontainers.image.ref.name': reference } });
    await writeFile(join(this.dir, 'index.json'), JSON.stringify(idx));
    await writeFile(join(this.dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  }
}
