/**
 * Rekor signed entry timestamps (SET), verified offline as containers/image does: the cosign
 * annotation `dev.sigstore.cosign/bundle` holds
 * `{"SignedEntryTimestamp": b64, "Payload": {"body": b64, "integratedTime": n, "logIndex": n, "logID": hex}}`;
 * the SET is an ECDSA signature (ASN.1 DER) by the log's key over the sha256 of the canonical
 * JSON (RFC 8785) of Payload. body is a `hashedrekord` v0.0.1 entry:
 * `{"apiVersion":"0.0.1","kind":"hashedrekord","spec":{"data":{"hash":{"algorithm":"sha256","value":hex}},
 * "signature":{"content":b64,"publicKey":{"content":b64 of PEM}}}}`; it must name this signature,
 * the sha256 of this payload, and this certificate (keyless) or public key (key + Rekor).
 */
import { createHash, verify as verifySignature, type KeyObject } from 'node:crypto';
import { json } from '@sigstore/core';
import { TrustError } from './errors.ts';
import { pemDecodeStrict } from './pem.ts';
import { quoteUntrusted } from './x509.ts';
import { isObject } from '../util/json.ts';

export const REKOR_SET_ANNOTATION = 'dev.sigstore.cosign/bundle';
/** Largest SET annotation read (a real one is about 2-5 KiB: the body holds the certificate). */
export const MAX_SET_BYTES = 64 * 1024;
export const HASHEDREKORD_VERSION = '0.0.1';

export interface RekorEntry {
  /** When the log integrated the entry: the time keyless certificates are checked at. */
  integratedTime: Date;
  logIndex: number;
  logID: string;
}

export interface RekorExpectation {
  /** DER of the certificate (keyless) or SubjectPublicKeyInfo (key + Rekor) the entry must name. */
  signerDer: Buffer;
  /** The raw signature bytes. */
  signature: Buffer;
  /** The signed payload bytes. */
  payload: Buffer;
}

export function invalid(why: string): TrustError {
  return new TrustError('TLOG_INVALID', `Rekor SET: ${why}`);
}

function exactFields(v: unknown, fields: string[], where: string): Record<string, unknown> {
  if (!isObject(v)) throw invalid(`${where} is not an object`);
  const keys = Object.keys(v);
  const missing = fields.filter((f) => !(f in v));
  const extra = keys.filter((k) => !fields.includes(k));
  if (missing.length > 0 || extra.length > 0)
    throw invalid(
      `${where} must have exactly the fields ${fields.join(', ')} (${[...missing.map((m) => `missing ${m}`), ...extra.map((x) => `unknown ${quoteUntrusted(x, 40)}`)].join(', ')})`,
    );
  return v;
}

/** The body's objects may carry more fields (containers/image reads it leniently too); these must be there. */
export function withFields(v: unknown, fields: string[], where: string): Record<string, unknown> {
  if (!isObject(v)) throw invalid(`${where} is not an object`);
  const missing = fields.filter((f) => v[f] === undefined);
  if (missing.length > 0) throw invalid(`${where} lacks ${missing.join(', ')}`);
  return v;
}

export function base64(v: unknown, where: string, max: number): Buffer {
  if (typeof v !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(v) || v.length % 4 !== 0)
    throw invalid(`${where} is not base64`);
  if ((v.length / 4) * 3 > max) throw invalid(`${where} is larger than ${max} bytes`);
  return Buffer.from(v, 'base64');
}

export function parseJson(text: string, where: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw invalid(`${where} is not JSON`);
  }
}

/** The log's id for a key: hex of sha256 over its SubjectPublicKeyInfo DER (what Rekor puts in logID). */
export function logIdOf(key: KeyObject): string {
  return createHash('sha256')
    .update(key.export({ format: 'der', type: 'spki' }))
    .digest('hex');
}

/**
 * Check a SET (`timestamp`, ECDSA DER) over the canonical JSON of `payload` under one of
 * `logKeys`, then the payload's fields: exactly body, integratedTime, logIndex, logID, the
 * logID being the verifying key's. Returns the entry and its decoded body (a JSON object).
 * Nothing in `payload` is believed before the signature.
 */
