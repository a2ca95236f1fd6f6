import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { bundleFromJSON } from '@sigstore/bundle';
import { toSignedEntity, toTrustMaterial, Verifier } from '@sigstore/verify';
import { isTiuError } from '../../../src/errors.ts';
import { parseReference } from '../../../src/oci/reference.ts';
import type { Descriptor } from '../../../src/oci/types.ts';
import { MAX_TLOG_ENTRIES } from '../../../src/trust/bundle-tlog.ts';
import { checkPolicy, parsePolicy, type PolicyDecision } from '../../../src/trust/policy.ts';
import { signImage } from '../../../src/trust/sign.ts';
import { signatureTag } from '../../../src/trust/signatures.ts';
import {
  attachSigstoreBundle,
  certificateDer,
  hashedRekordBody,
  issueLeaf,
  makeFulcioCa,
  makeRekorLog,
  pastValidity,
  makeSigstoreBundle,
  REKOR_TEST_URL,
  TEST_EMAIL,
  TEST_OIDC_ISSUER,
  TEST_URI,
  type SigstoreBundleOptions,
} from '../../helpers/sigstore-fixtures.ts';
import { putImage, TestTarget } from '../../helpers/trust-target.ts';

const REF = 'registry.example/os/microos:stable';
const b64 = (s: string | Buffer): string => Buffer.from(s).toString('base64');
const MIN = 60_000;

