/**
 * The contract every Target passes (DESIGN.md §2): push/fetch/exists, verify-on-push (a bad
 * digest or size leaves nothing behind), resolve, tag, referrers, tags, ranges. It speaks only
 * through the Target interface, so it runs against memory, OCI layouts, archives and
 * registries alike. Content is pushed the way a registry needs it: blobs before manifests.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { isTiuError, type ErrorCode } from '../../src/errors.ts';
import type { Target } from '../../src/content/interfaces.ts';
import { sha256 } from '../../src/oci/digest.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import type { Descriptor } from '../../src/oci/types.ts';

export interface ContractFeatures {
  /** The Target lists referrers (default true: the test asserts it does). */
  referrers?: boolean;
  /** The Target lists tags (default true). */
  tags?: boolean;
  /** The Target serves byte ranges (default true). */
  ranges?: boolean;
}

export interface Made {
  target: Target;
  cleanup(): Promise<void>;
}

async function readAll(s: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of s) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

function descOf(data: Buffer, mediaType: string): Descriptor {
  return { mediaType, digest: sha256(data), size: data.length };
}

async function put(t: Target, data: Buffer, mediaType: string): Promise<Descriptor> {
  const d = descOf(data, mediaType);
  await t.push(d, Readable.from([data]));
  return d;
}

/** A small random image: a layer, a config, a manifest (optionally with a subject). */
async function pushImage(
  t: Target,
  opts: { subject?: Descriptor; artifactType?: string; annotations?: Record<string, string> } = {},
) {
  const layer = await put(t, randomBytes(1500), MediaType.OciLayerGzip);
  const configBytes = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      rootfs: { type: 'layers', diff_ids: [sha256(randomBytes(8))] },
    }),
  );
  const config = await put(t, configBytes, MediaType.OciConfig);
  const doc: Record<string, unknown> = { schemaVersion: 2, mediaType: MediaType.OciManifest, config, layers: [layer] };
  if (opts.artifactType) doc.artifactType = opts.artifactType;
  if (opts.subject) doc.subject = opts.subject;
  if (opts.annotations) doc.annotations = opts.annotations;
  const manifestBytes = Buffer.from(JSON.stringify(doc));
  const manifest = await put(t, manifestBytes, MediaType.OciManifest);
  return { layer, config, manifest, manifestBytes };
}

const code = (c: ErrorCode) => (e: unknown) => isTiuError(e, c);

