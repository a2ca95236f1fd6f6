import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { isTiuError } from '../../../src/errors.ts';
import { parseReference } from '../../../src/oci/reference.ts';
import type { Descriptor } from '../../../src/oci/types.ts';
import { CERTIFICATE_ANNOTATION, CHAIN_ANNOTATION } from '../../../src/trust/fulcio.ts';
import { checkPolicy, parsePolicy, type PolicyDecision } from '../../../src/trust/policy.ts';
import { REKOR_SET_ANNOTATION } from '../../../src/trust/rekor.ts';
import { quoteUntrusted } from '../../../src/trust/x509.ts';
import {
  hashedRekordBody,
  issueLeaf,
  makeFulcioCa,
  makeRekorLog,
  pastValidity,
  makeSet,
  subordinateCa,
  tamperIntegratedTime,
  TEST_EMAIL,
  TEST_OIDC_ISSUER,
  TEST_URI,
  writeKeylessSignature,
  writeKeyRekorSignature,
  type KeylessSignOptions,
} from '../../helpers/sigstore-fixtures.ts';
import { putImage, TestTarget } from '../../helpers/trust-target.ts';

const REF = 'registry.example/os/microos:stable';
const b64 = (s: string): string => Buffer.from(s).toString('base64');
const MIN = 60_000;