describe('trust/keyless sigstore bundles (cosign 3, Rekor v1, offline)', function () {
  this.timeout(60_000);
  const ca = makeFulcioCa('fulcio');
  const otherCa = makeFulcioCa('other');
  const log = makeRekorLog();
  const otherLog = makeRekorLog();
  // Minutes of validity two hours ago: already expired by the device's clock, valid when logged.
  const { t0, logged, leafOpts } = pastValidity();
  const leaf = issueLeaf(ca, leafOpts);

  /** A v0.3 bundle carries only the leaf: the policy's CA file holds the intermediate and the root. */
  function fulcioPolicy(fulcio: Record<string, unknown> = {}, extra: Record<string, unknown> = {}): string {
    return JSON.stringify({
      default: [
        {
          type: 'sigstoreSigned',
          fulcio: {
            caData: b64(ca.intermediate.certPem + ca.root.certPem),
            oidcIssuer: TEST_OIDC_ISSUER,
            subjectEmail: TEST_EMAIL,
            ...fulcio,
          },
          rekorPublicKeyData: b64(log.publicKeyPem),
          ...extra,
        },
      ],
    });
  }

  async function bundled(
    o: Partial<SigstoreBundleOptions> = {},
  ): Promise<{ t: TestTarget; img: Descriptor; bytes: Buffer }> {
    const t = new TestTarget();
    const img = await putImage(t, 'stable');
    const opts = { dockerReference: REF, leaf, log, integratedTime: logged, digest: img.digest, ...o };
    await attachSigstoreBundle(t, img, opts);
    return { t, img, bytes: makeSigstoreBundle(opts) };
  }

  const check = (t: TestTarget, img: Descriptor, policy = fulcioPolicy()): Promise<PolicyDecision> =>
    checkPolicy(parsePolicy(policy), t, img, parseReference(REF));

  async function refused(p: Promise<unknown>, code: string, text?: RegExp): Promise<void> {
    await assert.rejects(p, (e: unknown) => {
      assert.ok(isTiuError(e), String(e));
      assert.equal(e.code, code, e.message);
      assert.ok(!e.message.includes('\n'), 'one line');
      if (text) assert.match(e.message, text);
      return true;
    });
  }

  it('accepts a keyless bundle alone (no .sig): certificate at the logged time, SET, issuer, email', async () => {
    const { t, img } = await bundled();
    assert.equal(t.tagsMap.has(signatureTag(img.digest)), false);
    const sig = (await check(t, img)).accepted[0]!.signatures![0]!;
    assert.equal(sig.kind, 'bundle');
    assert.equal(sig.manifestDigest, img.digest);
    assert.equal(sig.keyIndex, -1);
    assert.deepEqual(sig.signedAt, logged);
    assert.deepEqual(sig.certificate, { issuer: TEST_OIDC_ISSUER, subject: TEST_EMAIL });
  });

  it("the fixture is what Sigstore's own verifier accepts (CA + Rekor key, SET, inclusion proof, identity)", async () => {
    const { bytes } = await bundled();
    const publicDer = Buffer.from(log.publicKeyPem.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, ''), 'base64');
    const trust = toTrustMaterial({
      mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1',
      tlogs: [
        {
          baseUrl: REKOR_TEST_URL,
          hashAlgorithm: 1,
          publicKey: { rawBytes: publicDer, keyDetails: 5 },
          logId: { keyId: Buffer.from(log.logID, 'hex') },
        },
      ],
      certificateAuthorities: [
        {
          uri: 'https://fulcio.test',
          certChain: {
            certificates: [
              { rawBytes: certificateDer(ca.intermediate.certPem) },
              { rawBytes: certificateDer(ca.root.certPem) },
            ],
          },
        },
      ],
      ctlogs: [],
      timestampAuthorities: [],
    } as unknown as Parameters<typeof toTrustMaterial>[0]);
    const entity = toSignedEntity(bundleFromJSON(JSON.parse(bytes.toString())));
    const verifier = new Verifier(trust, { ctlogThreshold: 0 });
    const signer = verifier.verify(entity, {
      subjectAlternativeName: TEST_EMAIL,
      extensions: { issuer: TEST_OIDC_ISSUER },
    });
    assert.ok(signer.identity);
    assert.throws(() => verifier.verify(entity, { subjectAlternativeName: 'mallory@example.com' }));
  });

  it('takes intermediates from a v0.1/v0.2 x509CertificateChain (then the root alone is enough)', async () => {
    const der = (pems: string[]) => pems.map((p) => ({ rawBytes: b64(certificateDer(p)) }));
    // With or without the root at its end: only the policy's CA is an anchor.
    for (const certificates of [
      der([leaf.certPem, ca.intermediate.certPem, ca.root.certPem]),
      der([leaf.certPem, ca.intermediate.certPem]),
    ]) {
      const { t, img } = await bundled({
        tamper: (d) => {
          delete d.verificationMaterial.certificate;
          d.verificationMaterial.x509CertificateChain = { certificates };
        },
      });
      await check(t, img, fulcioPolicy({ caData: b64(ca.root.certPem) }));
    }
    // Another CA's chain, its root included, does not reach the policy's root.
    const foreign = issueLeaf(otherCa, leafOpts);
    const other = await bundled({
      leaf: foreign,
      tamper: (d) => {
        delete d.verificationMaterial.certificate;
        d.verificationMaterial.x509CertificateChain = {
          certificates: der([foreign.certPem, otherCa.intermediate.certPem, otherCa.root.certPem]),
        };
      },
    });
    await refused(check(other.t, other.img, fulcioPolicy({ caData: b64(ca.root.certPem) })), 'CERT_UNTRUSTED');
    // A v0.3 bundle (leaf only) under a policy with the root alone has no path to it.
    const v03 = await bundled();
    await refused(check(v03.t, v03.img, fulcioPolicy({ caData: b64(ca.root.certPem) })), 'CERT_UNTRUSTED');
  });

  it('refuses wrong issuer, wrong email, another CA, no code signing, with the simple-signing codes', async () => {
    const issuer = await bundled({ leaf: issueLeaf(ca, { ...leafOpts, issuerV1: undefined, issuerV2: 'https://x' }) });
    await refused(check(issuer.t, issuer.img), 'OIDC_ISSUER_MISMATCH', /"https:\/\/x"/);
    const email = await bundled({ leaf: issueLeaf(ca, { ...leafOpts, email: 'mallory@example.com' }) });
    await refused(check(email.t, email.img), 'CERT_SUBJECT_MISMATCH', /mallory/);
    const uri = await bundled({ leaf: issueLeaf(ca, { ...leafOpts, email: undefined, uri: TEST_URI }) });
    await check(uri.t, uri.img, fulcioPolicy({ subjectEmail: undefined, subjectURI: TEST_URI }));
    const foreign = await bundled({ leaf: issueLeaf(otherCa, leafOpts) });
    await refused(check(foreign.t, foreign.img), 'CERT_UNTRUSTED', /another CA/);
    const tls = await bundled({ leaf: issueLeaf(ca, { ...leafOpts, eku: 'serverAuth' }) });
    await refused(check(tls.t, tls.img), 'CERT_UNTRUSTED', /code signing/);
  });

  it('refuses a missing or malformed certificate with CERT_INVALID (a key-based bundle under a fulcio policy)', async () => {
    const cases: [(d: Parameters<NonNullable<SigstoreBundleOptions['tamper']>>[0]) => void, RegExp][] = [
      [(d) => delete d.verificationMaterial.certificate, /no verificationMaterial\.certificate/],
      [(d) => (d.verificationMaterial.certificate = { rawBytes: 'AAAA' }), /not a valid X\.509/],
      [(d) => (d.verificationMaterial.certificate = { rawBytes: 'A'.repeat(30_000) }), /larger than 16384/],
      [
        (d) => {
          delete d.verificationMaterial.certificate;
          d.verificationMaterial.x509CertificateChain = { certificates: [] };
        },
        /holds no certificates/,
      ],
    ];
    for (const [tamper, why] of cases) {
      const { t, img } = await bundled({ tamper });
      await refused(check(t, img), 'CERT_INVALID', why);
    }
  });

  it('refuses a bundle without a usable Rekor v1 entry: TLOG_MISSING, and Rekor v2 with TLOG_UNSUPPORTED', async () => {
    const none = await bundled({ tamper: (d) => (d.verificationMaterial.tlogEntries = []) });
    await refused(check(none.t, none.img), 'TLOG_MISSING', /no transparency-log entry/);
    const noPromise = await bundled({ tamper: (d) => delete d.verificationMaterial.tlogEntries[0]!.inclusionPromise });
    await refused(check(noPromise.t, noPromise.img), 'TLOG_MISSING', /inclusionPromise/);
    const v2 = await bundled({ rekorV2: true });
    await refused(check(v2.t, v2.img), 'TLOG_UNSUPPORTED', /Rekor v2.*RFC 3161 timestamp authority/);
  });

  it('refuses a tampered, foreign or mismatching log entry with TLOG_INVALID', async () => {
    const entry = (d: Parameters<NonNullable<SigstoreBundleOptions['tamper']>>[0]) =>
      d.verificationMaterial.tlogEntries[0]!;
    const otherLeaf = issueLeaf(ca, leafOpts);
    const cases: [Partial<SigstoreBundleOptions>, RegExp][] = [
      [
        { tamper: (d) => (entry(d).integratedTime = String(Math.floor(logged.getTime() / 1000) + 1)) },
        /does not verify/,
      ],
      [{ tamper: (d) => (entry(d).logIndex = '43') }, /does not verify/],
      [{ log: otherLog }, /does not verify/],
      [{ logID: otherLog.logID }, /logID .* is not the id of the Rekor key/],
      [{ tamper: (d) => (entry(d).integratedTime = '-5') }, /integratedTime is not a non-negative integer/],
      [{ tamper: (d) => (entry(d).canonicalizedBody = '%%%') }, /canonicalizedBody is not base64/],
      [{ body: (r) => ({ ...r, spec: { ...(r.spec as object), signatures: [] } }) }, /has 0 signatures, not 1/],
      [
        {
          body: (r) => {
            const spec = r.spec as { signatures: { signature: string }[] };
            return { ...r, spec: { ...spec, signatures: [{ ...spec.signatures[0]!, signature: b64('another') }] } };
          },
        },
        /another signature/,
      ],
      [
        {
          body: (r) => {
            const spec = r.spec as { signatures: { verifier: string }[] };
            const verifier = b64(otherLeaf.certPem);
            return { ...r, spec: { ...spec, signatures: [{ ...spec.signatures[0]!, verifier }] } };
          },
        },
        /another certificate or public key/,
      ],
      [
        {
          body: (r) => ({
            ...r,
            spec: { ...(r.spec as object), payloadHash: { algorithm: 'sha256', value: 'ab'.repeat(32) } },
          }),
        },
        /names payload "abab/,
      ],
      [
        { body: (r) => ({ ...r, spec: { ...(r.spec as object), envelopeHash: { algorithm: 'md5', value: 'x' } } }) },
        /envelopeHash is not a sha256/,
      ],
      [
        {
          body: () =>
            JSON.parse(hashedRekordBody(Buffer.from('sig'), leaf.certPem, Buffer.from('x')).toString()) as Record<
              string,
              unknown
            >,
        },
        /"hashedrekord", not a dsse entry/,
      ],
      [{ body: (r) => ({ ...r, apiVersion: '0.0.2' }) }, /dsse entry version "0\.0\.2"/],
      [
        {
          tamper: (d) =>
            (d.verificationMaterial.tlogEntries = Array.from({ length: MAX_TLOG_ENTRIES + 1 }, () => entry(d))),
        },
        /more than 8/,
      ],
    ];
    for (const [o, why] of cases) {
      const { t, img } = await bundled(o);
      await refused(check(t, img), 'TLOG_INVALID', why);
    }
    // A second, genuine entry after a broken one is found.
    const two = await bundled({
      tamper: (d) => {
        const good = entry(d);
        d.verificationMaterial.tlogEntries = [{ ...good, logIndex: '7' }, good];
      },
    });
    await check(two.t, two.img);
  });

  it('refuses an entry logged outside the certificate validity with CERT_VALIDITY_MISMATCH', async () => {
    for (const at of [new Date(t0.getTime() + 11 * MIN), new Date(t0.getTime() - MIN)]) {
      const { t, img } = await bundled({ integratedTime: at });
      await refused(check(t, img), 'CERT_VALIDITY_MISMATCH', new RegExp(at.toISOString()));
    }
  });

  it('refuses a bundle replayed onto another digest with SIGNATURE_DIGEST_MISMATCH, and a statement not by the certificate with SIGNATURE_INVALID', async () => {
    const t = new TestTarget();
    const a = await putImage(t, 'a', 'one');
    const b = await putImage(t, 'b', 'two');
    await attachSigstoreBundle(t, b, { dockerReference: REF, digest: a.digest, leaf, log, integratedTime: logged });
    await refused(check(t, b), 'SIGNATURE_DIGEST_MISMATCH', /replayed/);
    // The entry and material name `leaf`; the envelope was signed by another key.
    const impostor = issueLeaf(ca, leafOpts);
    const forged = await bundled({ leaf: { certPem: leaf.certPem, key: impostor.key } });
    await refused(check(forged.t, forged.img), 'SIGNATURE_INVALID', /certificate's key/);
    const twoSigs = await bundled({
      tamper: (d) => d.dsseEnvelope.signatures.push({ ...d.dsseEnvelope.signatures[0]! }),
    });
    await refused(check(twoSigs.t, twoSigs.img), 'SIGNATURE_INVALID', /exactly one signature/);
  });

  it('refuses another identity with IDENTITY_MISMATCH', async () => {
    const { t, img } = await bundled({ dockerReference: 'registry.example/evil/image:stable' });
    await refused(
      check(t, img, fulcioPolicy({}, { signedIdentity: { type: 'matchRepository' } })),
      'IDENTITY_MISMATCH',
    );
  });

  describe('key-based bundles', () => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const pem = publicKey.export({ format: 'pem', type: 'spki' }).toString();
    const policy = (rekor: boolean): string =>
      JSON.stringify({
        default: [
          {
            type: 'sigstoreSigned',
            keyData: b64(pem),
            ...(rekor ? { rekorPublicKeyData: b64(log.publicKeyPem) } : {}),
          },
        ],
      });

    it('tiu sign --bundle keeps verifying under a key policy and is refused under key + Rekor with TLOG_MISSING', async () => {
      const t = new TestTarget();
      const img = await putImage(t, 'stable');
      await signImage(t, img, privateKey, { dockerReference: REF, bundle: true });
      t.tagsMap.delete(signatureTag(img.digest));
      assert.equal((await check(t, img, policy(false))).accepted[0]!.signatures![0]!.kind, 'bundle');
      await refused(check(t, img, policy(true)), 'TLOG_MISSING', /no transparency-log entry/);
    });

    it('a key bundle with a Rekor entry naming the key verifies under key + Rekor; one naming another key does not', async () => {
      const { t, img } = await bundled({ leaf: undefined, key: privateKey });
      const sig = (await check(t, img, policy(true))).accepted[0]!.signatures![0]!;
      assert.deepEqual([sig.kind, sig.keyIndex, sig.signedAt], ['bundle', 0, logged]);
      const other = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey;
      const wrong = await bundled({
        leaf: undefined,
        key: privateKey,
        body: (r) => {
          const spec = r.spec as { signatures: { verifier: string }[] };
          const verifier = b64(other.export({ format: 'pem', type: 'spki' }).toString());
          return { ...r, spec: { ...spec, signatures: [{ ...spec.signatures[0]!, verifier }] } };
        },
      });
      await refused(check(wrong.t, wrong.img, policy(true)), 'TLOG_INVALID', /another certificate or public key/);
    });
  });
});
