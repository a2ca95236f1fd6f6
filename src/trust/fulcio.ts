/**
 * Keyless (Fulcio) signers, verified offline as containers/image does for sigstoreSigned with
 * `fulcio`: the signature layer carries the signer's certificate
 * (`dev.sigstore.cosign/certificate`, one PEM), the chain up to the root
 * (`dev.sigstore.cosign/chain`, PEM, intermediates first; the last one, the root, is not
 * trusted from there) and the Rekor SET (src/trust/rekor.ts); a sigstore bundle carries the
 * certificate and its log entry in verificationMaterial (src/trust/bundle-signer.ts, bundle-tlog.ts).
 *
 * Order, cheapest refusal first and nothing believed before its check: certificate and chain
 * parse (CERT_INVALID); the leaf chains to one of the policy's CA certificates through the
 * chain's intermediates, every link a CA, code signing allowed (CERT_UNTRUSTED); the SET
 * verifies under a Rekor key and names this signature, payload and certificate (TLOG_*); the
 * SET's integrated time lies within the validity of the leaf and of every certificate of the
 * path (CERT_VALIDITY_MISMATCH: keyless certificates live minutes, so they are checked at the
 * logged time, never at the device's clock); the OIDC issuer extension (OIDC_ISSUER_MISMATCH);
 * the SAN email or URI (CERT_SUBJECT_MISMATCH). The caller then checks the signature with the
 * returned key.
 */
import type { KeyObject } from 'node:crypto';
import { ASN1Obj } from '@sigstore/core';
import { TrustError } from './errors.ts';
import type { RekorEntry } from './rekor.ts';
import {
  allowsCodeSigning,
  describeCertificate,
  extensionValues,
  issuedBy,
  quoteUntrusted,
  parseCertificatesPem,
  subjectAltNames,
  unhandledCriticalExtension,
  validAt,
  type Certificate,
} from './x509.ts';

export const CERTIFICATE_ANNOTATION = 'dev.sigstore.cosign/certificate';
export const CHAIN_ANNOTATION = 'dev.sigstore.cosign/chain';
/** Fulcio's OIDC issuer extensions: v1 holds the raw string, v2 a DER UTF8String. */
export const OID_OIDC_ISSUER_V1 = '1.3.6.1.4.1.57264.1.1';
export const OID_OIDC_ISSUER_V2 = '1.3.6.1.4.1.57264.1.8';
/** Most certificates a chain annotation may hold (Fulcio's has 2). */
export const MAX_CHAIN_CERTIFICATES = 10;
export const MAX_CERTIFICATE_BYTES = 16 * 1024;
export const MAX_CHAIN_BYTES = 64 * 1024;

/** What a policy's `fulcio` trusts. */
export interface FulcioTrust {
  /** The CA certificates (caPath/caData): trust anchors. */
  cas: Certificate[];
  oidcIssuer: string;
  /** subjectEmail (containers-policy.json) or subjectURI (tiu only: CI workload identities). */
  subject: { email: string } | { uri: string };
}

export interface KeylessSigner {
  /** The leaf's public key: the signature over the payload must verify with it. */
  publicKey: KeyObject;
  entry: RekorEntry;
  /** The OIDC issuer and the SAN the policy matched. */
  certificate: { issuer: string; subject: string };
}

/** The signer's certificate and the chain's intermediates (the chain's last certificate, its root, dropped). */
export function parseSignerCertificates(
  certificatePem: string | undefined,
  chainPem: string | undefined,
): { leaf: Certificate; intermediates: Certificate[] } {
  if (certificatePem === undefined)
    throw new TrustError('CERT_INVALID', `the signature has no ${CERTIFICATE_ANNOTATION} (not a keyless signature)`);
  const leaves = parseCertificatesPem(certificatePem, 'the signing certificate', 1, MAX_CERTIFICATE_BYTES);
  const chain =
    chainPem === undefined
      ? []
      : parseCertificatesPem(chainPem, 'the certificate chain', MAX_CHAIN_CERTIFICATES, MAX_CHAIN_BYTES);
  return { leaf: leaves[0]!, intermediates: chain.slice(0, -1) };
}

/**
 * The path from `leaf` to one of `cas` (leaf excluded, the anchor last), through `intermediates`.
 * Throws CERT_UNTRUSTED naming where it broke.
 */
