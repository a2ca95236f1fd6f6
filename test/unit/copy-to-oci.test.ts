import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { text } from 'node:stream/consumers';
import { MemoryTarget } from '../helpers/memory-target.ts';
import type { Target } from '../../src/content/interfaces.ts';
import { copy } from '../../src/copy/copy.ts';
import { dockerConfigToOci } from '../../src/copy/to-oci.ts';
import { isTiuError } from '../../src/errors.ts';
import { sha256 } from '../../src/oci/digest.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import type { Descriptor, ImageIndex, ImageManifest } from '../../src/oci/types.ts';

async function put(t: Target, data: Buffer, mediaType: string): Promise<Descriptor> {
  const d = { mediaType, digest: sha256(data), size: data.length };
  await t.push(d, Readable.from([data]));
  return d;
}

const DOCKER_CONFIG = {
  architecture: 'amd64',
  config: {
    Hostname: '',
    AttachStdin: false,
    Env: ['PATH=/usr/bin'],
    Cmd: ['/bin/sh'],
    Labels: { 'z.last': 'a<b>&c', 'a.first': '' },
    ExposedPorts: { '80/tcp': {} },
    Image: 'sha256:0000',
  },
  container: 'abc',
  container_config: { Cmd: ['/bin/sh', '-c', '#(nop)'] },
  created: '2024-03-01T10:00:00.120000000Z',
  docker_version: '20.10.7',
  history: [{ created: '2024-03-01T10:00:00Z', created_by: 'ADD x /', empty_layer: false }],
  os: 'linux',
  rootfs: { type: 'layers', diff_ids: [sha256('a'), sha256('b')] },
};

async function dockerImage(t: Target, layerType: string = MediaType.DockerLayerGzip): Promise<Descriptor> {
  const layers = [await put(t, randomBytes(3000), layerType), await put(t, randomBytes(2000), layerType)];
  const config = await put(t, Buffer.from(JSON.stringify(DOCKER_CONFIG)), MediaType.DockerConfig);
  const doc = { schemaVersion: 2, mediaType: MediaType.DockerManifest, config, layers };
  return put(t, Buffer.from(JSON.stringify(doc)), MediaType.DockerManifest);
}

async function json<T>(t: Target, d: Descriptor): Promise<T> {
  return JSON.parse(await text(await t.fetch(d))) as T;
}

