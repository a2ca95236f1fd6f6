/**
 * Choosing a delta artifact among TO's referrers: only one whose FROM an image of a local
 * snapshot is (the booted one preferred over the pending default), only when the cache has
 * FROM's TOCs, and only when its manifest and index say what the device asked for; every other
 * case is a reason for the file delta, never an error.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { zstdCompressSync } from 'node:zlib';
import { chooseDelta, TocStore, type DeltaWanted } from '../../src/deploy/delta/index.ts';
import { TocDictionary } from '../../src/deploy/delta/toc-dictionary.ts';
import { ZstdChunkedAnnotation } from '../../src/layer/toc.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import type { Descriptor, Digest } from '../../src/oci/types.ts';
import { encodeDeltaIndex } from '../../src/patch/delta-index.ts';
import {
  DELTA_ARTIFACT_TYPE,
  DELTA_INDEX_MEDIA_TYPE,
  DELTA_PATCHES_MEDIA_TYPE,
  DeltaAnnotation,
} from '../../src/patch/media.ts';
import { MemoryTarget } from '../helpers/memory-target.ts';

const sha = (b: Uint8Array): Digest => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const platform = { os: 'linux', architecture: 'amd64' };

async function put(t: MemoryTarget, mediaType: string, data: Buffer, extra: Partial<Descriptor> = {}) {
  const d: Descriptor = { mediaType, digest: sha(data), size: data.length, ...extra };
  await t.push(d, Readable.from([data]));
  return d;
}

/** A one-layer image whose compressed TOC is `toc`; its manifest bytes and layer. */
function image(name: string): { bytes: Buffer; digest: Digest; layer: Descriptor; toc: Buffer } {
  const json = Buffer.from(JSON.stringify({ version: 1, entries: [{ type: 'reg', name: `usr/${name}` }] }));
  const toc = zstdCompressSync(json);
  const layer: Descriptor = {
    mediaType: MediaType.OciLayerZstd,
    digest: sha(Buffer.from(`layer ${name}`)),
    size: 100_000,
    annotations: {
      [ZstdChunkedAnnotation.ManifestChecksum]: sha(toc),
      [ZstdChunkedAnnotation.ManifestPosition]: `1000:${toc.length}:${json.length}:1`,
    },
  };
  const bytes = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaType.OciManifest,
      config: { mediaType: MediaType.OciConfig, digest: sha(Buffer.from(name)), size: name.length },
      layers: [layer],
    }),
  );
  return { bytes, digest: sha(bytes), layer, toc };
}

