/**
 * Verify cosign signatures (simple signing, sigstore bundles) of an image against public keys or a Fulcio CA, and
 * an identity rule. Order of checks for each signature: who signed it (keyless: certificate,
 * chain, Rekor SET, validity at the logged time, OIDC issuer, SAN, see src/trust/fulcio.ts;
 * key + Rekor: a SET naming one of the keys, src/trust/rekor.ts), the signature over the
 * payload bytes with the signer's key (nothing in the payload is believed before that), the
 * payload's form, its docker-manifest-digest against the image's digest, its docker-reference
 * against the rule. The image passes when at least one signature passes all checks; otherwise
 * the error is the one of the signature that got furthest (see FAILURE_RANK). Sigstore bundle
 * referrers count as signatures too (checkBundle: src/trust/bundle-signer.ts, then the statement).
 */
import type { Target } from '../content/interfaces.ts';
import type { DockerReference } from '../oci/reference.ts';
import type { Descriptor, Digest } from '../oci/types.ts';
import { FAILURE_RANK, TrustError, type TrustErrorCode } from './errors.ts';
import { identityMismatch, type SignedIdentity } from './identity.ts';
import { verifyBytes } from './keys.ts';
import { parsePayload } from './payload.ts';
import { listSignatures, signatureTag, type StoredSignature } from './signatures.ts';
import { listBundles, parseBundle, statementClaims, type ParsedBundle } from './bundle.ts';
import { identifyBundleSigner, withSigner, type Signer, type SignerTrust } from './bundle-signer.ts';
import { CERTIFICATE_ANNOTATION, CHAIN_ANNOTATION, parseSignerCertificates, verifyKeylessSigner } from './fulcio.ts';
import { REKOR_SET_ANNOTATION, verifyRekorSet, type RekorEntry } from './rekor.ts';

export interface VerifyOptions extends SignerTrust {
  /** How the signed docker-reference must relate to the image. */
  identity: SignedIdentity;
  /** The image's docker identity (undefined for an OCI layout with no name given). */
  imageIdentity: DockerReference | undefined;
  /** Entries the payload's `optional` section must carry (cosign verify -a). */
  annotations?: Record<string, string>;
}

export interface VerifiedSignature {
  /** A cosign `.sig` simple-signing layer, or a sigstore bundle referrer. */
  kind: 'simplesigning' | 'bundle';
  dockerReference: string;
  manifestDigest: Digest;
  optional: Record<string, unknown> | null;
  /** Digest of the payload blob in the signature manifest (of the referrer manifest for a bundle). */
  payloadDigest: Digest;
  /** Index of the key (in VerifyOptions.keys) that verified it; -1 for a keyless signature (a certificate). */
  keyIndex: number;
  /** When the Rekor log integrated it (a SET was verified). */
  signedAt?: Date;
  /** Keyless: the certificate's OIDC issuer and the SAN the policy matched. */
  certificate?: { issuer: string; subject: string };
}

export interface SignatureFailure {
  payloadDigest: Digest;
  code: TrustErrorCode;
  reason: string;
}

/** Longest signature annotation read: an ECDSA/RSA-4096 signature in base64 is far below. */
const MAX_SIGNATURE_CHARS = 8192;

function decodeSignature(s: string): Buffer | undefined {
  const t = s.trim();
  if (t.length > MAX_SIGNATURE_CHARS) return undefined;
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(t)) return undefined;
  return Buffer.from(t, 'base64');
}

