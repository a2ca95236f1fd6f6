/**
 * The cache's store of verified TOCs and deployed images' manifests: a TOC the device verified
 * once is not requested again, every stored byte is verified on read (damage = absent, and
 * removed), a read-only store (tiu update --check) writes nothing, and pruning keeps exactly
 * what the images of existing snapshots need.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type { TreeEntry as BuildEntry } from '../../src/layer/entry.ts';
import { writeLayer } from '../../src/bundle/layer-writer.ts';
import { ZstdChunkedAnnotation } from '../../src/layer/toc.ts';
import { fetchLayerTocs, TocStore, tocJsonOf, type ImageManifests } from '../../src/deploy/delta/index.ts';
import { DeltaAnnotation } from '../../src/patch/media.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import type { Descriptor, Digest, ImageManifest } from '../../src/oci/types.ts';
import { MemoryTarget } from '../helpers/memory-target.ts';

const sha = (b: Uint8Array): Digest => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const hex = (d: string) => d.slice('sha256:'.length);

/** A MemoryTarget that counts its range requests. */
class CountingTarget extends MemoryTarget {
  ranges = 0;
  override async fetchRange(desc: Descriptor, start: number, end: number): Promise<Readable> {
    this.ranges++;
    return super.fetchRange(desc, start, end);
  }
}

