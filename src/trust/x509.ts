/**
 * X.509 certificates of keyless signatures, parsed from hostile PEM. Two views of each
 * certificate: node:crypto's (signatures, issuance, validity dates) and @sigstore/core's ASN.1
 * view (extensions, SAN general names), because node:crypto exposes neither arbitrary
 * extensions nor the SAN as anything but a display string, which hostile values can forge.
 */
import { X509Certificate as NodeCertificate } from 'node:crypto';
import { ASN1Obj, X509Certificate as Asn1Certificate } from '@sigstore/core';
import { TrustError } from './errors.ts';
import { pemDecodeStrict } from './pem.ts';

/** Extended key usage id-kp-codeSigning, and anyExtendedKeyUsage. */
export const OID_CODE_SIGNING = '1.3.6.1.5.5.7.3.3';
const OID_ANY_EKU = '2.5.29.37.0';
const OID_EKU = '2.5.29.37';
const OID_SAN = '2.5.29.17';
/** Critical extensions the chain check understands; any other critical one refuses the certificate (RFC 5280 4.2). */
const HANDLED_CRITICAL = new Set(['2.5.29.15', '2.5.29.19', OID_EKU, OID_SAN, '2.5.29.14', '2.5.29.35']);

export interface Certificate {
  der: Buffer;
  node: NodeCertificate;
  asn1: Asn1Certificate;
}

export interface CertificateExtension {
  oid: string;
  critical: boolean;
  /** The extnValue octets. */
  value: Buffer;
}

/** Parse one DER certificate; `what` names it in the CERT_INVALID message. */
export function parseCertificateDer(der: Buffer, what: string): Certificate {
  try {
    const node = new NodeCertificate(der);
    const asn1 = Asn1Certificate.parse(Buffer.from(der));
    // Touch what the checks read, so a malformed part fails here and not in the middle of a check.
    void asn1.extensions.map(extensionOf);
    void node.validFromDate.getTime();
    void node.validToDate.getTime();
    return { der, node, asn1 };
  } catch (e) {
    throw new TrustError('CERT_INVALID', `${what} is not a valid X.509 certificate (${(e as Error).message})`);
  }
}

/**
 * Every certificate of a PEM text that holds only CERTIFICATE blocks (and whitespace), at most
 * `max` of them and `maxBytes` long; anything else is CERT_INVALID.
 */
export function parseCertificatesPem(text: string, what: string, max: number, maxBytes: number): Certificate[] {
  if (text.length > maxBytes)
    throw new TrustError('CERT_INVALID', `${what} is ${text.length} bytes, more than ${maxBytes}`);
  const blocks = pemDecodeStrict(text);
  if (!blocks) throw new TrustError('CERT_INVALID', `${what} is not a sequence of PEM certificates`);
  if (blocks.length > max)
    throw new TrustError('CERT_INVALID', `${what} holds ${blocks.length} certificates, more than ${max}`);
  return blocks.map((b, i) => {
    if (b.label !== 'CERTIFICATE')
      throw new TrustError('CERT_INVALID', `${what} holds a ${b.label}, not a CERTIFICATE`);
    return parseCertificateDer(b.der, blocks.length > 1 ? `${what} #${i + 1}` : what);
  });
}

function extensionOf(obj: ASN1Obj): CertificateExtension {
  const first = obj.subs[0];
  const last = obj.subs[obj.subs.length - 1];
  if (!first || !last || obj.subs.length < 2 || obj.subs.length > 3) throw new Error('malformed extension');
  return {
    oid: first.toOID(),
    critical: obj.subs.length === 3 ? obj.subs[1]!.toBoolean() : false,
    value: last.value,
  };
}

export function extensions(cert: Certificate): CertificateExtension[] {
  return cert.asn1.extensions.map(extensionOf);
}

/** The extension values with this OID (a duplicate is the caller's refusal to make). */
export function extensionValues(cert: Certificate, oid: string): Buffer[] {
  return extensions(cert)
    .filter((e) => e.oid === oid)
    .map((e) => e.value);
}

/** A critical extension tiu does not check, or undefined. */
export function unhandledCriticalExtension(cert: Certificate): string | undefined {
  return extensions(cert).find((e) => e.critical && !HANDLED_CRITICAL.has(e.oid))?.oid;
}

/** The EKU OIDs, or undefined when the certificate has no EKU extension. */
export function extendedKeyUsages(cert: Certificate): string[] | undefined {
  const values = extensionValues(cert, OID_EKU);
  if (values.length === 0) return undefined;
  if (values.length > 1) throw new TrustError('CERT_INVALID', 'the certificate has two extended key usage extensions');
  return ASN1Obj.parseBuffer(Buffer.from(values[0]!)).subs.map((s) => s.toOID());
}

/** Whether the certificate may be used for code signing: an EKU naming it (or any usage). */
export function allowsCodeSigning(cert: Certificate, requireEku: boolean): boolean {
  const ekus = extendedKeyUsages(cert);
  if (ekus === undefined) return !requireEku;
  return ekus.includes(OID_CODE_SIGNING) || ekus.includes(OID_ANY_EKU);
}

export interface SubjectAltNames {
  emails: string[];
  uris: string[];
}

/**
 * The rfc822Name ([1]) and uniformResourceIdentifier ([6]) general names of the SAN, each as
 * its exact bytes; a name with bytes outside printable ASCII is left out (it can equal no
 * policy value, and must not reach a message).
 */
export function subjectAltNames(cert: Certificate): SubjectAltNames {
  const values = extensionValues(cert, OID_SAN);
  if (values.length > 1)
    throw new TrustError('CERT_INVALID', 'the certificate has two subject alternative name extensions');
  const out: SubjectAltNames = { emails: [], uris: [] };
  if (values.length === 0) return out;
  for (const name of ASN1Obj.parseBuffer(Buffer.from(values[0]!)).subs) {
    if (name.tag.constructed || !name.tag.isContextSpecific()) continue;
    const text = name.value.toString('latin1');
    if (!/^[\x21-\x7e]+$/.test(text)) continue;
    if (name.tag.number === 1) out.emails.push(text);
    else if (name.tag.number === 6) out.uris.push(text);
  }
  return out;
}

/** Whether `at` lies within the certificate's notBefore..notAfter (inclusive, as RFC 5280 says). */
export function validAt(cert: Certificate, at: Date): boolean {
  const t = at.getTime();
  return cert.node.validFromDate.getTime() <= t && t <= cert.node.validToDate.getTime();
}

/** Whether `issuer` issued `cert`: names and key identifiers match and the signature verifies with its key. */
export function issuedBy(cert: Certificate, issuer: Certificate): boolean {
  try {
    return cert.node.checkIssued(issuer.node) && cert.node.verify(issuer.node.publicKey);
  } catch {
    return false;
  }
}

/**
 * An untrusted value for a one-line message: quoted, shortened, and everything outside printable
 * ASCII escaped (no terminal controls, no bidi tricks, no line breaks).
 */
export function quoteUntrusted(v: unknown, max = 120): string {
  const s = typeof v === 'string' ? v : (JSON.stringify(v) ?? String(v));
  const short = s.length > max ? `${s.slice(0, max - 3)}...` : s;
  return `"${short.replace(/[^\x20-\x7e]|["\\]/g, (c) => (c === '"' || c === '\\' ? `\\${c}` : `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`))}"`;
}

/** A short, printable name of a certificate for messages: its subject. */
export function describeCertificate(cert: Certificate): string {
  return quoteUntrusted(cert.node.subject.replace(/\n/g, ', ') || '(empty subject)');
}
