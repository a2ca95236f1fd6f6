import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { isTiuError, type ErrorCode } from '../../src/errors.ts';
import { sha256 } from '../../src/oci/digest.ts';
import { MAX_MANIFEST_BYTES, MediaType } from '../../src/oci/mediatypes.ts';
import {
  detectManifestMediaType,
  parseConfigBytes,
  parseIndexBytes,
  parseManifestBytes,
  parseManifestOrIndex,
  readAllCapped,
  validateDescriptor,
} from '../../src/oci/validate.ts';
import { successors } from '../helpers/graph.ts';
import type { Fetcher } from '../../src/content/interfaces.ts';
import type { Descriptor } from '../../src/oci/types.ts';

const D = sha256('x');
const desc = (over: Record<string, unknown> = {}) => ({
  mediaType: MediaType.OciLayerGzip,
  digest: D,
  size: 1,
  ...over,
});
const manifest = (over: Record<string, unknown> = {}) => ({
  schemaVersion: 2,
  mediaType: MediaType.OciManifest,
  config: desc({ mediaType: MediaType.OciConfig }),
  layers: [desc()],
  ...over,
});
const bytes = (v: unknown) => Buffer.from(JSON.stringify(v));
const code = (c: ErrorCode) => (e: unknown) => isTiuError(e, c);

describe('validate', () => {
  it('accepts a good descriptor and rejects bad fields by name', () => {
    assert.equal(validateDescriptor(desc()).digest, D);
    assert.throws(
      () => validateDescriptor(desc({ digest: 'sha256:abc' }), 'layers[0]'),
      (e: unknown) => isTiuError(e, 'MANIFEST_INVALID') && /layers\[0\]\.digest/.test((e as Error).message),
    );
    for (const size of [-1, 1.5, '3', null, 2 ** 60]) {
      assert.throws(
        () => validateDescriptor(desc({ size })),
        (e: unknown) => isTiuError(e, 'MANIFEST_INVALID') && /size/.test((e as Error).message),
      );
    }
    assert.throws(() => validateDescriptor(desc({ mediaType: 'nonsense' })), code('MANIFEST_INVALID'));
    assert.throws(() => validateDescriptor(desc({ annotations: { a: 1 } })), code('MANIFEST_INVALID'));
    assert.throws(() => validateDescriptor(desc({ urls: 'http://x' })), code('MANIFEST_INVALID'));
    assert.throws(() => validateDescriptor(desc({ platform: { os: 'linux' } })), code('MANIFEST_INVALID'));
    assert.throws(() => validateDescriptor([]), code('MANIFEST_INVALID'));
  });

  it('parses manifests and checks them', () => {
    const m = parseManifestBytes(bytes(manifest()), MediaType.OciManifest);
    assert.equal(m.layers.length, 1);
    // OCI manifests may omit mediaType
    parseManifestBytes(bytes(manifest({ mediaType: undefined })), MediaType.OciManifest);
    assert.throws(() => parseManifestBytes(Buffer.from('{not json')), code('MANIFEST_INVALID'));
    assert.throws(() => parseManifestBytes(bytes([1])), code('MANIFEST_INVALID'));
    assert.throws(() => parseManifestBytes(bytes(manifest({ schemaVersion: 1 }))), code('MANIFEST_INVALID'));
    assert.throws(() => parseManifestBytes(bytes(manifest({ layers: {} }))), code('MANIFEST_INVALID'));
    assert.throws(() => parseManifestBytes(bytes(manifest({ config: desc({ size: -5 }) }))), code('MANIFEST_INVALID'));
    assert.throws(() => parseManifestBytes(bytes(manifest({ subject: { digest: 'x' } }))), code('MANIFEST_INVALID'));
  });

  it('checks media type consistency', () => {
    assert.throws(() => parseManifestBytes(bytes(manifest()), MediaType.DockerManifest), code('MEDIA_TYPE_MISMATCH'));
    assert.throws(
      () => parseManifestBytes(bytes(manifest({ mediaType: MediaType.OciIndex }))),
      code('MEDIA_TYPE_MISMATCH'),
    );
    assert.throws(() => parseManifestBytes(bytes(manifest()), MediaType.OciIndex), code('MEDIA_TYPE_MISMATCH'));
    assert.throws(
      () => parseManifestBytes(bytes(manifest({ mediaType: undefined })), MediaType.DockerManifest),
      code('MANIFEST_INVALID'),
    );
    const idx = {
      schemaVersion: 2,
      mediaType: MediaType.OciIndex,
      manifests: [desc({ mediaType: MediaType.OciManifest })],
    };
    assert.equal(parseIndexBytes(bytes(idx), MediaType.OciIndex).manifests.length, 1);
    assert.throws(() => parseIndexBytes(bytes(idx), MediaType.OciManifest), code('MEDIA_TYPE_MISMATCH'));
    assert.throws(() => parseIndexBytes(bytes(manifest())), code('MEDIA_TYPE_MISMATCH'));
    assert.equal(parseManifestOrIndex(bytes(idx)).kind, 'index');
    assert.equal(parseManifestOrIndex(bytes(manifest({ mediaType: undefined }))).kind, 'manifest');
    assert.equal(detectManifestMediaType(bytes({ schemaVersion: 2, manifests: [] })), MediaType.OciIndex);
    assert.throws(() => parseManifestOrIndex(bytes(manifest()), MediaType.OciLayerGzip), code('MEDIA_TYPE_MISMATCH'));
  });

  it('caps manifests at 4 MiB', () => {
    const big = Buffer.alloc(MAX_MANIFEST_BYTES + 1, 0x20);
    assert.throws(() => parseManifestBytes(big), code('MANIFEST_TOO_LARGE'));
    assert.throws(() => parseIndexBytes(big), code('MANIFEST_TOO_LARGE'));
  });

  it('parses configs', () => {
    const cfg = {
      architecture: 'amd64',
      os: 'linux',
      rootfs: { type: 'layers', diff_ids: [D] },
      config: { Labels: { ID: 'opensuse-microos' } },
    };
    assert.equal(parseConfigBytes(bytes(cfg)).config?.Labels?.ID, 'opensuse-microos');
    assert.throws(() => parseConfigBytes(bytes({ ...cfg, os: 3 })), code('IMAGE_CONFIG_INVALID'));
    assert.throws(
      () => parseConfigBytes(bytes({ ...cfg, rootfs: { type: 'layers', diff_ids: ['bad'] } })),
      code('IMAGE_CONFIG_INVALID'),
    );
    assert.throws(
      () => parseConfigBytes(bytes({ ...cfg, config: { Labels: { a: 1 } } })),
      code('IMAGE_CONFIG_INVALID'),
    );
  });

  it('reads streams with a cap', async () => {
    assert.equal((await readAllCapped(Readable.from([Buffer.from('abc')]), 3)).toString(), 'abc');
    await assert.rejects(readAllCapped(Readable.from([Buffer.from('abcd')]), 3), code('CONTENT_TOO_LARGE'));
  });
});

