import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { bundleFromJSON } from '@sigstore/bundle';
import { toSignedEntity, toTrustMaterial, Verifier } from '@sigstore/verify';
import { isTiuError } from '../../../src/errors.ts';
import { parseReference, type DockerReference } from '../../../src/oci/reference.ts';
import { signImage } from '../../../src/trust/sign.ts';
import { signatureTag } from '../../../src/trust/signatures.ts';
import { verifyImageSignatures } from '../../../src/trust/verify.ts';
import { attachBundle, keyHint, listBundles, makeBundle, verifyBundle } from '../../../src/trust/bundle.ts';
import { putImage, TestTarget } from '../../helpers/trust-target.ts';

const hints: string[] = [];
type Thresholds = { tlogThreshold?: number; ctlogThreshold?: number; timestampThreshold?: number };
const OFFLINE_KEY: Thresholds = { tlogThreshold: 0, ctlogThreshold: 0, timestampThreshold: 0 };
function sigstoreVerify(
  bundleJson: Buffer,
  pub: ReturnType<typeof generateKeyPairSync>['publicKey'],
  thresholds: Thresholds = OFFLINE_KEY,
): void {
  const bundle = bundleFromJSON(JSON.parse(bundleJson.toString()));
  const trust = toTrustMaterial(
    {
      mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1',
      tlogs: [],
      certificateAuthorities: [],
      ctlogs: [],
      timestampAuthorities: [],
    },
    (hint: string) => {
      hints.push(hint);
      return { publicKey: pub, validFor: () => true };
    },
  );
  new Verifier(trust, thresholds).verify(toSignedEntity(bundle));
}

describe('trust/bundle (sigstore bundle v0.3 as a referrer)', () => {
  it('writes a bundle that @sigstore/verify accepts offline with the public key, and refuses when altered or by another key', async () => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const other = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const t = new TestTarget();
    const img = await putImage(t, 'v1');
    const bundle = makeBundle(privateKey, 'r.example/os/microos:v1', img.digest);
    sigstoreVerify(bundle, publicKey);
    assert.deepEqual(hints, [keyHint(publicKey)]);

    const doc = JSON.parse(bundle.toString()) as { dsseEnvelope: { payload: string } };
    const statement = JSON.parse(Buffer.from(doc.dsseEnvelope.payload, 'base64').toString()) as {
      subject: { digest: { sha256: string } }[];
    };
    statement.subject[0]!.digest.sha256 = 'b'.repeat(64);
    doc.dsseEnvelope.payload = Buffer.from(JSON.stringify(statement)).toString('base64');
    const altered = Buffer.from(JSON.stringify(doc));
    assert.throws(() => sigstoreVerify(altered, publicKey));
    assert.equal(verifyBundle(altered, [publicKey]), null);
    assert.throws(
      () => sigstoreVerify(bundle, other.publicKey),
      (e: Error) => e.name === 'VerificationError' && /signature/i.test(e.message),
    );

    const ref = await attachBundle(t, img, bundle);
    const found = await listBundles(t, img);
    assert.equal(found.length, 1);
    assert.equal(found[0]!.manifest.digest, ref.digest);
    const manifest = (await t.json(ref)) as {
      artifactType: string;
      subject: { digest: string };
      config: { mediaType: string; size: number };
    };
    assert.equal(manifest.artifactType, 'application/vnd.dev.sigstore.bundle.v0.3+json');
    assert.equal(manifest.subject.digest, img.digest);
    assert.deepEqual([manifest.config.mediaType, manifest.config.size], ['application/vnd.oci.empty.v1+json', 2]);
    assert.deepEqual(verifyBundle(found[0]!.bundle!, [other.publicKey, publicKey]), {
      claims: [{ dockerReference: 'r.example/os/microos:v1', digest: img.digest }],
      keyIndex: 1,
    });
  });

  it('sigstore-js at its default thresholds refuses the bundle for exactly one reason: no timestamp from a log or TSA', () => {
    // A key-based offline bundle has no transparency-log entry and no signed timestamp; sigstore's
    // verifiers ask for one of each by default (timestampThreshold 1, tlogThreshold 1). Everything
    // else verifies: with only the timestamp requirement lifted, the next refusal is the tlog one,
    // and with both lifted (cosign's --insecure-ignore-tlog) it passes.
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const bundle = makeBundle(privateKey, 'r.example/os/microos:v1', `sha256:${'c'.repeat(64)}`);
    assert.throws(
      () => sigstoreVerify(bundle, publicKey, {}),
      (e: Error & { code?: string }) => e.code === 'TIMESTAMP_ERROR' && /expected 1 timestamps, got 0/.test(e.message),
    );
    assert.throws(
      () => sigstoreVerify(bundle, publicKey, { timestampThreshold: 0 }),
      (e: Error & { code?: string }) => e.code === 'TLOG_ERROR' && /expected 1 tlog entries, got 0/.test(e.message),
    );
    sigstoreVerify(bundle, publicKey, { timestampThreshold: 0, tlogThreshold: 0 });
  });

  it('tiu verify accepts a bundle alone, and refuses a replayed or foreign one with the same codes', async () => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const t = new TestTarget();
    const img = await putImage(t, 'v1', 'one');
    const evil = await putImage(t, 'v2', 'two');
    const r = await signImage(t, img, privateKey, { dockerReference: 'r.example/os/microos:v1', bundle: true });
    assert.ok(r.bundle);
    t.tagsMap.delete(signatureTag(img.digest));
    const opts = {
      keys: [publicKey],
      identity: { type: 'matchRepoDigestOrExact' as const },
      imageIdentity: parseReference('r.example/os/microos:v1') as DockerReference,
    };
    const v = await verifyImageSignatures(t, img, opts);
    assert.deepEqual(
      v.verified.map((x) => x.kind),
      ['bundle'],
    );
    await assert.rejects(
      verifyImageSignatures(t, img, {
        ...opts,
        imageIdentity: parseReference('r.example/os/other:v1') as DockerReference,
      }),
      (e: unknown) => isTiuError(e, 'IDENTITY_MISMATCH'),
    );
    await assert.rejects(
      verifyImageSignatures(t, img, { ...opts, keys: [generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey] }),
      (e: unknown) => isTiuError(e, 'SIGNATURE_INVALID'),
    );
    // Replay: img's bundle attached to evil.
    await attachBundle(t, evil, (await listBundles(t, img))[0]!.bundle!);
    await assert.rejects(verifyImageSignatures(t, evil, opts), (e: unknown) =>
      isTiuError(e, 'SIGNATURE_DIGEST_MISMATCH'),
    );
  });
});
