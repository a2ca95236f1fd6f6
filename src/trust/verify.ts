/**
 * Verify cosign simple-signing signatures of an image against public keys and an identity rule.
 * Order of checks for each signature: the signature over the payload bytes with one of the
 * keys (nothing in the payload is believed before that), the payload's form, its
 * docker-manifest-digest against the image's digest, its docker-reference against the rule.
 * The image passes when at least one signature passes all checks; otherwise the error is the
 * one of the signature that got furthest (see FAILURE_RANK).
 */
import type { KeyObject } from 'node:crypto';
import type { Target } from '../content/interfaces.ts';
import type { DockerReference } from '../oci/reference.ts';
import type { Descriptor, Digest } from '../oci/types.ts';
import { FAILURE_RANK, TrustError, type TrustErrorCode } from './errors.ts';
import { identityMismatch, type SignedIdentity } from './identity.ts';
import { verifyBytes } from './keys.ts';
import { parsePayload } from './payload.ts';
import { listSignatures, signatureTag, type StoredSignature } from './signatures.ts';
import { listBundles, verifyBundle } from './bundle.ts';

export interface VerifyOptions {
  /** Trusted public keys; a signature by any of them is accepted. */
  keys: KeyObject[];
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
  /** Index of the key (in VerifyOptions.keys) that verified it. */
  keyIndex: number;
}

export interface SignatureFailure {
  payloadDigest: Digest;
  code: TrustErrorCode;
  reason: string;
}

function decodeSignature(s: string): Buffer | undefined {
  const t = s.trim();
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
  const keyIndex = opts.keys.findIndex((k) => verifyBytes(k, sig.payload!, raw));
  if (keyIndex < 0)
    return fail(
      'SIGNATURE_INVALID',
      `does not verify with ${opts.keys.length === 1 ? 'the trusted key' : `any of the ${opts.keys.length} trusted keys`} (payload altered or signed by another key)`,
    );
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
  return {
    kind: 'simplesigning',
    dockerReference: payload.dockerReference,
    manifestDigest: payload.manifestDigest,
    optional: payload.optional,
    payloadDigest,
    keyIndex,
  };
}

/** Check one sigstore bundle (DSSE in-toto statement, key-based) the same way. */
export function checkBundle(
  manifest: Digest,
  bundle: Buffer | undefined,
  subject: Digest,
  opts: VerifyOptions,
): VerifiedSignature | SignatureFailure {
  const fail = (code: TrustErrorCode, reason: string): SignatureFailure => ({ payloadDigest: manifest, code, reason });
  if (!bundle) return fail('SIGNATURE_INVALID', 'sigstore bundle unreadable');
  const r = verifyBundle(bundle, opts.keys);
  if (!r)
    return fail(
      'SIGNATURE_INVALID',
      'sigstore bundle does not verify with a trusted key (altered, signed by another key, or not a cosign statement)',
    );
  const mine = r.claims.filter((c) => c.digest === subject);
  if (mine.length === 0)
    return fail(
      'SIGNATURE_DIGEST_MISMATCH',
      `bundle signed for ${r.claims.map((c) => c.digest).join(', ') || 'nothing'}, not ${subject}`,
    );
  if (opts.annotations && Object.keys(opts.annotations).length > 0)
    return fail('IDENTITY_MISMATCH', 'bundles carry no annotations to match');
  let why = '';
  for (const c of mine) {
    const w = identityMismatch(opts.identity, opts.imageIdentity, c.dockerReference);
    if (w === null)
      return {
        kind: 'bundle',
        dockerReference: c.dockerReference,
        manifestDigest: subject,
        optional: null,
        payloadDigest: manifest,
        keyIndex: r.keyIndex,
      };
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
  if (opts.keys.length === 0) throw new TrustError('KEY_INVALID', 'no public key to verify with');
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