describe('copy to an OCI-only destination (Docker -> OCI conversion)', () => {
  it('writes a Docker manifest as OCI: media types, layers kept by digest, config to OCI fields', async () => {
    const src = new MemoryTarget('src');
    const dst = new MemoryTarget('dst');
    const root = await dockerImage(src);
    await src.tag(root, 'v1');
    const docker = await json<ImageManifest>(src, root);
    const written = await copy(src, 'v1', dst, undefined, { toOci: true });

    assert.equal(written.mediaType, MediaType.OciManifest);
    assert.notEqual(written.digest, root.digest);
    assert.deepEqual(await dst.resolve('v1'), written);
    const bytes = await text(await dst.fetch(written));
    assert.equal(sha256(bytes), written.digest);
    const m = JSON.parse(bytes) as ImageManifest;
    assert.equal(m.mediaType, MediaType.OciManifest);
    assert.deepEqual(Object.keys(m), ['schemaVersion', 'mediaType', 'config', 'layers']);
    assert.equal(m.config.mediaType, MediaType.OciConfig);
    assert.notEqual(m.config.digest, docker.config.digest);
    assert.deepEqual(
      m.layers.map((l) => [l.mediaType, l.digest, l.size]),
      docker.layers.map((l) => [MediaType.OciLayerGzip, l.digest, l.size]),
    );
    for (const l of m.layers) assert.ok(await dst.exists(l));
    assert.equal(await dst.exists(docker.config), false, 'the Docker config is not written');

    const cfgText = await text(await dst.fetch(m.config));
    assert.equal(
      cfgText,
      '{"created":"2024-03-01T10:00:00.12Z","architecture":"amd64","os":"linux","config":{"ExposedPorts":{"80/tcp":{}},' +
        '"Env":["PATH=/usr/bin"],"Cmd":["/bin/sh"],"Labels":{"a.first":"","z.last":"a\\u003cb\\u003e\\u0026c"}},' +
        `"rootfs":{"type":"layers","diff_ids":["${sha256('a')}","${sha256('b')}"]},` +
        '"history":[{"created":"2024-03-01T10:00:00Z","created_by":"ADD x /"}]}',
    );
  });

  it('writes a Docker manifest list as an OCI index of converted manifests, platforms kept', async () => {
    const src = new MemoryTarget('src');
    const dst = new MemoryTarget('dst');
    const a = await dockerImage(src);
    const b = await dockerImage(src, 'application/vnd.docker.image.rootfs.diff.tar');
    const list = {
      schemaVersion: 2,
      mediaType: MediaType.DockerManifestList,
      manifests: [
        { ...a, platform: { architecture: 'amd64', os: 'linux', features: ['sse4'] } },
        { ...b, platform: { architecture: 'arm64', os: 'linux', variant: 'v8' } },
      ],
    };
    const root = await put(src, Buffer.from(JSON.stringify(list)), MediaType.DockerManifestList);
    const written = await copy(src, root.digest, dst, 'multi', { toOci: true });
    assert.equal(written.mediaType, MediaType.OciIndex);
    const index = await json<ImageIndex>(dst, written);
    assert.equal(index.mediaType, MediaType.OciIndex);
    assert.deepEqual(
      index.manifests.map((m) => [m.mediaType, m.platform]),
      [
        [MediaType.OciManifest, { architecture: 'amd64', os: 'linux' }],
        [MediaType.OciManifest, { architecture: 'arm64', os: 'linux', variant: 'v8' }],
      ],
    );
    const second = await json<ImageManifest>(dst, index.manifests[1]!);
    assert.deepEqual(
      second.layers.map((l) => l.mediaType),
      [MediaType.OciLayerTar, MediaType.OciLayerTar],
    );
    assert.notEqual(index.manifests[0]!.digest, a.digest);
    assert.deepEqual(await dst.resolve('multi'), written);
  });

  it('leaves OCI images alone', async () => {
    const src = new MemoryTarget('src');
    const dst = new MemoryTarget('dst');
    const layer = await put(src, randomBytes(100), MediaType.OciLayerGzip);
    const config = await put(src, Buffer.from(JSON.stringify(DOCKER_CONFIG)), MediaType.OciConfig);
    const doc = { schemaVersion: 2, mediaType: MediaType.OciManifest, config, layers: [layer] };
    const root = await put(src, Buffer.from(JSON.stringify(doc)), MediaType.OciManifest);
    assert.deepEqual(await copy(src, root.digest, dst, 't', { toOci: true, preserveDigests: true }), root);
  });

  it('--preserve-digests refuses before anything is written', async () => {
    const src = new MemoryTarget('src');
    const dst = new MemoryTarget('dst');
    const root = await dockerImage(src);
    await assert.rejects(
      copy(src, root.digest, dst, 't', { toOci: true, preserveDigests: true }),
      (e: unknown) => isTiuError(e, 'CONVERSION_REFUSED') && e.message.includes(root.digest),
    );
    assert.equal(dst.size, 0);
  });

  it('refuses to carry referrers (signatures) of an image it had to convert', async () => {
    const src = new MemoryTarget('src');
    const dst = new MemoryTarget('dst');
    const root = await dockerImage(src);
    const emptyCfg = await put(src, Buffer.from('{}'), MediaType.OciEmpty);
    const sig = {
      schemaVersion: 2,
      mediaType: MediaType.OciManifest,
      artifactType: 'application/example',
      config: emptyCfg,
      layers: [],
      subject: root,
    };
    await put(src, Buffer.from(JSON.stringify(sig)), MediaType.OciManifest);
    await assert.rejects(copy(src, root.digest, dst, 't', { toOci: true, referrers: true }), (e: unknown) =>
      isTiuError(e, 'CONVERSION_REFUSED'),
    );
    await assert.rejects(dst.resolve('t'), (e: unknown) => isTiuError(e, 'CONTENT_NOT_FOUND'));
  });

  it('fails on a layer type with no OCI counterpart, naming the layer', async () => {
    const src = new MemoryTarget('src');
    const dst = new MemoryTarget('dst');
    const root = await dockerImage(src, 'application/vnd.example.layer');
    await assert.rejects(copy(src, root.digest, dst, 't', { toOci: true }), (e: unknown) => {
      return isTiuError(e, 'COPY_FAILED') && e.causeCode === 'CONVERSION_UNSUPPORTED' && /vnd\.example/.test(e.message);
    });
  });

  it('writes times as Go does and refuses one that is not RFC 3339', () => {
    const cfg = (created: string) => Buffer.from(JSON.stringify({ ...DOCKER_CONFIG, created, history: [] }));
    assert.match(dockerConfigToOci(cfg('2024-03-01T10:00:00.000Z')).toString(), /^\{"created":"2024-03-01T10:00:00Z"/);
    assert.match(
      dockerConfigToOci(cfg('2024-03-01T10:00:00.5+02:00')).toString(),
      /^\{"created":"2024-03-01T10:00:00.5\+02:00"/,
    );
    assert.throws(
      () => dockerConfigToOci(cfg('yesterday')),
      (e: unknown) => isTiuError(e, 'CONVERSION_UNSUPPORTED'),
    );
  });
});
