/**
 * What goes wrong between tiu and a registry: cut connections mid-blob (resumed by Range,
 * re-downloading no more than the missing part), 5xx and 429 answers (retried with backoff and
 * Retry-After), corrupted and oversized content (refused), registries without Range (RANGE_UNSUPPORTED),
 * blocked registries, and registries.conf mirrors serving pulls while the primary is down.
 * Also the referrers API path, on an in-harness registry that has it.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { isTiuError, type ErrorCode } from '../../src/errors.ts';
import { sha256 } from '../../src/oci/digest.ts';
import { copy } from '../../src/copy/copy.ts';
import { MemoryTarget } from '../helpers/memory-target.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import { parseReference, type DockerReference } from '../../src/oci/reference.ts';
import {
  openRegistryTarget,
  parseRegistriesConf,
  fallbackTag,
  type RegistryClientOptions,
} from '../../src/transport/registry/index.ts';
import { startCountingProxy, type CountingProxy } from '../helpers/counting-proxy.ts';
import { requireRoot } from '../helpers/env.ts';
import { startFakeRegistry, type FakeRegistry } from '../helpers/fake-registry.ts';
import { blobOf, makeImage, pushImage, readAll } from '../helpers/images.ts';
import { freePort } from '../helpers/ports.ts';
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts';

const code = (c: ErrorCode) => (e: unknown) => isTiuError(e, c);
const ref = (s: string): DockerReference => parseReference(`docker://${s}`) as DockerReference;
const fast: RegistryClientOptions = { registriesConf: false, backoffBaseMs: 5, backoffMaxMs: 20 };

describe('registry transport: faults, mirrors, referrers API', function () {
  this.timeout(60_000);

  describe('resume after a cut connection (distribution 2.8 behind a cutting proxy)', () => {
    let reg: RunningRegistry;
    let proxy: CountingProxy;
    before(async function () {
      requireRoot(this, 'runs a registry');
      reg = await startRegistry();
      proxy = await startCountingProxy(reg.port);
    });
    after(async () => {
      await proxy?.stop();
      await reg?.stop();
    });

    it('completes the blob and re-downloads only the missing part', async () => {
      const data = randomBytes(2 * 1024 * 1024 + 123);
      const b = blobOf(data, MediaType.OciLayerGzip);
      await openRegistryTarget(ref(`${reg.host}/tiu/resume`), fast).push(b.desc, Readable.from([data]));
      const t = openRegistryTarget(ref(`${proxy.host}/tiu/resume`), fast);
      const before = proxy.blobBytes();
      proxy.cut(700 * 1024, 2); // the first download and the first resume are both cut
      const got = await readAll(await t.fetch(b.desc));
      assert.ok(got.equals(data));
      const sent = proxy.blobBytes() - before;
      assert.ok(sent >= data.length, `sent ${sent}`);
      assert.ok(sent <= data.length + 64 * 1024, `re-downloaded ${sent - data.length} bytes more than the blob`);
      const ranges = proxy.requests
        .filter((q) => q.method === 'GET' && q.blob)
        .map((q) => q.range)
        .slice(-3);
      assert.equal(ranges[0], '');
      assert.match(ranges[1]!, /^bytes=\d+-$/);
      assert.ok(Number(/\d+/.exec(ranges[1]!)![0]) > 0);
      assert.match(ranges[2]!, /^bytes=\d+-$/);
      assert.ok(Number(/\d+/.exec(ranges[2]!)![0]) > Number(/\d+/.exec(ranges[1]!)![0]));
    });

    it('gives up after maxResumes with a typed error, never with unverified bytes', async () => {
      const data = randomBytes(300 * 1024);
      const b = blobOf(data, MediaType.OciLayerGzip);
      await openRegistryTarget(ref(`${reg.host}/tiu/resume`), fast).push(b.desc, Readable.from([data]));
      const t = openRegistryTarget(ref(`${proxy.host}/tiu/resume`), { ...fast, maxResumes: 1 });
      proxy.cut(100 * 1024, 5);
      await assert.rejects(
        async () => readAll(await t.fetch(b.desc)),
        (e: unknown) => isTiuError(e, 'REGISTRY_UNREACHABLE') && /cut 2 times/.test(e.message),
      );
      proxy.cut(0, 0);
    });
  });

  describe('an in-harness registry', () => {
    let fake: FakeRegistry;
    beforeEach(async () => {
      fake = await startFakeRegistry({ referrersApi: true });
    });
    afterEach(async () => {
      await fake?.stop();
    });

    it('uses the referrers API where the registry has one (no fallback tag written)', async () => {
      const t = openRegistryTarget(ref(`${fake.host}/tiu/api`), fast);
      const img = await makeImage();
      await pushImage(t, img, 'v1');
      const sig = await makeImage({
        subject: img.manifest.desc,
        artifactType: 'application/vnd.example.sig',
        annotations: { a: 'b' },
      });
      const sbom = await makeImage({ subject: img.manifest.desc, artifactType: 'application/vnd.example.sbom' });
      await pushImage(t, sig);
      await pushImage(t, sbom);
      const all = await t.referrers(img.manifest.desc);
      assert.deepEqual(all.map((d) => d.digest).sort(), [sig.manifest.desc.digest, sbom.manifest.desc.digest].sort());
      const only = await t.referrers(img.manifest.desc, 'application/vnd.example.sig');
      assert.deepEqual(
        only.map((d) => d.digest),
        [sig.manifest.desc.digest],
      );
      assert.equal(only[0]!.annotations?.a, 'b');
      assert.ok(fake.log.some((l) => l.startsWith('GET /v2/tiu/api/referrers/')));
      assert.ok(!fake.log.some((l) => l.includes(fallbackTag(img.manifest.desc.digest))), 'no fallback tag');
    });

    it('uploads with POST ?digest= (201), PATCH chunks following new Locations, and cross-repo mounts', async () => {
      const t = openRegistryTarget(ref(`${fake.host}/tiu/up`), { ...fast, chunkSize: 40_000 });
      const small = blobOf(randomBytes(1000), MediaType.OciLayerGzip);
      await t.push(small.desc, Readable.from([small.data]));
      assert.ok(fake.log.some((l) => l.startsWith('POST /v2/tiu/up/blobs/uploads/?digest=')));
      const big = blobOf(randomBytes(130_000), MediaType.OciLayerGzip);
      await t.push(big.desc, Readable.from([big.data]));
      assert.equal(fake.log.filter((l) => l.startsWith('PATCH /v2/tiu/up/blobs/uploads/')).length, 4);
      assert.deepEqual(await readAll(await t.fetch(big.desc)), big.data);
      const other = openRegistryTarget(ref(`${fake.host}/tiu/other`), fast);
      assert.equal(await other.exists(big.desc), true);
      assert.ok(fake.log.some((l) => l.includes('mount=') && l.includes('from=tiu%2Fup')));
    });

    it('streams a blob in one PATCH and commits it with an empty PUT ?digest=; a cut upload starts over from reopen()', async () => {
      const t = openRegistryTarget(ref(`${fake.host}/tiu/stream`), fast);
      const patches = () => fake.log.filter((l) => l.startsWith('PATCH /v2/tiu/stream/blobs/uploads/')).length;
      const posts = () => fake.log.filter((l) => l === 'POST /v2/tiu/stream/blobs/uploads/').length;
      const big = blobOf(randomBytes(300_000), MediaType.OciLayerGzip);
      let progress = 0;
      // Many small chunks, as a file or socket delivers them.
      const parts = Array.from({ length: 30 }, (_, i) => big.data.subarray(i * 10_000, (i + 1) * 10_000));
      await t.push(big.desc, Readable.from(parts), { onBytes: (n) => (progress += n) });
      assert.equal(patches(), 1);
      assert.equal(progress, big.data.length);
      assert.ok(
        fake.log.some(
          (l) =>
            l.startsWith('PUT /v2/tiu/stream/blobs/uploads/') &&
            l.includes(`digest=${encodeURIComponent(big.desc.digest)}`),
        ),
      );
      assert.deepEqual(await readAll(await t.fetch(big.desc)), big.data);

      // A 5xx on the PATCH, then a registry that keeps half of it: each time a new upload from a fresh stream.
      for (const fault of ['500', 'short'] as const) {
        const b = blobOf(randomBytes(200_000), MediaType.OciLayerGzip);
        if (fault === '500')
          fake.faults.push({ match: /^PATCH \/v2\/tiu\/stream\/blobs\/uploads\//, status: 500, times: 1 });
        else fake.shortPatches = 1;
        const p0 = posts();
        let reopened = 0;
        await t.push(b.desc, Readable.from([b.data]), {
          reopen: () => {
            reopened++;
            return Promise.resolve(Readable.from([b.data]));
          },
        });
        assert.equal(reopened, 1, fault);
        assert.equal(posts() - p0, 2, fault);
        assert.deepEqual(await readAll(await t.fetch(b.desc)), b.data);
      }
      fake.shortPatches = 0;

      // Without reopen() the failure is reported, typed, and nothing is committed.
      const lost = blobOf(randomBytes(200_000), MediaType.OciLayerGzip);
      fake.faults.push({ match: /^PATCH \/v2\/tiu\/stream\/blobs\/uploads\//, status: 500, times: 1 });
      await assert.rejects(t.push(lost.desc, Readable.from([lost.data])), code('REGISTRY_UNAVAILABLE'));
      assert.equal(await t.exists(lost.desc), false);

      // Content that fails verification is never committed, even though the PATCH carried all of it.
      const wrong = blobOf(randomBytes(200_000), MediaType.OciLayerGzip);
      const other = randomBytes(200_000);
      const puts = fake.log.filter((l) => l.startsWith('PUT ')).length;
      await assert.rejects(t.push(wrong.desc, Readable.from([other])), code('DIGEST_MISMATCH'));
      assert.equal(fake.log.filter((l) => l.startsWith('PUT ')).length, puts, 'no PUT ?digest= for unverified content');
      assert.equal(await t.exists(wrong.desc), false);
      // Trailing bytes fail at once.
      await assert.rejects(t.push(wrong.desc, Readable.from([wrong.data, Buffer.from('x')])), code('SIZE_MISMATCH'));
      assert.equal(await t.exists(wrong.desc), false);
    });

    it('copy() gives the destination a way to read the source again: a cut upload is retried, not fatal', async () => {
      const img = await makeImage({ layerBytes: [150_000] });
      const src = new MemoryTarget();
      await pushImage(src, img, 'v1');
      const dst = openRegistryTarget(ref(`${fake.host}/tiu/copyretry`), fast);
      fake.faults.push({ match: /^PATCH \/v2\/tiu\/copyretry\/blobs\/uploads\//, status: 503, times: 1 });
      const root = await copy(src, 'v1', dst, 'v1');
      assert.equal(root.digest, img.manifest.desc.digest);
      assert.equal(fake.log.filter((l) => l.startsWith('PATCH /v2/tiu/copyretry/')).length, 2);
      assert.deepEqual(await readAll(await dst.fetch(img.layers[0]!.desc)), img.layers[0]!.data);
    });

    it('recovers chunked uploads: a failed PATCH is resumed from the upload status, a short one is completed', async () => {
      const t = openRegistryTarget(ref(`${fake.host}/tiu/patch`), { ...fast, chunkSize: 40_000 });
      const big = blobOf(randomBytes(130_000), MediaType.OciLayerGzip);
      fake.faults.push({ match: /^PATCH \/v2\/tiu\/patch\/blobs\/uploads\//, status: 500, times: 1 });
      fake.shortPatches = 0;
      let progress = 0;
      await t.push(big.desc, Readable.from([big.data]), { onBytes: (n) => (progress += n) });
      assert.equal(progress, big.data.length);
      assert.ok(
        fake.log.some((l) => l.startsWith('GET /v2/tiu/patch/blobs/uploads/')),
        'asked for the upload status',
      );
      assert.deepEqual(await readAll(await t.fetch(big.desc)), big.data);
      const big2 = blobOf(randomBytes(130_000), MediaType.OciLayerGzip);
      fake.shortPatches = 2;
      await t.push(big2.desc, Readable.from([big2.data]));
      assert.equal(fake.shortPatches, 0);
      assert.deepEqual(await readAll(await t.fetch(big2.desc)), big2.data);
    });

    it('retries 5xx with backoff and 429 after Retry-After; gives up with a typed error', async () => {
      const img = await makeImage();
      const t = openRegistryTarget(ref(`${fake.host}/tiu/retry`), fast);
      await pushImage(t, img, 'v1');
      fake.faults.push({ match: /^HEAD \/v2\/tiu\/retry\/manifests\/v1/, status: 503, times: 2 });
      assert.equal((await t.resolve('v1')).digest, img.manifest.desc.digest);
      assert.equal(fake.log.filter((l) => l === 'HEAD /v2/tiu/retry/manifests/v1').length, 3);
      fake.faults.push({
        match: /^GET \/v2\/tiu\/retry\/blobs\//,
        status: 429,
        headers: { 'retry-after': '1' },
        times: 1,
      });
      const t0 = Date.now();
      assert.deepEqual(await readAll(await t.fetch(img.layers[0]!.desc)), img.layers[0]!.data);
      assert.ok(Date.now() - t0 >= 950, `waited ${Date.now() - t0} ms`);
      fake.faults.push({ match: /^HEAD \/v2\/tiu\/retry\/manifests\/v1/, status: 500, times: 100 });
      await assert.rejects(
        openRegistryTarget(ref(`${fake.host}/tiu/retry`), { ...fast, retries: 2 }).resolve('v1'),
        code('REGISTRY_UNAVAILABLE'),
      );
      fake.faults.length = 0;
    });

    it('refuses content that does not match its digest', async () => {
      const img = await makeImage();
      const t = openRegistryTarget(ref(`${fake.host}/tiu/bad`), fast);
      await pushImage(t, img, 'v1');
      fake.corrupt.add(img.layers[0]!.desc.digest);
      fake.corrupt.add(img.manifest.desc.digest);
      await assert.rejects(async () => readAll(await t.fetch(img.layers[0]!.desc)), code('DIGEST_MISMATCH'));
      const fresh = openRegistryTarget(ref(`${fake.host}/tiu/bad`), fast);
      await assert.rejects(async () => readAll(await fresh.fetch(img.manifest.desc)), code('DIGEST_MISMATCH'));
      // by tag: the bytes are hashed and compared with what the registry claims
      await assert.rejects(fresh.primary.getManifest('v1'), code('DIGEST_MISMATCH'));
    });

    it('refuses manifests over 4 MiB, by HEAD, GET and push', async () => {
      const big = Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: MediaType.OciManifest,
          annotations: { pad: 'x'.repeat(4 * 1024 * 1024 + 10) },
        }),
      );
      const d = fake.putRaw('tiu/big', 'huge', big, MediaType.OciManifest);
      const t = openRegistryTarget(ref(`${fake.host}/tiu/big`), fast);
      await assert.rejects(t.resolve('huge'), code('MANIFEST_TOO_LARGE'));
      await assert.rejects(t.primary.getManifest('huge'), code('MANIFEST_TOO_LARGE'));
      await assert.rejects(
        t.fetch({ mediaType: MediaType.OciManifest, digest: d as `sha256:${string}`, size: big.length }),
        code('MANIFEST_TOO_LARGE'),
      );
      await assert.rejects(
        t.push({ mediaType: MediaType.OciManifest, digest: sha256(big), size: big.length }, Readable.from([big])),
        code('MANIFEST_TOO_LARGE'),
      );
    });

    it('RANGE_UNSUPPORTED when a registry answers a Range request with 200', async () => {
      const noRange = await startFakeRegistry({ ranges: false });
      try {
        const data = randomBytes(10_000);
        const d = noRange.putBlob('tiu/r', data);
        const t = openRegistryTarget(ref(`${noRange.host}/tiu/r`), fast);
        const desc = { mediaType: MediaType.OciLayerZstd, digest: d as `sha256:${string}`, size: data.length };
        await assert.rejects(t.fetchRange(desc, 10, 20), code('RANGE_UNSUPPORTED'));
        // a whole-blob download still works there
        assert.deepEqual(await readAll(await t.fetch(desc)), data);
      } finally {
        await noRange.stop();
      }
    });
  });

  describe('registries.conf', () => {
    let mirror: RunningRegistry;
    let deadPort: number;
    let digest: string;
    before(async function () {
      requireRoot(this, 'runs a registry');
      mirror = await startRegistry();
      deadPort = await freePort();
      const img = await makeImage();
      await pushImage(openRegistryTarget(ref(`${mirror.host}/mirrored/os`), fast), img, '1');
      digest = img.manifest.desc.digest;
    });
    after(async () => {
      await mirror?.stop();
    });

    it('a mirror serves the pull when the primary is down; pushes still go to the primary only', async () => {
      const conf = parseRegistriesConf(
        `[[registry]]\nprefix = "registry.example.com/os"\nlocation = "127.0.0.1:${deadPort}/os"\n` +
          `[[registry.mirror]]\nlocation = "127.0.0.1:${await freePort()}/down"\n` +
          `[[registry.mirror]]\nlocation = "${mirror.host}/mirrored/os"\n`,
        'test.conf',
      );
      const t = openRegistryTarget(ref('registry.example.com/os:1'), { ...fast, registriesConf: conf, retries: 1 });
      const d = await t.resolve('1');
      assert.equal(d.digest, digest);
      assert.equal(t.lastPullEndpoint, `docker://${mirror.host}/mirrored/os`);
      const m = JSON.parse((await readAll(await t.fetch(d))).toString()) as {
        layers: { digest: string; size: number; mediaType: string }[];
      };
      const layer = m.layers[0]!;
      assert.equal((await readAll(await t.fetch(layer as never))).length, layer.size);
      assert.equal(t.primary.name, `docker://127.0.0.1:${deadPort}/os`);
      const extra = blobOf(randomBytes(10), MediaType.OciLayerGzip);
      await assert.rejects(t.push(extra.desc, Readable.from([extra.data])), code('REGISTRY_UNREACHABLE'));
    });

    it('pull-from-mirror digest-only and tag-only', async () => {
      const conf = (mode: string) =>
        parseRegistriesConf(
          `[[registry]]\nprefix = "registry.example.com/os"\nlocation = "127.0.0.1:${deadPort}/os"\n[[registry.mirror]]\nlocation = "${mirror.host}/mirrored/os"\npull-from-mirror = "${mode}"\n`,
          'test.conf',
        );
      const dOnly = openRegistryTarget(ref('registry.example.com/os:1'), {
        ...fast,
        registriesConf: conf('digest-only'),
        retries: 0,
      });
      await assert.rejects(dOnly.resolve('1'), code('REGISTRY_UNREACHABLE'));
      assert.equal((await dOnly.resolve(digest)).digest, digest);
      const tOnly = openRegistryTarget(ref('registry.example.com/os:1'), {
        ...fast,
        registriesConf: conf('tag-only'),
        retries: 0,
      });
      assert.equal((await tOnly.resolve('1')).digest, digest);
      const tOnlyFresh = openRegistryTarget(ref('registry.example.com/os:1'), {
        ...fast,
        registriesConf: conf('tag-only'),
        retries: 0,
      });
      await assert.rejects(tOnlyFresh.resolve(digest), code('REGISTRY_UNREACHABLE'));
    });

    it('a blocked registry is refused with REGISTRY_BLOCKED', () => {
      const conf = parseRegistriesConf(
        `[[registry]]\nprefix = "evil.example.com"\nblocked = true\n`,
        '/etc/containers/registries.conf.d/50-block.conf',
      );
      assert.throws(
        () => openRegistryTarget(ref('evil.example.com/os:1'), { ...fast, registriesConf: conf }),
        (e: unknown) =>
          isTiuError(e, 'REGISTRY_BLOCKED') &&
          e.message.includes('evil.example.com/os') &&
          e.message.includes('50-block.conf'),
      );
      // other registries are not affected
      assert.ok(openRegistryTarget(ref('good.example.com/os:1'), { ...fast, registriesConf: conf }));
    });
  });
});