export function runTargetContract(name: string, make: () => Promise<Made>, features: ContractFeatures = {}): void {
  const f = { referrers: true, tags: true, ranges: true, ...features };
  describe(`Target contract: ${name}`, function () {
    let made: Made | undefined;
    let t: Target;
    beforeEach(async function () {
      made = await make();
      t = made.target;
    });
    afterEach(async function () {
      await made?.cleanup();
      made = undefined;
    });

    it('stores and returns content; exists tells what is there', async () => {
      const data = randomBytes(3000);
      const d = descOf(data, MediaType.OciLayerGzip);
      assert.equal(await t.exists(d), false);
      await t.push(d, Readable.from([data.subarray(0, 1000), data.subarray(1000)]));
      assert.equal(await t.exists(d), true);
      assert.deepEqual(await readAll(await t.fetch(d)), data);
      // pushing the same content again is harmless
      await t.push(d, Readable.from([data]));
      assert.deepEqual(await readAll(await t.fetch(d)), data);
    });

    it('fetching what is not there is CONTENT_NOT_FOUND', async () => {
      const d = descOf(randomBytes(10), MediaType.OciLayerGzip);
      await assert.rejects(async () => readAll(await t.fetch(d)), code('CONTENT_NOT_FOUND'));
    });

    it('rejects content whose digest does not match and keeps nothing', async () => {
      const data = randomBytes(2000);
      const d = descOf(data, MediaType.OciLayerGzip);
      const altered = Buffer.from(data);
      altered[1000] = altered[1000]! ^ 0xff;
      await assert.rejects(t.push(d, Readable.from([altered])), code('DIGEST_MISMATCH'));
      assert.equal(await t.exists(d), false);
      await assert.rejects(async () => readAll(await t.fetch(d)), code('CONTENT_NOT_FOUND'));
    });

    it('rejects content of the wrong size and keeps nothing', async () => {
      const data = randomBytes(2000);
      const d = descOf(data, MediaType.OciLayerGzip);
      await assert.rejects(t.push(d, Readable.from([data.subarray(0, 1999)])), (e: unknown) =>
        isTiuError(e, 'SIZE_MISMATCH'),
      );
      assert.equal(await t.exists(d), false);
      await assert.rejects(
        t.push(d, Readable.from([data, Buffer.from('x')])),
        (e: unknown) => isTiuError(e, 'SIZE_MISMATCH') || isTiuError(e, 'SIZE_MISMATCH'),
      );
      assert.equal(await t.exists(d), false);
    });

    it('resolves a manifest by digest', async () => {
      const { manifest } = await pushImage(t);
      const r = await t.resolve(manifest.digest);
      assert.equal(r.digest, manifest.digest);
      assert.equal(r.size, manifest.size);
      assert.equal(r.mediaType, MediaType.OciManifest);
    });

    it('tags, resolves tags, moves a tag, and says CONTENT_NOT_FOUND for unknown tags', async () => {
      const a = await pushImage(t);
      const b = await pushImage(t);
      await assert.rejects(t.resolve('v1'), code('CONTENT_NOT_FOUND'));
      await t.tag(a.manifest, 'v1');
      let r = await t.resolve('v1');
      assert.equal(r.digest, a.manifest.digest);
      assert.equal(r.size, a.manifest.size);
      assert.equal(r.mediaType, MediaType.OciManifest);
      assert.deepEqual(await readAll(await t.fetch(r)), a.manifestBytes);
      await t.tag(b.manifest, 'v1');
      r = await t.resolve('v1');
      assert.equal(r.digest, b.manifest.digest);
      await t.tag(a.manifest, 'v0');
      assert.equal((await t.resolve('v0')).digest, a.manifest.digest);
      assert.equal((await t.resolve('v1')).digest, b.manifest.digest);
    });

    it('tags an index and resolves it with its media type', async () => {
      const a = await pushImage(t);
      const b = await pushImage(t);
      const idx = Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: MediaType.OciIndex,
          manifests: [
            { ...a.manifest, platform: { architecture: 'amd64', os: 'linux' } },
            { ...b.manifest, platform: { architecture: 'arm64', os: 'linux' } },
          ],
        }),
      );
      const d = await put(t, idx, MediaType.OciIndex);
      await t.tag(d, 'multi');
      const r = await t.resolve('multi');
      assert.equal(r.digest, d.digest);
      assert.equal(r.mediaType, MediaType.OciIndex);
    });

    if (f.tags) {
      it('lists tags', async () => {
        assert.ok(t.tags, 'this Target should list tags');
        const a = await pushImage(t);
        await t.tag(a.manifest, 'one');
        await t.tag(a.manifest, 'two');
        const tags = await t.tags();
        assert.ok(tags.includes('one') && tags.includes('two'), `tags: ${tags.join(',')}`);
      });
    }

    if (f.referrers) {
      it('lists referrers by subject, filtered by artifactType', async () => {
        assert.ok(t.referrers, 'this Target should list referrers');
        const img = await pushImage(t);
        await t.tag(img.manifest, 'img');
        assert.deepEqual(await t.referrers(img.manifest), []);
        const sig = await pushImage(t, {
          subject: img.manifest,
          artifactType: 'application/vnd.example.sig',
          annotations: { 'org.example.k': 'v' },
        });
        const sbom = await pushImage(t, { subject: img.manifest, artifactType: 'application/vnd.example.sbom' });
        // a referrer of the referrer
        const sigsig = await pushImage(t, { subject: sig.manifest, artifactType: 'application/vnd.example.sig' });
        const all = await t.referrers(img.manifest);
        assert.deepEqual(all.map((d) => d.digest).sort(), [sig.manifest.digest, sbom.manifest.digest].sort());
        const sigOnly = await t.referrers(img.manifest, 'application/vnd.example.sig');
        assert.deepEqual(
          sigOnly.map((d) => d.digest),
          [sig.manifest.digest],
        );
        assert.equal(sigOnly[0]!.artifactType, 'application/vnd.example.sig');
        assert.equal(sigOnly[0]!.annotations?.['org.example.k'], 'v');
        assert.deepEqual(
          (await t.referrers(sig.manifest)).map((d) => d.digest),
          [sigsig.manifest.digest],
        );
        // the image tag still names the image
        assert.equal((await t.resolve('img')).digest, img.manifest.digest);
      });
    }

    if (f.ranges) {
      it('serves byte ranges', async () => {
        assert.ok(t.fetchRange, 'this Target should serve ranges');
        const data = randomBytes(5000);
        const d = await put(t, data, MediaType.OciLayerZstd);
        assert.deepEqual(await readAll(await t.fetchRange(d, 100, 1100)), data.subarray(100, 1100));
        assert.deepEqual(await readAll(await t.fetchRange(d, 4990, 5000)), data.subarray(4990));
        assert.equal((await readAll(await t.fetchRange(d, 7, 7))).length, 0);
        await assert.rejects(async () => readAll(await t.fetchRange!(d, 10, 5001)), code('RANGE_INVALID'));
      });
    }
  });
}
