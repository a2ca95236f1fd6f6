/**
 * Sigstore bundles (v0.3) as OCI referrers, as cosign's BUNDLE_SPEC lays them out: a manifest
 * with artifactType application/vnd.dev.sigstore.bundle.v0.3+json, the empty config, one layer
 * holding the bundle JSON, and `subject` = the signed image.
 *
 * tiu writes (`tiu sign --bundle`) the key-based, offline flavour: verificationMaterial.publicKey
 * (a hint), no transparency log entries, and a DSSE envelope over an in-toto Statement v1 whose
 * subject is the image (name = the claimed docker reference, digest = the manifest digest) with
 * predicateType https://sigstore.dev/cosign/sign/v1. Without a log entry or a signed timestamp,
 * sigstore's verifiers refuse such a bundle at their defaults (they bound the signing time by
 * one); a key's trust does not depend on time, so tiu and podman need neither.
 * test/unit/trust/bundle.test.ts pins what sigstore-js says.
 *
 * tiu reads (parseBundle, statementClaims) that flavour and cosign 3's default keyless one: the
 * same envelope and statement, verificationMaterial.certificate (v0.3: the leaf, DER; v0.1/v0.2:
 * x509CertificateChain) and tlogEntries[] (Rekor v1 `dsse` 0.0.1 with inclusionPromise = SET).
 * Who signed is decided in src/trust/bundle-signer.ts (keyless: src/trust/fulcio.ts with the
 * entry of src/trust/bundle-tlog.ts); the statement's digest and name in src/trust/verify.ts.
 */
import { createHash, type KeyObject } from 'node:crypto';
import type { Target } from '../content/interfaces.ts';
import { parseDigest } from '../oci/digest.ts';
import { MAX_MANIFEST_BYTES, MediaType } from '../oci/mediatypes.ts';
import { Annotation, type Descriptor, type Digest, type ImageManifest } from '../oci/types.ts';
import { parseManifestBytes } from '../oci/validate.ts';
import { descriptorOf, pushIfAbsent, readVerified } from './content.ts';
import { isObject } from '../util/json.ts';
import { TrustError } from './errors.ts';
import { publicOf, signBytes, verifyBytes } from './keys.ts';

export const BUNDLE_MEDIA_TYPE = MediaType.SigstoreBundle;
export const IN_TOTO_PAYLOAD_TYPE = 'application/vnd.in-toto+json';
export const STATEMENT_TYPE = 'https://in-toto.io/Statement/v1';
export const COSIGN_SIGN_PREDICATE = 'https://sigstore.dev/cosign/sign/v1';
const MAX_BUNDLE_BYTES = 1024 * 1024;
/** Bundle referrers read per image (the rest are ignored). */
const MAX_BUNDLES = 64;

/** DSSE pre-authentication encoding. */
export function pae(payloadType: string, payload: Buffer): Buffer {
  const t = Buffer.from(payloadType, 'utf8');
  return Buffer.concat([Buffer.from(`DSSEv1 ${t.length} `), t, Buffer.from(` ${payload.length} `), payload]);
}

/** The key hint cosign-style tools use: base64 of SHA-256 over the SPKI DER. */
export function keyHint(key: KeyObject): string {
  const pub = key.type === 'private' ? publicOf(key) : key;
  return createHash('sha256')
    .update(pub.export({ format: 'der', type: 'spki' }))
    .digest('base64');
}

export function makeStatement(dockerReference: string, digest: Digest): Buffer {
  const { algorithm, hex } = parseDigest(digest);
  return Buffer.from(
    JSON.stringify({
      _type: STATEMENT_TYPE,
      subject: [{ name: dockerReference, digest: { [algorithm]: hex } }],
      predicateType: COSIGN_SIGN_PREDICATE,
      predicate: {},
    }),
  );
}

export function makeBundle(key: KeyObject, dockerReference: string, digest: Digest): Buffer {
  const statement = makeStatement(dockerReference, digest);
  const sig = signBytes(key, pae(IN_TOTO_PAYLOAD_TYPE, statement));
  return Buffer.from(
    JSON.stringify({
      mediaType: BUNDLE_MEDIA_TYPE,
      verificationMaterial: {
        publicKey: { hint: keyHint(key) },
        tlogEntries: [],
        timestampVerificationData: { rfc3161Timestamps: [] },
      },
      dsseEnvelope: {
        payload: statement.toString('base64'),
        payloadType: IN_TOTO_PAYLOAD_TYPE,
        signatures: [{ sig: sig.toString('base64'), keyid: '' }],
      },
    }),
  );
}

const EMPTY_CONFIG = Buffer.from('{}');

/** Store `bundle` as a referrer of `subject`. Returns the referrer manifest's descriptor. */
export async function attachBundle(
  target: Target,
  subject: Descriptor,
  bundle: Buffer,
  created = new Date(),
): Promise<Descriptor> {
  const layer = descriptorOf(BUNDLE_MEDIA_TYPE, bundle);
  const { algorithm, hex } = parseDigest(layer.digest);
  layer.annotations = { [Annotation.Title]: `${algorithm}-${hex}.sigstore.json` };
  const config = descriptorOf(MediaType.OciEmpty, EMPTY_CONFIG);
  await pushIfAbsent(target, layer, bundle);
  await pushIfAbsent(target, config, EMPTY_CONFIG);
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: MediaType.OciManifest,
    artifactType: BUNDLE_MEDIA_TYPE,
    config,
    layers: [layer],
    subject: { mediaType: subject.mediaType, digest: subject.digest, size: subject.size },
    annotations: {
      'dev.sigstore.bundle.content': 'dsse-envelope',
      'dev.sigstore.bundle.predicateType': COSIGN_SIGN_PREDICATE,
      [Annotation.Created]: created.toISOString(),
    },
  };
  const bytes = Buffer.from(JSON.stringify(manifest));
  const desc = descriptorOf(MediaType.OciManifest, bytes, { artifactType: BUNDLE_MEDIA_TYPE });
  await pushIfAbsent(target, desc, bytes);
  return desc;
}

