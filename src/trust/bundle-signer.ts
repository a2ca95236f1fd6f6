/**
 * Who signed a sigstore bundle, under the same policy kinds and codes as simple signing:
 * - keyless (fulcio + rekorPublicKey*; cosign 3's default output): the leaf certificate of
 *   verificationMaterial (v0.3 `certificate`, or v0.1/v0.2 `x509CertificateChain`, whose later
 *   certificates may link it to the policy's CA; a v0.3 bundle carries the leaf only, so the policy's CA file
 *   holds Fulcio's intermediate too), checked by src/trust/fulcio.ts with the log entry from the
 *   bundle's tlogEntries (src/trust/bundle-tlog.ts), then the DSSE signature with the leaf's key;
 * - key + rekorPublicKey*: a log entry must be there (TLOG_MISSING first, as for simple
 *   signatures without a SET), the DSSE signature by a trusted key, and the entry naming that key;
 * - keys only: the DSSE signature by a trusted key.
 * Throws TrustError; the caller then checks the statement (digest, identity).
 */
import type { KeyObject } from 'node:crypto';
import { bundleKeyIndex, type ParsedBundle } from './bundle.ts';
import { verifyBundleTlog } from './bundle-tlog.ts';
import { isObject } from '../util/json.ts';
import { TrustError } from './errors.ts';
import { MAX_CERTIFICATE_BYTES, MAX_CHAIN_CERTIFICATES, verifyKeylessSigner, type FulcioTrust } from './fulcio.ts';
import { verifyBytes } from './keys.ts';
import type { RekorEntry } from './rekor.ts';
import { parseCertificateDer, type Certificate } from './x509.ts';

/** Who made a signature (simple signing or bundle), as the checks established it. */
export interface Signer {
  /** Index of the trusted key; -1 for a certificate. */
  keyIndex: number;
  /** The Rekor entry whose SET verified (key + Rekor, keyless). */
  entry?: RekorEntry;
  /** Keyless: the certificate's OIDC issuer and the SAN the policy matched. */
  certificate?: { issuer: string; subject: string };
}

/** What one policy requirement trusts as signers (src/trust/policy-signed.ts loadTrust). */
export interface SignerTrust {
  /** Trusted public keys; a signature by any of them is accepted. Empty with `fulcio`. */
  keys: KeyObject[];
  /** Keyless: signers are certificates of this CA with this identity (needs rekorKeys). */
  fulcio?: FulcioTrust;
  /** Rekor log keys: every signature must carry a SET by one of them (with keys or fulcio). */
  rekorKeys?: KeyObject[];
}

/** `verified` with what its signer adds: the logged time and the certificate's identity. */
export function withSigner<T extends { signedAt?: Date; certificate?: Signer['certificate'] }>(
  verified: T,
  signer: Signer,
): T {
  if (signer.entry) verified.signedAt = signer.entry.integratedTime;
  if (signer.certificate) verified.certificate = signer.certificate;
  return verified;
}

function certInvalid(why: string): TrustError {
  return new TrustError('CERT_INVALID', `the sigstore bundle ${why}`);
}

function certificateDer(v: unknown, where: string): Certificate {
  const raw = isObject(v) ? v.rawBytes : undefined;
  if (typeof raw !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(raw)) throw certInvalid(`${where} has no rawBytes`);
  if ((raw.length / 4) * 3 > MAX_CERTIFICATE_BYTES)
    throw certInvalid(`${where} is larger than ${MAX_CERTIFICATE_BYTES} bytes`);
  return parseCertificateDer(Buffer.from(raw, 'base64'), `the sigstore bundle's ${where}`);
}

/** The bundle's signing certificate and the certificates its chain carries after it (links, never anchors). */
export function bundleCertificates(material: Record<string, unknown>): {
  leaf: Certificate;
  intermediates: Certificate[];
} {
  if (material.certificate !== undefined)
    return { leaf: certificateDer(material.certificate, 'certificate'), intermediates: [] };
  const chain = (material.x509CertificateChain as { certificates?: unknown } | undefined)?.certificates;
  if (chain === undefined)
    throw certInvalid('has no verificationMaterial.certificate (a key-based bundle, not a keyless signature)');
  if (!Array.isArray(chain) || chain.length === 0) throw certInvalid('x509CertificateChain holds no certificates');
  if (chain.length > MAX_CHAIN_CERTIFICATES)
    throw certInvalid(`x509CertificateChain holds ${chain.length} certificates, more than ${MAX_CHAIN_CERTIFICATES}`);
  const certs = chain.map((c, i) => certificateDer(c, `x509CertificateChain certificate #${i + 1}`));
  // Every later certificate may link the path (a root among them too): only the policy's CAs are anchors.
  return { leaf: certs[0]!, intermediates: certs.slice(1) };
}

/** Identify the signer of `bundle` under `trust` (the module comment's three cases). */
export function identifyBundleSigner(bundle: ParsedBundle, trust: SignerTrust): Signer {
  const signature = bundle.signatures.length === 1 ? bundle.signatures[0] : undefined;
  if (trust.fulcio) {
    const certificates = bundleCertificates(bundle.material);
    // A log entry names exactly one signature: a keyless envelope has exactly one.
    if (!signature)
      throw new TrustError('SIGNATURE_INVALID', 'sigstore bundle envelope does not hold exactly one signature');
    const signer = verifyKeylessSigner(certificates, trust.fulcio, (leaf) =>
      verifyBundleTlog(bundle.material.tlogEntries, trust.rekorKeys ?? [], {
        signerDer: leaf.der,
        signature,
        payload: bundle.payload,
      }),
    );
    if (!verifyBytes(signer.publicKey, bundle.signed, signature))
      throw new TrustError(
        'SIGNATURE_INVALID',
        "sigstore bundle does not verify with the signing certificate's key (statement or signature altered)",
      );
    return { keyIndex: -1, entry: signer.entry, certificate: signer.certificate };
  }
  const noKey = (): TrustError =>
    new TrustError(
      'SIGNATURE_INVALID',
      'sigstore bundle does not verify with a trusted key (altered, signed by another key, or not a cosign statement)',
    );
  if (trust.rekorKeys) {
    const entries = bundle.material.tlogEntries;
    if (!Array.isArray(entries) || entries.length === 0)
      throw new TrustError(
        'TLOG_MISSING',
        'the policy requires a Rekor entry and the sigstore bundle has no transparency-log entry (a key-based offline bundle)',
      );
    const keyIndex = bundleKeyIndex(bundle, trust.keys);
    if (keyIndex < 0 || !signature) throw noKey();
    const entry = verifyBundleTlog(entries, trust.rekorKeys, {
      signerDer: trust.keys[keyIndex]!.export({ format: 'der', type: 'spki' }),
      signature,
      payload: bundle.payload,
    });
    return { keyIndex, entry };
  }
  const keyIndex = bundleKeyIndex(bundle, trust.keys);
  if (keyIndex < 0) throw noKey();
  return { keyIndex };
}