/** Check one stored signature; returns the verified facts or the failure. */
export function checkSignature(
  sig: StoredSignature,
  subject: Digest,
  opts: VerifyOptions,
): VerifiedSignature | SignatureFailure {
  const payloadDigest = sig.layer.digest;
  const fail = (code: TrustErrorCode, reason: string): SignatureFailure => ({ payloadDigest, code, reason });
  if (!sig.payload)
    return fail(
      'SIGNATURE_INVALID',
      `payload unreadable: ${sig.readError?.message ?? 'unknown'} [${sig.readError?.code ?? ''}]`,
    );
  const raw = decodeSignature(sig.signature);
  if (!raw) return fail('SIGNATURE_INVALID', 'the signature annotation is not base64');
  const signer = identifySigner(sig, sig.payload, raw, opts);
  if ('code' in signer) return fail(signer.code, signer.reason);
  const { keyIndex } = signer;
  let payload;
  try {
    payload = parsePayload(sig.payload);
  } catch (e) {
    return fail('SIGNATURE_PAYLOAD_INVALID', (e as Error).message);
  }
  if (payload.manifestDigest !== subject) {
    return fail(
      'SIGNATURE_DIGEST_MISMATCH',
      `signed for manifest ${payload.manifestDigest}, not ${subject} (a signature replayed from another image)`,
    );
  }
  const why = identityMismatch(opts.identity, opts.imageIdentity, payload.dockerReference);
  if (why !== null) return fail('IDENTITY_MISMATCH', `${why} (signedIdentity ${opts.identity.type})`);
  for (const [k, v] of Object.entries(opts.annotations ?? {})) {
    const got = payload.optional?.[k];
    if (got !== v)
      return fail(
        'IDENTITY_MISMATCH',
        `annotation ${k}=${JSON.stringify(v)} required, payload has ${JSON.stringify(got ?? null)}`,
      );
  }
  const verified: VerifiedSignature = {
    kind: 'simplesigning',
    dockerReference: payload.dockerReference,
    manifestDigest: payload.manifestDigest,
    optional: payload.optional,
    payloadDigest,
    keyIndex,
  };
  return withSigner(verified, signer);
}

function asFailure(e: unknown): Omit<SignatureFailure, 'payloadDigest'> {
  if (e instanceof TrustError) return { code: e.code, reason: e.message };
  throw e;
}

/**
 * Who made the signature, checked before the signature itself: the certificate (keyless), or
 * the trusted key a Rekor SET names (key + Rekor), or any trusted key the signature verifies with.
 */
function identifySigner(
  sig: StoredSignature,
  payload: Buffer,
  raw: Buffer,
  opts: VerifyOptions,
): Signer | Omit<SignatureFailure, 'payloadDigest'> {
  const annotations = sig.layer.annotations ?? {};
  if (opts.fulcio) {
    let signer;
    try {
      signer = verifyKeylessSigner(
        parseSignerCertificates(annotations[CERTIFICATE_ANNOTATION], annotations[CHAIN_ANNOTATION]),
        opts.fulcio,
        (leaf) =>
          verifyRekorSet(annotations[REKOR_SET_ANNOTATION], opts.rekorKeys ?? [], {
            signerDer: leaf.der,
            signature: raw,
            payload,
          }),
      );
    } catch (e) {
      return asFailure(e);
    }
    if (!verifyBytes(signer.publicKey, payload, raw))
      return {
        code: 'SIGNATURE_INVALID',
        reason: "does not verify with the signing certificate's key (payload or signature altered)",
      };
    return { keyIndex: -1, entry: signer.entry, certificate: signer.certificate };
  }
  const candidates = opts.keys.map((key, keyIndex) => ({ key, keyIndex }));
  let entry: RekorEntry | undefined;
  if (opts.rekorKeys) {
    // The SET names one public key: only that key may then have made the signature.
    const reasons = new Set<string>();
    let found: (typeof candidates)[number] | undefined;
    for (const c of candidates) {
      try {
        const spki = c.key.export({ format: 'der', type: 'spki' });
        entry = verifyRekorSet(annotations[REKOR_SET_ANNOTATION], opts.rekorKeys, {
          signerDer: spki,
          signature: raw,
          payload,
        });
        found = c;
        break;
      } catch (e) {
        const f = asFailure(e);
        if (f.code === 'TLOG_MISSING') return f;
        reasons.add(f.reason);
      }
    }
    if (!found) return { code: 'TLOG_INVALID', reason: [...reasons].join('; ') };
    candidates.splice(0, candidates.length, found);
  }
  const match = candidates.find((c) => verifyBytes(c.key, payload, raw));
  if (!match)
    return {
      code: 'SIGNATURE_INVALID',
      reason: `does not verify with ${candidates.length === 1 ? 'the trusted key' : `any of the ${candidates.length} trusted keys`} (payload altered or signed by another key)`,
    };
  return entry ? { keyIndex: match.keyIndex, entry } : { keyIndex: match.keyIndex };
}

/**
 * Check one sigstore bundle the same way: who signed it (src/trust/bundle-signer.ts: keyless with
 * its own log entry, key + Rekor, or a key), then the statement's subject digest and name.
 */