describe('graph.successors', () => {
  const blobs = new Map<string, Buffer>();
  const put = (b: Buffer, mediaType: string): Descriptor => {
    const d = { mediaType, digest: sha256(b), size: b.length };
    blobs.set(d.digest, b);
    return d;
  };
  const fetcher: Fetcher = {
    fetch(d) {
      return Promise.resolve(Readable.from([blobs.get(d.digest)!]));
    },
  };
  const layer = put(Buffer.from('layer'), MediaType.OciLayerGzip);
  const config = put(
    bytes({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }),
    MediaType.OciConfig,
  );
  const subject = put(Buffer.from('subject'), MediaType.OciLayerGzip);
  const m = put(
    bytes({ schemaVersion: 2, mediaType: MediaType.OciManifest, config, layers: [layer], subject }),
    MediaType.OciManifest,
  );
  const idx = put(bytes({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [m] }), MediaType.OciIndex);

  it('lists config and layers of a manifest, not its subject', async () => {
    assert.deepEqual(
      (await successors(fetcher, m)).map((d) => d.digest),
      [config.digest, layer.digest],
    );
  });
  it('lists the manifests of an index', async () => {
    assert.deepEqual(
      (await successors(fetcher, idx)).map((d) => d.digest),
      [m.digest],
    );
  });
  it('has no successors for a blob', async () => {
    assert.deepEqual(await successors(fetcher, layer), []);
  });
  it('verifies the manifest it reads', async () => {
    const wrong = { ...m, digest: sha256('other') };
    blobs.set(wrong.digest, blobs.get(m.digest)!);
    await assert.rejects(successors(fetcher, wrong), code('DIGEST_MISMATCH'));
    const short = { ...m, size: m.size - 1 };
    await assert.rejects(successors(fetcher, short), code('SIZE_MISMATCH'));
    await assert.rejects(successors(fetcher, { ...m, size: MAX_MANIFEST_BYTES + 1 }), code('MANIFEST_TOO_LARGE'));
  });
});
