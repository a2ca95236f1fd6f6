import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import { Readable } from 'node:stream';
import { isTiuError } from '../../../src/errors.ts';
import { parseReference, type DockerReference } from '../../../src/oci/reference.ts';
import type { Descriptor } from '../../../src/oci/types.ts';
import { signImage } from '../../../src/trust/sign.ts';
import { listSignatures, signatureTag } from '../../../src/trust/signatures.ts';
import { verifyImageSignatures, type VerifyOptions } from '../../../src/trust/verify.ts';
import { handMadeSignature, putImage, TestTarget } from '../../helpers/trust-target.ts';

const ref = parseReference('registry.example/os/microos:stable') as DockerReference;
const sha = (b: Buffer): `sha256:${string}` => `sha256:${createHash('sha256').update(b).digest('hex')}`;

function keyPair(): { priv: KeyObject; pub: KeyObject } {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { priv: privateKey, pub: publicKey };
}

async function rejectsWith(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(isTiuError(e), String(e));
    assert.equal(e.code, code, e.message);
    return true;
  });
}

describe('trust/sign + verify (in memory)', () => {
  const signer = keyPair();
  const other = keyPair();
  const opts = (o: Partial<VerifyOptions> = {}): VerifyOptions => ({
    keys: [signer.pub],
    identity: { type: 'matchRepoDigestOrExact' },
    imageIdentity: ref,
    ...o,
  });

  it('signs, verifies, and writes the cosign layout', async () => {
    const t = new TestTarget();
    const img = await putImage(t, 'stable');
    const r = await signImage(t, img, signer.priv, { dockerReference: 'registry.example/os/microos:stable' });
    assert.equal(r.tag, signatureTag(img.digest));
    assert.equal(r.tag, `sha256-${img.digest.slice(7)}.sig`);
    const sm = (await t.json(await t.resolve(r.tag))) as { config: Descriptor; layers: Descriptor[] };
    assert.equal(sm.layers.length, 1);
    assert.equal(sm.layers[0]!.mediaType, 'application/vnd.dev.cosign.simplesigning.v1+json');
    const payload = JSON.parse(t.blobs.get(sm.layers[0]!.digest)!.toString());
    assert.deepEqual(payload, {
      critical: {
        identity: { 'docker-reference': 'registry.example/os/microos:stable' },
        image: { 'docker-manifest-digest': img.digest },
        type: 'cosign container image signature',
      },
      optional: null,
    });
    const cfg = (await t.json(sm.config)) as { rootfs: { diff_ids: string[] } };
    assert.deepEqual(cfg.rootfs.diff_ids, [sm.layers[0]!.digest]);
    const v = await verifyImageSignatures(t, img, opts());
    assert.equal(v.verified.length, 1);
    assert.equal(v.verified[0]!.manifestDigest, img.digest);
  });

  it('appends to an existing signature manifest and skips duplicates', async () => {
    const t = new TestTarget();
    const img = await putImage(t, 'stable');
    await signImage(t, img, signer.priv, { dockerReference: 'registry.example/os/microos:stable' });
    const again = await signImage(t, img, signer.priv, { dockerReference: 'registry.example/os/microos:stable' });
    assert.equal(again.added, false);
    const second = await signImage(t, img, other.priv, {
      dockerReference: 'registry.example/os/microos:stable',
      annotations: { build: '42' },
    });
    assert.equal(second.added, true);
    assert.equal(second.count, 2);
    assert.equal((await listSignatures(t, img.digest)).length, 2);
    // Either key verifies; the annotation requirement picks the second signature.
    const v = await verifyImageSignatures(t, img, opts({ keys: [other.pub], annotations: { build: '42' } }));
    assert.equal(v.verified.length, 1);
    await rejectsWith(verifyImageSignatures(t, img, opts({ annotations: { build: '42' } })), 'IDENTITY_MISMATCH');
  });

  it('refuses an image with no signature: SIGNATURE_MISSING', async () => {
    const t = new TestTarget();
    const img = await putImage(t, 'stable');
    await rejectsWith(verifyImageSignatures(t, img, opts()), 'SIGNATURE_MISSING');
  });

  it('refuses one altered byte in the payload: SIGNATURE_INVALID', async () => {
    const t = new TestTarget();
    const img = await putImage(t, 'stable');
    const payload = Buffer.from(
      JSON.stringify({
        critical: {
          identity: { 'docker-reference': 'registry.example/os/microos:stable' },
          image: { 'docker-manifest-digest': img.digest },
          type: 'cosign container image signature',
        },
        optional: null,
      }),
    );
    const sig = sign('sha256', payload, { key: signer.priv, dsaEncoding: 'der' }).toString('base64');
    const altered = Buffer.from(payload);
    altered[altered.indexOf('stable')] = 'S'.charCodeAt(0);
    await handMadeSignature(t, img, altered, sig);
    await rejectsWith(
      verifyImageSignatures(t, img, opts({ identity: { type: 'matchRepository' } })),
      'SIGNATURE_INVALID',
    );
    // Stored bytes tampered behind the descriptor: also never accepted.
    const t2 = new TestTarget();
    const img2 = await putImage(t2, 'stable');
    await signImage(t2, img2, signer.priv, { dockerReference: 'registry.example/os/microos:stable' });
    const [s] = await listSignatures(t2, img2.digest);
    const bytes = Buffer.from(t2.blobs.get(s!.layer.digest)!);
    bytes[10] = bytes[10]! ^ 1;
    t2.putRaw(s!.layer.digest, bytes);
    await rejectsWith(verifyImageSignatures(t2, img2, opts()), 'SIGNATURE_INVALID');
  });

  it('refuses a signature by another key: SIGNATURE_INVALID', async () => {
    const t = new TestTarget();
    const img = await putImage(t, 'stable');
    await signImage(t, img, other.priv, { dockerReference: 'registry.example/os/microos:stable' });
    await rejectsWith(verifyImageSignatures(t, img, opts()), 'SIGNATURE_INVALID');
  });

  it('refuses a signature replayed from another digest: SIGNATURE_DIGEST_MISMATCH', async () => {
    const t = new TestTarget();
    const good = await putImage(t, 'v1', 'one');
    const evil = await putImage(t, 'stable', 'two');
    await signImage(t, good, signer.priv, { dockerReference: 'registry.example/os/microos:stable' });
    // Copy v1's signature manifest to the other image's signature tag.
    await t.tag(await t.resolve(signatureTag(good.digest)), signatureTag(evil.digest));
    await rejectsWith(verifyImageSignatures(t, evil, opts()), 'SIGNATURE_DIGEST_MISMATCH');
  });

  it('refuses a docker-reference of another repository under matchRepository: IDENTITY_MISMATCH', async () => {
    const t = new TestTarget();
    const img = await putImage(t, 'stable');
    await signImage(t, img, signer.priv, { dockerReference: 'registry.example/os/debug:stable' });
    await rejectsWith(
      verifyImageSignatures(t, img, opts({ identity: { type: 'matchRepository' } })),
      'IDENTITY_MISMATCH',
    );
    // The same repository with another tag is fine under matchRepository, not under the default.
    const t2 = new TestTarget();
    const img2 = await putImage(t2, 'stable');
    await signImage(t2, img2, signer.priv, { dockerReference: 'registry.example/os/microos:1.0' });
    await verifyImageSignatures(t2, img2, opts({ identity: { type: 'matchRepository' } }));
    await rejectsWith(verifyImageSignatures(t2, img2, opts()), 'IDENTITY_MISMATCH');
  });

  it('verifies a signature the test made itself with node:crypto in the cosign format (repository-only reference)', async () => {
    const t = new TestTarget();
    const img = await putImage(t, 'stable');
    // cosign writes the repository only, with index.docker.io for Docker Hub; Go's encoder order.
    const payload = Buffer.from(
      `{"critical":{"identity":{"docker-reference":"registry.example/os/microos"},"image":{"docker-manifest-digest":"${img.digest}"},"type":"cosign container image signature"},"optional":null}`,
    );
    await handMadeSignature(
      t,
      img,
      payload,
      sign('sha256', payload, { key: signer.priv, dsaEncoding: 'der' }).toString('base64'),
    );
    const v = await verifyImageSignatures(t, img, opts({ identity: { type: 'matchRepository' } }));
    assert.equal(v.verified[0]!.dockerReference, 'registry.example/os/microos');
    // Under the default rule a tag-referenced image needs the tag in the signature (containers-policy.json(5)).
    await rejectsWith(verifyImageSignatures(t, img, opts()), 'IDENTITY_MISMATCH');
    // By digest, the repository is enough.
    await verifyImageSignatures(
      t,
      img,
      opts({
        imageIdentity: { transport: 'docker', registry: ref.registry, repository: ref.repository, digest: img.digest },
      }),
    );
  });

  it('reports the signature that got furthest when several fail', async () => {
    const t = new TestTarget();
    const img = await putImage(t, 'stable');
    await signImage(t, img, other.priv, { dockerReference: 'registry.example/os/microos:stable' });
    await signImage(t, img, signer.priv, { dockerReference: 'elsewhere.example/x:stable' });
    await assert.rejects(verifyImageSignatures(t, img, opts()), (e: unknown) => {
      assert.ok(isTiuError(e, 'IDENTITY_MISMATCH'));
      assert.equal((e.details.failures as unknown[]).length, 2);
      return true;
    });
  });

  it('refuses a signature manifest with an absurd number of layers before fetching them', async () => {
    const t = new TestTarget();
    const img = await putImage(t, 'stable');
    const payload = Buffer.from('{}');
    const layer = {
      mediaType: 'application/vnd.dev.cosign.simplesigning.v1+json',
      size: payload.length,
      digest: sha(payload),
      annotations: { 'dev.cosignproject.cosign/signature': 'AAAA' },
    };
    const config = Buffer.from('{}');
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
        layers: Array.from({ length: 257 }, () => layer),
      }),
    );
    const mDesc = {
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      size: manifest.length,
      digest: sha(manifest),
    };
    await t.push(mDesc, Readable.from([manifest]));
    await t.tag(mDesc, signatureTag(img.digest));
    let fetches = 0;
    const fetch = t.fetch.bind(t);
    t.fetch = (d) => {
      fetches++;
      return fetch(d);
    };
    await rejectsWith(verifyImageSignatures(t, img, opts()), 'MANIFEST_INVALID');
    assert.equal(fetches, 1);
  });
});