export interface BundleClaim {
  /** The statement subject's name (the claimed docker reference). */
  dockerReference: string;
  digest: Digest;
}

/** A bundle's parts as read from hostile JSON: nothing here is verified yet. */
export interface ParsedBundle {
  /** verificationMaterial (certificate or publicKey hint, tlogEntries), unchecked. */
  material: Record<string, unknown>;
  /** The DSSE payload (the in-toto statement) and its pre-authentication encoding, which is what was signed. */
  payload: Buffer;
  signed: Buffer;
  /** The envelope's raw signatures (undecodable ones left out). */
  signatures: Buffer[];
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

function bundleInvalid(why: string): TrustError {
  return new TrustError('SIGNATURE_INVALID', `sigstore bundle ${why}`);
}

/** Parse a bundle's envelope and material; SIGNATURE_INVALID names what is malformed. */
export function parseBundle(bytes: Buffer): ParsedBundle {
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw bundleInvalid('is not JSON');
  }
  const env = isObject(doc) ? doc.dsseEnvelope : undefined;
  if (!isObject(env) || typeof env.payload !== 'string' || !BASE64.test(env.payload) || !Array.isArray(env.signatures))
    throw bundleInvalid('has no DSSE envelope');
  if (env.payloadType !== IN_TOTO_PAYLOAD_TYPE) throw bundleInvalid(`envelope is not of type ${IN_TOTO_PAYLOAD_TYPE}`);
  const material = (doc as { verificationMaterial?: unknown }).verificationMaterial;
  if (!isObject(material)) throw bundleInvalid('has no verificationMaterial');
  const payload = Buffer.from(env.payload, 'base64');
  const signatures = (env.signatures as { sig?: unknown }[])
    .map((s) => s?.sig)
    .filter((sig): sig is string => typeof sig === 'string' && BASE64.test(sig))
    .map((sig) => Buffer.from(sig, 'base64'));
  return {
    material,
    payload,
    signed: pae(IN_TOTO_PAYLOAD_TYPE, payload),
    signatures,
  };
}

/** What a cosign-sign in-toto statement claims (subject names and digests); null when it is not one. */
export function statementClaims(payload: Buffer): BundleClaim[] | null {
  let st: { _type?: unknown; predicateType?: unknown; subject?: unknown };
  try {
    st = JSON.parse(payload.toString('utf8')) as typeof st;
  } catch {
    return null;
  }
  if (
    typeof st !== 'object' ||
    st === null ||
    st._type !== STATEMENT_TYPE ||
    st.predicateType !== COSIGN_SIGN_PREDICATE ||
    !Array.isArray(st.subject)
  )
    return null;
  const claims: BundleClaim[] = [];
  for (const s of st.subject as { name?: unknown; digest?: Record<string, unknown> }[]) {
    if (typeof s?.name !== 'string' || typeof s.digest !== 'object' || s.digest === null) continue;
    for (const [alg, hex] of Object.entries(s.digest))
      if (typeof hex === 'string') claims.push({ dockerReference: s.name, digest: `${alg}:${hex}` });
  }
  return claims;
}

/** The index of the first of `keys` that made one of the bundle's signatures, or -1. */
export function bundleKeyIndex(bundle: ParsedBundle, keys: KeyObject[]): number {
  for (const raw of bundle.signatures) {
    const i = keys.findIndex((k) => verifyBytes(k, bundle.signed, raw));
    if (i >= 0) return i;
  }
  return -1;
}

/**
 * Verify a key-based bundle's DSSE signature with one of `keys` and return what it claims; null
 * when it is malformed, no key verifies it or it is not a cosign-sign statement.
 */
export function verifyBundle(bytes: Buffer, keys: KeyObject[]): { claims: BundleClaim[]; keyIndex: number } | null {
  let bundle: ParsedBundle;
  try {
    bundle = parseBundle(bytes);
  } catch {
    return null;
  }
  const keyIndex = bundleKeyIndex(bundle, keys);
  const claims = keyIndex < 0 ? null : statementClaims(bundle.payload);
  return claims ? { claims, keyIndex } : null;
}

/** The bundle bytes of every sigstore-bundle referrer of `subject` (targets without referrers give none). */
export async function listBundles(
  target: Target,
  subject: Descriptor,
): Promise<{ manifest: Descriptor; bundle?: Buffer }[]> {
  if (!target.referrers) return [];
  const out: { manifest: Descriptor; bundle?: Buffer }[] = [];
  for (const d of (await target.referrers(subject, BUNDLE_MEDIA_TYPE)).slice(0, MAX_BUNDLES)) {
    try {
      const m = parseManifestBytes(await readVerified(target, d, MAX_MANIFEST_BYTES, 'bundle manifest'), d.mediaType);
      const layer = m.layers.find((l) => l.mediaType === BUNDLE_MEDIA_TYPE);
      if (m.subject?.digest !== subject.digest || !layer) continue;
      out.push({ manifest: d, bundle: await readVerified(target, layer, MAX_BUNDLE_BYTES, 'sigstore bundle') });
    } catch {
      out.push({ manifest: d });
    }
  }
  return out;
}