export function verifySignedEntry(
  timestamp: Buffer,
  payload: Record<string, unknown>,
  logKeys: KeyObject[],
): { entry: RekorEntry; body: Record<string, unknown> } {
  const canonical = Buffer.from(json.canonicalize(payload), 'utf8');
  const key = logKeys.find((k) => {
    try {
      return verifySignature('sha256', canonical, k, timestamp);
    } catch {
      return false;
    }
  });
  if (!key)
    throw invalid(
      `SignedEntryTimestamp does not verify with ${logKeys.length === 1 ? 'the Rekor key' : `any of the ${logKeys.length} Rekor keys`} (altered, or signed by another log)`,
    );
  const { integratedTime, logIndex, logID } = exactFields(
    payload,
    ['body', 'integratedTime', 'logIndex', 'logID'],
    'Payload',
  );
  if (typeof integratedTime !== 'number' || !Number.isSafeInteger(integratedTime) || integratedTime < 0)
    throw invalid('Payload.integratedTime is not a time in seconds');
  if (typeof logIndex !== 'number' || !Number.isSafeInteger(logIndex) || logIndex < 0)
    throw invalid('Payload.logIndex is not an index');
  if (typeof logID !== 'string' || !/^[0-9a-f]{1,128}$/.test(logID)) throw invalid('Payload.logID is not hex');
  if (logID !== logIdOf(key))
    throw invalid(`Payload.logID ${quoteUntrusted(logID, 80)} is not the id of the Rekor key that signed it`);
  const body = withFields(
    parseJson(base64(payload.body, 'Payload.body', MAX_SET_BYTES).toString('utf8'), 'Payload.body'),
    ['apiVersion', 'kind', 'spec'],
    'the entry',
  );
  return { entry: { integratedTime: new Date(integratedTime * 1000), logIndex, logID }, body };
}

/** An entry's signer (base64 of one PEM block: a certificate or public key) must be `signerDer`. */
export function checkEntrySigner(b64: unknown, where: string, signerDer: Buffer): void {
  const signer = pemDecodeStrict(base64(b64, where, MAX_SET_BYTES).toString('utf8'));
  if (signer?.length !== 1) throw invalid(`${where} is not one PEM block`);
  if (!signer[0]!.der.equals(signerDer))
    throw invalid('the entry names another certificate or public key than the signature (an entry of another signer)');
}

/** An entry's `{algorithm, value}` hash must be the sha256 of `payload`. */
export function checkEntryHash(hash: unknown, where: string, payload: Buffer): void {
  const h = withFields(hash, ['algorithm', 'value'], where);
  if (str(h.algorithm, `${where}.algorithm`) !== 'sha256')
    throw invalid(`the entry's hash algorithm ${quoteUntrusted(h.algorithm, 40)} is not sha256`);
  const payloadHex = createHash('sha256').update(payload).digest('hex');
  if (str(h.value, `${where}.value`).toLowerCase() !== payloadHex)
    throw invalid(`the entry names payload ${quoteUntrusted(h.value, 80)}, not sha256:${payloadHex}`);
}

export function str(v: unknown, where: string): string {
  if (typeof v !== 'string') throw invalid(`${where} is not a string`);
  return v;
}

/**
 * Verify the SET annotation `setText` under `logKeys` and that its entry is the signature
 * described by `expect`. Throws TLOG_MISSING (no annotation) or TLOG_INVALID (one line: what
 * failed).
 */
export function verifyRekorSet(
  setText: string | undefined,
  logKeys: KeyObject[],
  expect: RekorExpectation,
): RekorEntry {
  if (setText === undefined)
    throw new TrustError(
      'TLOG_MISSING',
      `the policy requires a Rekor entry and the signature has no ${REKOR_SET_ANNOTATION}`,
    );
  if (setText.length > MAX_SET_BYTES) throw invalid(`the annotation is larger than ${MAX_SET_BYTES} bytes`);
  const set = exactFields(parseJson(setText, 'the annotation'), ['SignedEntryTimestamp', 'Payload'], 'the annotation');
  if (!isObject(set.Payload)) throw invalid('Payload is not an object');
  const { entry, body } = verifySignedEntry(
    base64(set.SignedEntryTimestamp, 'SignedEntryTimestamp', 1024),
    set.Payload,
    logKeys,
  );
  if (body.kind !== 'hashedrekord')
    throw invalid(`the entry is a ${quoteUntrusted(body.kind, 40)}, not a hashedrekord`);
  if (body.apiVersion !== HASHEDREKORD_VERSION)
    throw invalid(`hashedrekord version ${quoteUntrusted(body.apiVersion, 40)} is not ${HASHEDREKORD_VERSION}`);
  const spec = withFields(body.spec, ['data', 'signature'], 'spec');
  const data = withFields(spec.data, ['hash'], 'spec.data');
  const sig = withFields(spec.signature, ['content', 'publicKey'], 'spec.signature');
  const publicKey = withFields(sig.publicKey, ['content'], 'spec.signature.publicKey');

  checkEntrySigner(publicKey.content, 'spec.signature.publicKey.content', expect.signerDer);
  if (!base64(sig.content, 'spec.signature.content', 4096).equals(expect.signature))
    throw invalid('the entry names another signature (an entry of another signature)');
  checkEntryHash(data.hash, 'spec.data.hash', expect.payload);
  return entry;
}