export function chainToCa(leaf: Certificate, intermediates: Certificate[], cas: Certificate[]): Certificate[] {
  const critical = unhandledCriticalExtension(leaf);
  if (critical)
    throw new TrustError('CERT_UNTRUSTED', `the signing certificate has an unknown critical extension ${critical}`);
  if (!allowsCodeSigning(leaf, true))
    throw new TrustError('CERT_UNTRUSTED', 'the signing certificate does not allow code signing (extended key usage)');
  const path: Certificate[] = [];
  let current = leaf;
  // A CA below which `path.length` intermediates already lie: basic constraints, key usage, path length.
  const isCa = (c: Certificate): boolean => {
    const pathLen = c.asn1.extBasicConstraints?.pathLenConstraint;
    return (
      c.node.ca &&
      c.asn1.extKeyUsage?.keyCertSign !== false &&
      unhandledCriticalExtension(c) === undefined &&
      (pathLen === undefined || BigInt(path.length) <= pathLen)
    );
  };
  for (let depth = 0; depth <= MAX_CHAIN_CERTIFICATES; depth++) {
    const anchor = cas.find((ca) => issuedBy(current, ca));
    if (anchor) {
      if (!isCa(anchor))
        throw new TrustError(
          'CERT_UNTRUSTED',
          `the policy's CA ${describeCertificate(anchor)} is not a CA certificate`,
        );
      return [...path, anchor];
    }
    const next = intermediates.find((c) => !path.includes(c) && issuedBy(current, c));
    if (!next)
      throw new TrustError(
        'CERT_UNTRUSTED',
        `${current === leaf ? 'the signing certificate' : `intermediate ${describeCertificate(current)}`} is not issued by the policy's Fulcio CA${intermediates.length > 0 ? ' or the chain' : ''} (a certificate of another CA)`,
      );
    if (!isCa(next) || !allowsCodeSigning(next, false))
      throw new TrustError(
        'CERT_UNTRUSTED',
        `intermediate ${describeCertificate(next)} is not a CA for code signing (basic constraints, path length, key usage or extended key usage)`,
      );
    path.push(next);
    current = next;
  }
  throw new TrustError('CERT_UNTRUSTED', `the chain is longer than ${MAX_CHAIN_CERTIFICATES} certificates`);
}

/** Every certificate of leaf + path must have been valid when the log integrated the entry. */
export function checkValidityAt(leaf: Certificate, path: Certificate[], at: Date): void {
  for (const c of [leaf, ...path]) {
    if (!validAt(c, at))
      throw new TrustError(
        'CERT_VALIDITY_MISMATCH',
        `the Rekor entry was integrated at ${at.toISOString()}, outside the validity of ${c === leaf ? 'the signing certificate' : `CA certificate ${describeCertificate(c)}`} (${c.node.validFromDate.toISOString()} .. ${c.node.validToDate.toISOString()})`,
      );
  }
}

/** The certificate's OIDC issuer: v1 and v2 extensions, each at most once, equal when both are there. */
export function oidcIssuerOf(leaf: Certificate): string {
  const v1 = extensionValues(leaf, OID_OIDC_ISSUER_V1);
  const v2 = extensionValues(leaf, OID_OIDC_ISSUER_V2);
  const mismatch = (why: string): TrustError =>
    new TrustError('OIDC_ISSUER_MISMATCH', `the signing certificate ${why}`);
  if (v1.length > 1 || v2.length > 1) throw mismatch('has a duplicate OIDC issuer extension');
  let issuer1: string | undefined;
  let issuer2: string | undefined;
  if (v1[0]) issuer1 = v1[0].toString('utf8');
  if (v2[0]) {
    let obj: ASN1Obj;
    try {
      obj = ASN1Obj.parseBuffer(Buffer.from(v2[0]));
    } catch {
      throw mismatch('has an OIDC issuer (v2) extension that is not DER');
    }
    if (obj.tag.number !== 0x0c || obj.tag.constructed || !obj.tag.isUniversal())
      throw mismatch('has an OIDC issuer (v2) extension that is not a UTF8String');
    issuer2 = obj.value.toString('utf8');
  }
  if (issuer1 !== undefined && issuer2 !== undefined && issuer1 !== issuer2)
    throw mismatch(
      `has inconsistent OIDC issuer extensions (v1 ${quoteUntrusted(issuer1)}, v2 ${quoteUntrusted(issuer2)})`,
    );
  const issuer = issuer2 ?? issuer1;
  if (issuer === undefined) throw mismatch('has no OIDC issuer extension');
  return issuer;
}

/** The SAN the policy asks for, or CERT_SUBJECT_MISMATCH listing what the certificate has. */
export function checkSubject(leaf: Certificate, subject: FulcioTrust['subject']): string {
  const names = subjectAltNames(leaf);
  const [kind, wanted, have] =
    'email' in subject
      ? (['email', subject.email, names.emails] as const)
      : (['URI', subject.uri, names.uris] as const);
  if (have.includes(wanted)) return wanted;
  throw new TrustError(
    'CERT_SUBJECT_MISMATCH',
    `the signing certificate is for ${kind} ${
      have.length > 0
        ? have
            .slice(0, 4)
            .map((n) => quoteUntrusted(n))
            .join(', ')
        : '(none)'
    }, not ${quoteUntrusted(wanted)}`,
  );
}

/**
 * Check a keyless signer in the order of the module comment; returns the key to check the
 * signature with. `logEntry` verifies the signature's log entry for the leaf (a SET annotation,
 * or a sigstore bundle's tlogEntries) and throws TLOG_* when it cannot.
 */
export function verifyKeylessSigner(
  certificates: { leaf: Certificate; intermediates: Certificate[] },
  trust: FulcioTrust,
  logEntry: (leaf: Certificate) => RekorEntry,
): KeylessSigner {
  const { leaf, intermediates } = certificates;
  const path = chainToCa(leaf, intermediates, trust.cas);
  const entry = logEntry(leaf);
  checkValidityAt(leaf, path, entry.integratedTime);
  const issuer = oidcIssuerOf(leaf);
  if (issuer !== trust.oidcIssuer)
    throw new TrustError(
      'OIDC_ISSUER_MISMATCH',
      `the signing certificate's OIDC issuer is ${quoteUntrusted(issuer)}, not ${quoteUntrusted(trust.oidcIssuer)}`,
    );
  const subject = checkSubject(leaf, trust.subject);
  return { publicKey: leaf.node.publicKey, entry, certificate: { issuer, subject } };
}