export function checkBundle(
  manifest: Digest,
  bytes: Buffer | undefined,
  subject: Digest,
  opts: VerifyOptions,
): VerifiedSignature | SignatureFailure {
  const fail = (code: TrustErrorCode, reason: string): SignatureFailure => ({ payloadDigest: manifest, code, reason });
  if (!bytes) return fail('SIGNATURE_INVALID', 'sigstore bundle unreadable');
  let signer: Signer;
  let bundle: ParsedBundle;
  try {
    bundle = parseBundle(bytes);
    signer = identifyBundleSigner(bundle, opts);
  } catch (e) {
    const f = asFailure(e);
    return fail(f.code, f.reason);
  }
  const claims = statementClaims(bundle.payload);
  if (!claims)
    return fail('SIGNATURE_PAYLOAD_INVALID', 'sigstore bundle statement is not a cosign-sign in-toto statement');
  const mine = claims.filter((c) => c.digest === subject);
  if (mine.length === 0)
    return fail(
      'SIGNATURE_DIGEST_MISMATCH',
      `bundle signed for ${claims.map((c) => c.digest).join(', ') || 'nothing'}, not ${subject} (a signature replayed from another image)`,
    );
  if (opts.annotations && Object.keys(opts.annotations).length > 0)
    return fail('IDENTITY_MISMATCH', 'bundles carry no annotations to match');
  let why = '';
  for (const c of mine) {
    const w = identityMismatch(opts.identity, opts.imageIdentity, c.dockerReference);
    if (w === null) {
      const verified: VerifiedSignature = {
        kind: 'bundle',
        dockerReference: c.dockerReference,
        manifestDigest: subject,
        optional: null,
        payloadDigest: manifest,
        keyIndex: signer.keyIndex,
      };
      return withSigner(verified, signer);
    }
    why = w;
  }
  return fail('IDENTITY_MISMATCH', `${why} (signedIdentity ${opts.identity.type})`);
}

function isFailure(x: VerifiedSignature | SignatureFailure): x is SignatureFailure {
  return 'code' in x;
}

export interface VerifyResult {
  verified: VerifiedSignature[];
  failures: SignatureFailure[];
}

/**
 * Verify the signatures attached to `root` in `target`. Resolves with every signature that
 * passes (at least one); throws a TrustError otherwise.
 */
export async function verifyImageSignatures(
  target: Target,
  root: Descriptor,
  opts: VerifyOptions,
): Promise<VerifyResult> {
  if (opts.keys.length === 0 && !opts.fulcio) throw new TrustError('KEY_INVALID', 'no public key to verify with');
  if (opts.fulcio && (opts.rekorKeys ?? []).length === 0)
    throw new TrustError('KEY_INVALID', 'a Fulcio CA needs Rekor public keys to verify with');
  const sigs = await listSignatures(target, root.digest);
  const bundles = await listBundles(target, root);
  if (sigs.length === 0 && bundles.length === 0) {
    throw new TrustError(
      'SIGNATURE_MISSING',
      `${target.name}: image ${root.digest} has no signature (no ${signatureTag(root.digest)}, no sigstore bundle referrer)`,
      {
        image: root.digest,
        where: target.name,
      },
    );
  }
  const verified: VerifiedSignature[] = [];
  const failures: SignatureFailure[] = [];
  for (const s of sigs) {
    const r = checkSignature(s, root.digest, opts);
    if (isFailure(r)) failures.push(r);
    else verified.push(r);
  }
  for (const b of bundles) {
    const r = checkBundle(b.manifest.digest, b.bundle, root.digest, opts);
    if (isFailure(r)) failures.push(r);
    else verified.push(r);
  }
  if (verified.length > 0) return { verified, failures };
  const worst = failures.reduce((a, b) => ((FAILURE_RANK[b.code] ?? 0) > (FAILURE_RANK[a.code] ?? 0) ? b : a));
  const more =
    failures.length > 1 ? ` (and ${failures.length - 1} other signature${failures.length > 2 ? 's' : ''} failing)` : '';
  throw new TrustError(
    worst.code,
    `${target.name}: image ${root.digest}: signature ${worst.payloadDigest} ${worst.reason}${more}`,
    {
      image: root.digest,
      where: target.name,
      failures,
    },
  );
}