describe('trust/keyless (Fulcio + Rekor, offline)', function () {
  this.timeout(60_000);
  const ca = makeFulcioCa('fulcio');
  const otherCa = makeFulcioCa('other');
  const log = makeRekorLog();
  const otherLog = makeRekorLog();
  // Minutes of validity two hours ago: already expired by the device's clock, valid when logged.
  const { t0, logged, leafOpts } = pastValidity();
  const leaf = issueLeaf(ca, leafOpts);

  function fulcioPolicy(fulcio: Record<string, unknown> = {}, extra: Record<string, unknown> = {}): string {
    return JSON.stringify({
      default: [
        {
          type: 'sigstoreSigned',
          fulcio: { caData: b64(ca.root.certPem), oidcIssuer: TEST_OIDC_ISSUER, subjectEmail: TEST_EMAIL, ...fulcio },
          rekorPublicKeyData: b64(log.publicKeyPem),
          ...extra,
        },
      ],
    });
  }

  async function signedImage(o: Partial<KeylessSignOptions> = {}): Promise<{ t: TestTarget; img: Descriptor }> {
    const t = new TestTarget();
    const img = await putImage(t, 'stable');
    await writeKeylessSignature(t, img, { dockerReference: REF, leaf, ca, log, integratedTime: logged, ...o });
    return { t, img };
  }

  async function check(t: TestTarget, img: Descriptor, policy = fulcioPolicy()): Promise<PolicyDecision> {
    return checkPolicy(parsePolicy(policy), t, img, parseReference(REF));
  }

  async function refused(p: Promise<unknown>, code: string, text?: RegExp): Promise<void> {
    await assert.rejects(p, (e: unknown) => {
      assert.ok(isTiuError(e), String(e));
      assert.equal(e.code, code, e.message);
      assert.ok(!e.message.includes('\n'), 'one line');
      if (text) assert.match(e.message, text);
      return true;
    });
  }

  it('accepts a keyless signature: chain to the CA, SET, issuer, email; the certificate is checked at the logged time', async () => {
    const { t, img } = await signedImage();
    const d = await check(t, img);
    const sig = d.accepted[0]!.signatures![0]!;
    assert.equal(sig.manifestDigest, img.digest);
    assert.equal(sig.keyIndex, -1);
    assert.deepEqual(sig.signedAt, logged);
    assert.deepEqual(sig.certificate, { issuer: TEST_OIDC_ISSUER, subject: TEST_EMAIL });
  });

  it('takes the OIDC issuer from either extension (v2 UTF8String, legacy v1 raw)', async () => {
    for (const only of [{ issuerV1: undefined }, { issuerV2: undefined }]) {
      const l = issueLeaf(ca, { ...leafOpts, ...only });
      const { t, img } = await signedImage({ leaf: l });
      assert.equal((await check(t, img)).accepted[0]!.signatures![0]!.certificate!.issuer, TEST_OIDC_ISSUER);
    }
  });

  it('refuses another, a missing, or inconsistent OIDC issuers with OIDC_ISSUER_MISMATCH', async () => {
    const { t, img } = await signedImage();
    await refused(
      check(t, img, fulcioPolicy({ oidcIssuer: 'https://accounts.example.org' })),
      'OIDC_ISSUER_MISMATCH',
      /accounts\.example\.org/,
    );
    for (const [opts, why] of [
      [{ issuerV1: undefined, issuerV2: undefined }, /no OIDC issuer/],
      [{ issuerV1: 'https://evil.example' }, /inconsistent/],
    ] as const) {
      const s = await signedImage({ leaf: issueLeaf(ca, { ...leafOpts, ...opts }) });
      await refused(check(s.t, s.img), 'OIDC_ISSUER_MISMATCH', why);
    }
  });

  it('refuses another email with CERT_SUBJECT_MISMATCH; subjectURI (tiu) matches URI SANs only', async () => {
    const { t, img } = await signedImage();
    await refused(
      check(t, img, fulcioPolicy({ subjectEmail: 'mallory@example.com' })),
      'CERT_SUBJECT_MISMATCH',
      /release@example\.com.*mallory/,
    );
    const uriPolicy = fulcioPolicy({ subjectEmail: undefined, subjectURI: TEST_URI });
    await refused(check(t, img, uriPolicy), 'CERT_SUBJECT_MISMATCH', /URI \(none\)/);
    const ci = await signedImage({ leaf: issueLeaf(ca, { ...leafOpts, email: undefined, uri: TEST_URI }) });
    const d = await check(ci.t, ci.img, uriPolicy);
    assert.equal(d.accepted[0]!.signatures![0]!.certificate!.subject, TEST_URI);
  });

  it('refuses a certificate of another CA, or without code signing, with CERT_UNTRUSTED', async () => {
    const foreign = await signedImage({ leaf: issueLeaf(otherCa, leafOpts), ca: otherCa });
    await refused(check(foreign.t, foreign.img), 'CERT_UNTRUSTED', /another CA/);
    // The other CA's chain handed along does not help: only the policy's CA is an anchor.
    const mixed = await signedImage({
      leaf: issueLeaf(otherCa, leafOpts),
      ca: { ...otherCa, chainPem: otherCa.chainPem + ca.root.certPem },
    });
    await refused(check(mixed.t, mixed.img), 'CERT_UNTRUSTED');
    // The intermediate allows no CA below it (pathlen 0).
    const deeper = subordinateCa(ca);
    const tooLong = await signedImage({ leaf: issueLeaf(deeper, leafOpts), ca: deeper });
    await refused(check(tooLong.t, tooLong.img), 'CERT_UNTRUSTED', /path length/);
    const tls = await signedImage({ leaf: issueLeaf(ca, { ...leafOpts, eku: 'serverAuth' }) });
    await refused(check(tls.t, tls.img), 'CERT_UNTRUSTED', /code signing/);
    // Without the chain the intermediate is missing.
    const noChain = await signedImage({ omit: [CHAIN_ANNOTATION] });
    await refused(check(noChain.t, noChain.img), 'CERT_UNTRUSTED');
    // Trusting the intermediate itself works (it is an anchor then).
    await check(noChain.t, noChain.img, fulcioPolicy({ caData: b64(ca.intermediate.certPem) }));
  });

  it('refuses unparseable, missing and oversized certificate annotations with CERT_INVALID', async () => {
    const missing = await signedImage({ omit: [CERTIFICATE_ANNOTATION] });
    await refused(check(missing.t, missing.img), 'CERT_INVALID', /no dev\.sigstore\.cosign\/certificate/);
    const t = new TestTarget();
    const img = await putImage(t, 'stable');
    const { appendSignature } = await import('../../../src/trust/signatures.ts');
    const { makePayload } = await import('../../../src/trust/payload.ts');
    const payload = makePayload({ dockerReference: REF, manifestDigest: img.digest, optional: null });
    const cases: [Record<string, string>, RegExp][] = [
      [{ [CERTIFICATE_ANNOTATION]: 'not a certificate' }, /not a sequence of PEM/],
      [{ [CERTIFICATE_ANNOTATION]: `${leaf.certPem}Proc-Type: 4,ENCRYPTED\n` }, /not a sequence of PEM/],
      [
        { [CERTIFICATE_ANNOTATION]: '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n' },
        /not a valid X\.509/,
      ],
      [{ [CERTIFICATE_ANNOTATION]: leaf.certPem + leaf.certPem }, /more than 1/],
      [
        { [CERTIFICATE_ANNOTATION]: leaf.certPem, [CHAIN_ANNOTATION]: ca.intermediate.certPem.repeat(11) },
        /more than 10/,
      ],
      [{ [CERTIFICATE_ANNOTATION]: leaf.certPem.padEnd(20_000, '\n') }, /more than 16384/],
    ];
    for (const [annotations, why] of cases) {
      const one = new TestTarget();
      const im = await putImage(one, 'stable');
      await appendSignature(one, im.digest, payload, 'MEUCIQ==', () => false, annotations);
      await refused(check(one, im), 'CERT_INVALID', why);
    }
  });

  it('refuses a missing SET with TLOG_MISSING and a tampered or foreign SET with TLOG_INVALID', async () => {
    const none = await signedImage({ omit: [REKOR_SET_ANNOTATION] });
    await refused(check(none.t, none.img), 'TLOG_MISSING');
    const tampered = await signedImage({ tamperSet: tamperIntegratedTime });
    await refused(check(tampered.t, tampered.img), 'TLOG_INVALID', /SignedEntryTimestamp does not verify/);
    const otherLogSet = await signedImage({ log: otherLog });
    await refused(check(otherLogSet.t, otherLogSet.img), 'TLOG_INVALID', /does not verify/);
    // A genuine SET of another signature (by the same certificate) does not vouch for this one.
    const foreignSet = await signedImage({
      tamperSet: () =>
        makeSet(log, hashedRekordBody(Buffer.from('another signature'), leaf.certPem, Buffer.from('x')), logged),
    });
    await refused(check(foreignSet.t, foreignSet.img), 'TLOG_INVALID', /another signature/);
    // Signed by the log's key but naming another log's id.
    const foreignId = await signedImage({
      tamperSet: () =>
        makeSet(
          { ...log, logID: otherLog.logID },
          hashedRekordBody(Buffer.from('x'), leaf.certPem, Buffer.from('x')),
          logged,
        ),
    });
    await refused(check(foreignId.t, foreignId.img), 'TLOG_INVALID', /not the id of the Rekor key/);
    const extraField = await signedImage({ tamperSet: (set) => set.replace(/^\{/, '{"Extra":1,') });
    await refused(check(extraField.t, extraField.img), 'TLOG_INVALID', /unknown "Extra"/);
    const notJson = await signedImage({ tamperSet: () => '{"SignedEntryTimestamp":' });
    await refused(check(notJson.t, notJson.img), 'TLOG_INVALID', /not JSON/);
  });

  it('refuses a SET logged outside the certificate validity with CERT_VALIDITY_MISMATCH', async () => {
    for (const at of [new Date(t0.getTime() + 11 * MIN), new Date(t0.getTime() - MIN)]) {
      const { t, img } = await signedImage({ integratedTime: at });
      await refused(check(t, img), 'CERT_VALIDITY_MISMATCH', new RegExp(at.toISOString()));
    }
  });

  it('refuses a signature replayed onto another digest with SIGNATURE_DIGEST_MISMATCH', async () => {
    const t = new TestTarget();
    const a = await putImage(t, 'a', 'one');
    const b = await putImage(t, 'b', 'two');
    await writeKeylessSignature(t, b, {
      dockerReference: REF,
      manifestDigest: a.digest,
      leaf,
      ca,
      log,
      integratedTime: logged,
    });
    await refused(check(t, b), 'SIGNATURE_DIGEST_MISMATCH', /replayed/);
  });

  it("refuses a payload not signed by the certificate's key with SIGNATURE_INVALID", async () => {
    const impostor = issueLeaf(ca, leafOpts);
    // The SET and annotations name `leaf`; the payload was signed by another key.
    const t = new TestTarget();
    const img = await putImage(t, 'stable');
    await writeKeylessSignature(t, img, {
      dockerReference: REF,
      leaf: { certPem: leaf.certPem, key: impostor.key },
      ca,
      log,
      integratedTime: logged,
    });
    await refused(check(t, img), 'SIGNATURE_INVALID', /certificate's key/);
  });

  it('reports the error of the signature that got furthest', async () => {
    const { t, img } = await signedImage({ leaf: issueLeaf(otherCa, leafOpts), ca: otherCa });
    await writeKeylessSignature(t, img, {
      dockerReference: REF,
      leaf: issueLeaf(ca, { ...leafOpts, email: 'mallory@example.com' }),
      ca,
      log,
      integratedTime: logged,
    });
    await refused(check(t, img), 'CERT_SUBJECT_MISMATCH', /1 other signature failing/);
  });

  it('quotes hostile certificate values on one printable line', () => {
    assert.equal(quoteUntrusted('a\u001b[2J\u202e"b\nc'), '"a\\u001b[2J\\u202e\\"b\\u000ac"');
    assert.equal(quoteUntrusted('x'.repeat(500), 10), `"${'x'.repeat(7)}..."`);
    assert.equal(quoteUntrusted({ a: 1 }), '"{\\"a\\":1}"');
  });

  describe('public key + Rekor', () => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const other = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const pem = (k: typeof publicKey): string => k.export({ format: 'pem', type: 'spki' }).toString();
    const policy = (keys: string[]): string =>
      JSON.stringify({
        default: [
          {
            type: 'sigstoreSigned',
            keyDatas: keys.map(b64),
            rekorPublicKeyDatas: [b64(otherLog.publicKeyPem), b64(log.publicKeyPem)],
          },
        ],
      });

    it('accepts a key signature whose SET names the key; refuses a tampered or missing SET', async () => {
      const t = new TestTarget();
      const img = await putImage(t, 'stable');
      await writeKeyRekorSignature(t, img, { key: privateKey, dockerReference: REF, log, integratedTime: logged });
      const d = await check(t, img, policy([pem(other.publicKey), pem(publicKey)]));
      assert.equal(d.accepted[0]!.signatures![0]!.keyIndex, 1);
      assert.deepEqual(d.accepted[0]!.signatures![0]!.signedAt, logged);

      const bad = new TestTarget();
      const badImg = await putImage(bad, 'stable');
      await writeKeyRekorSignature(bad, badImg, {
        key: privateKey,
        dockerReference: REF,
        log,
        integratedTime: logged,
        tamperSet: tamperIntegratedTime,
      });
      await refused(check(bad, badImg, policy([pem(publicKey)])), 'TLOG_INVALID');
      // The SET names the signer's key: a policy trusting only another key refuses it.
      await refused(check(t, img, policy([pem(other.publicKey)])), 'TLOG_INVALID', /another certificate or public key/);

      const plain = new TestTarget();
      const plainImg = await putImage(plain, 'stable');
      const { signImage } = await import('../../../src/trust/sign.ts');
      await signImage(plain, plainImg, privateKey, { dockerReference: REF });
      await refused(check(plain, plainImg, policy([pem(publicKey)])), 'TLOG_MISSING');
    });
  });

  describe('policy parsing (containers/image rules)', () => {
    const parse = (req: Record<string, unknown>): unknown => parsePolicy(JSON.stringify({ default: [req] }));
    const fulcio = { caPath: '/ca.pem', oidcIssuer: TEST_OIDC_ISSUER, subjectEmail: TEST_EMAIL };
    const cases: [string, Record<string, unknown>][] = [
      ['fulcio without a Rekor key', { type: 'sigstoreSigned', fulcio }],
      ['two Rekor fields', { type: 'sigstoreSigned', fulcio, rekorPublicKeyPath: '/r', rekorPublicKeyData: b64('x') }],
      ['fulcio and a key', { type: 'sigstoreSigned', fulcio, keyPath: '/k', rekorPublicKeyPath: '/r' }],
      [
        'caPath and caData',
        { type: 'sigstoreSigned', fulcio: { ...fulcio, caData: b64('x') }, rekorPublicKeyPath: '/r' },
      ],
      ['no CA', { type: 'sigstoreSigned', fulcio: { ...fulcio, caPath: undefined }, rekorPublicKeyPath: '/r' }],
      [
        'no oidcIssuer',
        { type: 'sigstoreSigned', fulcio: { ...fulcio, oidcIssuer: undefined }, rekorPublicKeyPath: '/r' },
      ],
      [
        'email and URI',
        { type: 'sigstoreSigned', fulcio: { ...fulcio, subjectURI: TEST_URI }, rekorPublicKeyPath: '/r' },
      ],
      [
        'no subject',
        { type: 'sigstoreSigned', fulcio: { ...fulcio, subjectEmail: undefined }, rekorPublicKeyPath: '/r' },
      ],
      [
        'an unknown fulcio field',
        { type: 'sigstoreSigned', fulcio: { ...fulcio, subjectHostname: 'x' }, rekorPublicKeyPath: '/r' },
      ],
      ['empty rekorPublicKeyPaths', { type: 'sigstoreSigned', keyPath: '/k', rekorPublicKeyPaths: [] }],
      ['pki with Rekor', { type: 'sigstoreSigned', pki: {}, rekorPublicKeyPath: '/r' }],
    ];
    for (const [name, req] of cases) {
      it(`refuses ${name} with POLICY_INVALID`, () => {
        assert.throws(
          () => parse(JSON.parse(JSON.stringify(req)) as Record<string, unknown>),
          (e: unknown) => isTiuError(e, 'POLICY_INVALID'),
        );
      });
    }

    it('refuses a Rekor key that is not ECDSA with KEY_UNSUPPORTED', async () => {
      const { t, img } = await signedImage();
      const ed = generateKeyPairSync('ed25519').publicKey.export({ format: 'pem', type: 'spki' }).toString();
      await refused(check(t, img, fulcioPolicy({}, { rekorPublicKeyData: b64(ed) })), 'KEY_UNSUPPORTED');
    });
  });
});