describe('delta: the TOC and manifest store in the cache', () => {
  let dir: string;
  let cacheDir: string;
  let layer: Descriptor;
  let layerBytes: Buffer;
  let manifest: ImageManifest;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tiu-toc-store-'));
    const entries: BuildEntry[] = ['usr/a', 'usr/b'].map((path) => {
      const data = Buffer.from(`content of ${path}\n`.repeat(20));
      return {
        path,
        type: 'reg',
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtimeNs: 0n,
        size: data.length,
        xattrs: {},
        content: { data },
      };
    });
    layer = (await writeLayer(entries, join(dir, 'layer'), { compression: 'zstd' })).descriptor;
    layerBytes = await readFile(join(dir, 'layer'));
    manifest = {
      schemaVersion: 2,
      mediaType: MediaType.OciManifest,
      config: { mediaType: MediaType.OciConfig, digest: `sha256:${'1'.repeat(64)}`, size: 2 },
      layers: [layer],
    };
  });
  beforeEach(async () => {
    cacheDir = await mkdtemp(join(dir, 'cache-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const source = async (): Promise<CountingTarget> => {
    const t = new CountingTarget();
    await t.push(layer, Readable.from([layerBytes]));
    return t;
  };
  const checksum = () => layer.annotations![ZstdChunkedAnnotation.ManifestChecksum]!;

  it('keeps a TOC fetched by range and serves it next time without a TOC request (one probe byte)', async () => {
    const store = TocStore.open(cacheDir, { write: true });
    const first = await source();
    const a = await fetchLayerTocs(first, manifest, undefined, { store });
    assert.ok(a.ok);
    assert.equal(first.ranges, 1);
    assert.deepEqual(await readdir(join(cacheDir, 'tocs')), [hex(checksum())]);
    assert.equal(sha(await readFile(join(cacheDir, 'tocs', hex(checksum())))), checksum());

    const second = await source();
    const b = await fetchLayerTocs(second, manifest, undefined, { store });
    assert.ok(b.ok);
    // Only the probe that the source still serves ranges.
    assert.equal(second.ranges, 1);
    assert.equal(b.tocBytes, 1);
    assert.deepEqual(
      b.layers[0]!.map((e) => [e.path, e.digest]),
      a.layers[0]!.map((e) => [e.path, e.digest]),
    );
    // The JSON of a stored TOC is the one the layer's TOC decompresses to.
    assert.deepEqual(tocJsonOf(b.bytes[0]!, layer), tocJsonOf(a.bytes[0]!, layer));
    assert.match(tocJsonOf(b.bytes[0]!, layer).toString('latin1'), /usr\/a/);
  });

  it('a damaged stored TOC counts as absent, is removed and fetched again', async () => {
    const store = TocStore.open(cacheDir, { write: true });
    assert.ok((await fetchLayerTocs(await source(), manifest, undefined, { store })).ok);
    const path = join(cacheDir, 'tocs', hex(checksum()));
    const bytes = await readFile(path);
    bytes[bytes.length >> 1]! ^= 0xff;
    await writeFile(path, bytes);
    assert.equal(await store.compressedToc(layer), undefined);
    assert.deepEqual(await readdir(join(cacheDir, 'tocs')), []);
    const again = await source();
    const t = await fetchLayerTocs(again, manifest, undefined, { store });
    assert.ok(t.ok);
    assert.equal(again.ranges, 1);
    assert.ok(t.tocBytes > 1);
    assert.equal(sha(await readFile(path)), checksum());
  });

  it('a read-only store (--check) writes nothing', async () => {
    const store = TocStore.open(cacheDir, { write: false });
    assert.ok((await fetchLayerTocs(await source(), manifest, undefined, { store })).ok);
    await store.keepImage({
      root: { digest: sha(Buffer.from('{}')), bytes: Buffer.from('{}') },
      platform: { digest: sha(Buffer.from('{}')), bytes: Buffer.from('{}') },
    });
    assert.deepEqual(await readdir(cacheDir), []);
  });

  it('refuses to keep bytes that do not match their name', async () => {
    const store = TocStore.open(cacheDir, { write: true });
    await store.keepCompressedToc(checksum(), Buffer.from('not the TOC'));
    await store.keepTocJson(`sha256:${'3'.repeat(64)}`, Buffer.from('{}'));
    assert.deepEqual(await readdir(cacheDir), []);
  });

  it('knows the platform manifest of a deployed image and prunes to what the kept images need', async () => {
    const store = TocStore.open(cacheDir, { write: true });
    const json = Buffer.from('{"version":1,"entries":[]}');
    const withJson: Descriptor = {
      ...layer,
      annotations: { ...layer.annotations, [DeltaAnnotation.TocJsonDigest]: sha(json) },
    };
    const platformBytes = Buffer.from(JSON.stringify({ ...manifest, layers: [withJson] }));
    const platform: Descriptor = {
      mediaType: MediaType.OciManifest,
      digest: sha(platformBytes),
      size: platformBytes.length,
    };
    const indexBytes = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MediaType.OciIndex,
        manifests: [{ ...platform, platform: { os: 'linux', architecture: 'amd64' } }],
      }),
    );
    const image: ImageManifests = {
      root: { digest: sha(indexBytes), bytes: indexBytes },
      platform: { digest: platform.digest, bytes: platformBytes },
    };
    await store.keepImage(image);
    assert.ok((await fetchLayerTocs(await source(), manifest, undefined, { store })).ok);
    await store.keepTocJson(sha(json), json);
    const otherBytes = Buffer.from(JSON.stringify({ ...manifest, annotations: { other: 'yes' } }));
    const other = {
      root: { digest: sha(otherBytes), bytes: otherBytes },
      platform: { digest: sha(otherBytes), bytes: otherBytes },
    };
    await store.keepImage(other);
    await store.keepCompressedToc(sha(Buffer.from('stray')), Buffer.from('stray'));

    const amd64 = { os: 'linux', architecture: 'amd64' };
    const found = await store.image(image.root.digest, amd64);
    assert.equal(found?.digest, platform.digest);
    assert.equal(found.manifest.layers[0]!.digest, layer.digest);
    assert.equal(await store.image(image.root.digest, { os: 'linux', architecture: 'arm64' }), undefined);
    assert.equal((await store.image(other.root.digest, amd64))?.digest, other.root.digest);
    assert.deepEqual(await store.tocJson(withJson), json);

    await store.prune([image.root.digest], amd64);
    assert.deepEqual(
      (await readdir(join(cacheDir, 'manifests'))).sort(),
      [hex(image.root.digest), hex(platform.digest)].sort(),
    );
    assert.deepEqual(
      (await readdir(join(cacheDir, 'tocs'))).sort(),
      [hex(checksum()), `${hex(sha(json))}.json`].sort(),
    );
    assert.equal(await store.image(other.root.digest, amd64), undefined);
  });
});