describe('delta: choosing a delta artifact', () => {
  let dir: string;
  let store: TocStore;
  let source: MemoryTarget;
  let subject: Descriptor;
  const booted = image('booted');
  const pending = image('pending');
  const untocd = image('no-tocs');
  const stranger = image('stranger');

  /** Push an artifact from `from` to the subject; `indexFrom` lets the index claim another FROM. */
  async function artifact(from: Digest, fromTocs: Digest[], indexFrom: Digest = from): Promise<Descriptor> {
    const index = await put(
      source,
      DELTA_INDEX_MEDIA_TYPE,
      encodeDeltaIndex({ from: indexFrom, to: subject.digest, fromTocs, tocs: [] }, [], Buffer.alloc(0)),
    );
    const patches = await put(source, DELTA_PATCHES_MEDIA_TYPE, Buffer.from(`patches from ${from}`));
    const empty = await put(source, 'application/vnd.oci.empty.v1+json', Buffer.from('{}'));
    return put(
      source,
      MediaType.OciManifest,
      Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: MediaType.OciManifest,
          artifactType: DELTA_ARTIFACT_TYPE,
          config: empty,
          layers: [index, patches],
          subject,
          annotations: { [DeltaAnnotation.From]: from },
        }),
      ),
    );
  }
  const checksum = (i: ReturnType<typeof image>) =>
    i.layer.annotations![ZstdChunkedAnnotation.ManifestChecksum]! as Digest;
  const want = (): DeltaWanted => ({
    subject,
    held: [booted, pending, untocd].map((i, n) => ({ digest: i.digest, root: `/.snapshots/${n}/snapshot` })),
    platform,
  });

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tiu-delta-choice-'));
    store = TocStore.open(dir, { write: true });
    for (const i of [booted, pending, untocd]) {
      await store.keepImage({
        root: { digest: i.digest, bytes: i.bytes },
        platform: { digest: i.digest, bytes: i.bytes },
      });
    }
    for (const i of [booted, pending]) await store.keepCompressedToc(checksum(i), i.toc);
    source = new MemoryTarget();
    subject = await put(source, MediaType.OciManifest, image('the new image').bytes);
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('prefers the booted image as FROM over the pending default, and reads the index', async () => {
    await artifact(pending.digest, [checksum(pending)]);
    const wanted = await artifact(booted.digest, [checksum(booted)]);
    const c = await chooseDelta(source, want(), store);
    assert.ok(c.chosen, 'reason' in c ? c.reason : '');
    assert.equal(c.chosen.artifact.digest, wanted.digest);
    assert.equal(c.chosen.from.digest, booted.digest);
    assert.equal(c.chosen.holder.root, '/.snapshots/0/snapshot');
    assert.equal(c.chosen.header.from, booted.digest);
    // FROM's TOCs stay as the store keeps them (compressed) until the dictionary needs them.
    assert.ok(c.chosen.fromTocs.every((t) => 'compressed' in t));
    const dictionary = new TocDictionary(c.chosen.fromTocs, c.chosen.from.manifest.layers, []);
    assert.deepEqual(JSON.parse(dictionary.from.toString()), {
      version: 1,
      entries: [{ type: 'reg', name: 'usr/booted' }],
    });
  });

  it('the pending default when only it has an artifact', async () => {
    await artifact(pending.digest, [checksum(pending)]);
    const c = await chooseDelta(source, want(), store);
    assert.equal(c.chosen?.from.digest, pending.digest);
  });

  it('ignores an artifact for a FROM no snapshot holds, or whose TOCs the cache lacks, with the reason', async () => {
    await artifact(stranger.digest, [checksum(stranger)]);
    const none = await chooseDelta(source, want(), store);
    assert.equal(none.chosen, undefined);
    assert.match('reason' in none ? none.reason : '', /no delta artifact is from an image a local snapshot holds/);
    await artifact(untocd.digest, [checksum(untocd)]);
    const noTocs = await chooseDelta(source, want(), store);
    assert.equal(noTocs.chosen, undefined);
    assert.match('reason' in noTocs ? noTocs.reason : '', /tables of contents of .* are not in the cache/);
  });

  it('an artifact whose index names another FROM or other FROM TOCs is not used; the index bytes are counted', async () => {
    const a = await artifact(booted.digest, [checksum(booted)], pending.digest);
    const c = await chooseDelta(source, want(), store);
    assert.ok(!c.chosen);
    assert.match(c.reason, new RegExp(`delta artifact ${a.digest} cannot be used: its index is for`));
    assert.ok((c.indexBytes ?? 0) > 0);
    await rm(dir, { recursive: true, force: true });
    source = new MemoryTarget();
    subject = await put(source, MediaType.OciManifest, image('the new image').bytes);
    store = TocStore.open(dir, { write: true });
    await store.keepImage({
      root: { digest: booted.digest, bytes: booted.bytes },
      platform: { digest: booted.digest, bytes: booted.bytes },
    });
    await store.keepCompressedToc(checksum(booted), booted.toc);
    await artifact(booted.digest, [checksum(pending)]);
    const d = await chooseDelta(source, want(), store);
    assert.match(d.chosen ? '' : d.reason, /other FROM tables of contents/);
  });

  it('a source without referrers: no artifact, a reason', async () => {
    const plain = Object.assign(Object.create(source) as MemoryTarget, { referrers: undefined });
    const c = await chooseDelta(plain, want(), store);
    assert.match(c.chosen ? '' : c.reason, /lists no referrers/);
  });
});
