/**
 * The registry Target against Debian's docker-registry (distribution 2.8.2) over plain http on
 * 127.0.0.1: manifests, tags with pagination, delete, blobs (single POST, monolithic PUT,
 * chunked PATCH), verification on push, ranges, cross-repository mounts, and the referrers
 * tag-schema fallback (2.8 has no referrers API).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { isTiuError, type ErrorCode } from '../../src/errors.ts';
import { sha256 } from '../../src/oci/digest.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import { parseReference, type DockerReference } from '../../src/oci/reference.ts';
import { copy } from '../../src/copy/copy.ts';
import {
  openRegistryTarget,
  RegistrySession,
  fallbackTag,
  setHttpLogger,
  type RegistryTarget,
} from '../../src/transport/registry/index.ts';
import { requireRoot } from '../helpers/env.ts';
import { blobOf, makeImage, pushImage, readAll } from '../helpers/images.ts';
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts';

const code = (c: ErrorCode) => (e: unknown) => isTiuError(e, c);

describe('registry transport: distribution 2.8 over http', function () {
  this.timeout(60_000);
  let reg: RunningRegistry;
  let session: RegistrySession;
  const open = (name: string, extra = {}): RegistryTarget =>
    openRegistryTarget(parseReference(`docker://${reg.host}/${name}`) as DockerReference, {
      registriesConf: false,
      session,
      ...extra,
    });

  before(async function () {
    requireRoot(this, 'runs a registry');
    reg = await startRegistry();
    session = new RegistrySession({ registriesConf: false } as never);
  });
  after(async () => {
    await session?.close();
    await reg?.stop();
  });

  it('pushes an image, resolves and fetches it back, lists and deletes', async () => {
    const t = open('tiu/basic');
    const img = await makeImage({ layerBytes: [3000, 200_000] });
    await pushImage(t, img, 'v1');
    const d = await t.resolve('v1');
    assert.deepEqual(d, img.manifest.desc);
    assert.deepEqual(await t.resolve(img.manifest.desc.digest), img.manifest.desc);
    for (const b of img.all) {
      assert.equal(await t.exists(b.desc), true);
      assert.deepEqual(await readAll(await t.fetch(b.desc)), b.data);
    }
    for (const tag of ['v2', 'v3', 'v4', 'v5']) await t.tag(img.manifest.desc, tag);
    const paged = open('tiu/basic', { tagPageSize: 2 });
    assert.deepEqual((await paged.tags()).sort(), ['v1', 'v2', 'v3', 'v4', 'v5']);
    await t.delete(img.manifest.desc);
    await assert.rejects(t.resolve('v1'), code('CONTENT_NOT_FOUND'));
    await assert.rejects(t.resolve(img.manifest.desc.digest), code('CONTENT_NOT_FOUND'));
    assert.equal(await t.exists(img.manifest.desc), false);
  });

  it('uploads large blobs in PATCH chunks following the latest Location', async () => {
    const t = open('tiu/chunked', { chunkSize: 64 * 1024 });
    const data = randomBytes(300 * 1024 + 17);
    const b = blobOf(data, MediaType.OciLayerGzip);
    let progress = 0;
    await t.push(b.desc, Readable.from([data.subarray(0, 100_000), data.subarray(100_000)]), {
      onBytes: (n) => (progress += n),
    });
    assert.equal(progress, data.length);
    assert.deepEqual(await readAll(await t.fetch(b.desc)), data);
  });

  it('refuses content that does not match its digest or size, and keeps nothing', async () => {
    for (const size of [1000, 200_000, 300_000]) {
      const t = open('tiu/verify', { chunkSize: 128 * 1024 });
      const data = randomBytes(size);
      const b = blobOf(data, MediaType.OciLayerGzip);
      const bad = Buffer.from(data);
      bad[size - 1] = bad[size - 1]! ^ 1;
      await assert.rejects(t.push(b.desc, Readable.from([bad])), code('DIGEST_MISMATCH'));
      assert.equal(await t.exists(b.desc), false);
      await assert.rejects(t.push(b.desc, Readable.from([data.subarray(0, size - 10)])), code('SIZE_MISMATCH'));
      assert.equal(await t.exists(b.desc), false);
      await assert.rejects(t.push(b.desc, Readable.from([data, Buffer.from('xx')])), (e: unknown) =>
        isTiuError(e, 'SIZE_MISMATCH'),
      );
      assert.equal(await t.exists(b.desc), false);
    }
    // a manifest whose bytes are not what its descriptor says
    const t = open('tiu/verify');
    const img = await makeImage();
    for (const b of [...img.layers, img.config]) await t.push(b.desc, Readable.from([b.data]));
    await assert.rejects(
      t.push(
        img.manifest.desc,
        Readable.from([Buffer.from(img.manifest.data.toString().replace('"schemaVersion":2', '"schemaVersion":3'))]),
      ),
      code('DIGEST_MISMATCH'),
    );
    assert.equal(await t.exists(img.manifest.desc), false);
  });

  it('serves byte ranges with HTTP Range', async () => {
    const t = open('tiu/range');
    const data = randomBytes(100_000);
    const b = blobOf(data, MediaType.OciLayerZstd);
    await t.push(b.desc, Readable.from([data]));
    assert.deepEqual(await readAll(await t.fetchRange(b.desc, 1000, 51_000)), data.subarray(1000, 51_000));
    assert.deepEqual(await readAll(await t.fetchRange(b.desc, 99_999, 100_000)), data.subarray(99_999));
    await assert.rejects(t.fetchRange(b.desc, 0, 100_001), code('RANGE_INVALID'));
  });

  it('mounts a blob seen in another repository instead of uploading it', async () => {
    const a = open('tiu/mount-a');
    const data = randomBytes(50_000);
    const b = blobOf(data, MediaType.OciLayerGzip);
    await a.push(b.desc, Readable.from([data]));
    const other = open('tiu/mount-b');
    // exists() on the destination mounts from tiu/mount-a (no bytes are sent)
    assert.equal(await other.exists(b.desc), true);
    assert.deepEqual(await readAll(await other.fetch(b.desc)), data);
    // a direct mount call: 201
    const c = open('tiu/mount-c');
    assert.equal(await c.primary.mountBlob(b.desc, 'tiu/mount-a'), true);
    // from a repository that lacks it: the registry opens an upload instead
    const missing = blobOf(randomBytes(10), MediaType.OciLayerGzip);
    const r = await c.primary.mountBlob(missing.desc, 'tiu/mount-a');
    assert.ok(r instanceof URL, 'an upload session');
    await c.primary.pushBlob(missing.desc, Readable.from([missing.data]), { session: r });
    assert.equal(await c.exists(missing.desc), true);
  });

  it('copy() between two repositories of one registry mounts the blobs instead of uploading them', async () => {
    const src = open('tiu/copy-src');
    const img = await makeImage({ layerBytes: [100_000, 200_000] });
    await pushImage(src, img, '1');
    const lines: string[] = [];
    const prev = setHttpLogger((l) => lines.push(l));
    try {
      const dst = open('tiu/copy-dst');
      const root = await copy(open('tiu/copy-src'), '1', dst, '1');
      assert.equal(root.digest, img.manifest.desc.digest);
      for (const b of img.all) assert.deepEqual(await readAll(await dst.fetch(b.desc)), b.data);
    } finally {
      setHttpLogger(prev);
    }
    const mounted = lines.filter((l) => /POST \S+\/v2\/tiu\/copy-dst\/blobs\/uploads\/ -> 201/.test(l));
    assert.equal(mounted.length, img.layers.length + 1, lines.join('\n'));
    assert.ok(!lines.some((l) => /PUT \S+\/v2\/tiu\/copy-dst\/blobs\/uploads\//.test(l)), 'no blob was uploaded');
    assert.ok(!lines.some((l) => /GET \S+\/v2\/tiu\/copy-src\/blobs\//.test(l)), 'no blob was downloaded');
  });

  it('keeps referrers in the sha256-<hex> tag index, without losing concurrent entries', async () => {
    const t = open('tiu/referrers');
    const img = await makeImage();
    await pushImage(t, img, 'img');
    assert.deepEqual(await t.referrers(img.manifest.desc), []);
    const refs = await Promise.all(
      [0, 1, 2, 3].map((i) =>
        makeImage({
          subject: img.manifest.desc,
          artifactType: i % 2 ? 'application/vnd.example.sbom' : 'application/vnd.example.sig',
          annotations: { n: String(i) },
        }),
      ),
    );
    // blobs first, then the four manifests at once
    for (const r of refs) for (const b of [...r.layers, r.config]) await t.push(b.desc, Readable.from([b.data]));
    await Promise.all(refs.map((r) => t.push(r.manifest.desc, Readable.from([r.manifest.data]))));
    const all = await t.referrers(img.manifest.desc);
    assert.deepEqual(all.map((d) => d.digest).sort(), refs.map((r) => r.manifest.desc.digest).sort());
    const sigs = await t.referrers(img.manifest.desc, 'application/vnd.example.sig');
    assert.deepEqual(sigs.map((d) => d.annotations?.n).sort(), ['0', '2']);
    // a second process (another Target) adds one more: the index keeps all
    const t2 = open('tiu/referrers');
    const fifth = await makeImage({ subject: img.manifest.desc, artifactType: 'application/vnd.example.sig' });
    await pushImage(t2, fifth);
    assert.equal((await t.referrers(img.manifest.desc)).length, 5);
    // the fallback index is an ordinary tag
    const idx = await t.resolve(fallbackTag(img.manifest.desc.digest));
    assert.equal(idx.mediaType, MediaType.OciIndex);
    // deleting a referrer takes it out of the index
    await t.delete(refs[0]!.manifest.desc);
    assert.deepEqual(
      (await t.referrers(img.manifest.desc)).map((d) => d.digest).sort(),
      [...refs.slice(1).map((r) => r.manifest.desc.digest), fifth.manifest.desc.digest].sort(),
    );
    assert.equal((await t.resolve('img')).digest, img.manifest.desc.digest);
  });

  it('fetching what is not there is CONTENT_NOT_FOUND', async () => {
    const t = open('tiu/none');
    const b = blobOf(randomBytes(10), MediaType.OciLayerGzip);
    await assert.rejects(t.fetch(b.desc), code('CONTENT_NOT_FOUND'));
    await assert.rejects(
      t.fetch({ mediaType: MediaType.OciManifest, digest: sha256('x'), size: 1 }),
      code('CONTENT_NOT_FOUND'),
    );
    await assert.rejects(t.resolve('nope'), code('CONTENT_NOT_FOUND'));
    assert.deepEqual(await t.tags(), []);
  });
});
