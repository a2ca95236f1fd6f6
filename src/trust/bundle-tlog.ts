/**
 * The transparency-log entries of a sigstore bundle (`verificationMaterial.tlogEntries`, protobuf
 * JSON: int64 as decimal strings, bytes as base64), verified offline the way the simple-signing
 * path verifies a SET (src/trust/rekor.ts):
 * `{"logIndex": "n", "logId": {"keyId": b64 sha256 of the log key's SPKI}, "kindVersion": {"kind": "dsse",
 * "version": "0.0.1"}, "integratedTime": "s", "inclusionPromise": {"signedEntryTimestamp": b64},
 * "inclusionProof": {…, "checkpoint": {…}}, "canonicalizedBody": b64}`.
 * The inclusion promise (SET) signs the canonical JSON of {body, integratedTime, logID (hex), logIndex},
 * the same payload as cosign's `dev.sigstore.cosign/bundle` annotation, so both paths share it.
 *
 * The inclusion proof and its checkpoint are not verified: the checkpoint is signed by the same
 * log key as the SET, so offline, without a witnessed tree head to compare with, it proves no more
 * than the SET already promises (containers/image relies on the SET alone too).
 *
 * Rekor v2 entries (dsse 0.0.2) have no SET and no integrated time; their time comes from an RFC
 * 3161 timestamp authority, which containers-policy.json cannot name: TLOG_UNSUPPORTED.
 */
import type { KeyObject } from 'node:crypto';
import { isObject } from '../util/json.ts';
import { TrustError } from './errors.ts';
import { checkDsseEntry } from './rekor-dsse.ts';
import { base64, invalid, MAX_SET_BYTES, verifySignedEntry, type RekorEntry, type RekorExpectation } from './rekor.ts';

/** Most log entries read from one bundle (cosign writes one). */
export const MAX_TLOG_ENTRIES = 8;

/** A protobuf-JSON int64 (a decimal string, or a number) that is a safe non-negative integer. */
function int64(v: unknown, where: string): number {
  const n = typeof v === 'string' && /^(0|[1-9][0-9]{0,15})$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0)
    throw invalid(`${where} is not a non-negative integer`);
  return n;
}

function promiseOf(entry: unknown): unknown {
  return isObject(entry) && isObject(entry.inclusionPromise) ? entry.inclusionPromise.signedEntryTimestamp : undefined;
}

function isRekorV2(entry: unknown): boolean {
  return isObject(entry) && isObject(entry.kindVersion) && entry.kindVersion.version === '0.0.2';
}

/** Verify one entry's SET under `logKeys` and that its body is a dsse entry of this envelope. */
function verifyEntry(entry: Record<string, unknown>, logKeys: KeyObject[], expect: RekorExpectation): RekorEntry {
  if (!isObject(entry.logId)) throw invalid('logId is not an object');
  const keyId = base64(entry.logId.keyId, 'logId.keyId', 64);
  const body = base64(entry.canonicalizedBody, 'canonicalizedBody', MAX_SET_BYTES);
  const signed = verifySignedEntry(
    base64(promiseOf(entry), 'inclusionPromise.signedEntryTimestamp', 1024),
    {
      body: body.toString('base64'),
      integratedTime: int64(entry.integratedTime, 'integratedTime'),
      logID: keyId.toString('hex'),
      logIndex: int64(entry.logIndex, 'logIndex'),
    },
    logKeys,
  );
  checkDsseEntry(signed.body, expect);
  return signed.entry;
}

/**
 * The first of `entries` (a bundle's tlogEntries) whose SET verifies under `logKeys` and whose
 * body names the envelope `expect` describes. Throws TLOG_MISSING (no entry with a SET),
 * TLOG_UNSUPPORTED (only Rekor v2 entries) or TLOG_INVALID (the first entry's failure).
 */
export function verifyBundleTlog(entries: unknown, logKeys: KeyObject[], expect: RekorExpectation): RekorEntry {
  if (entries !== undefined && !Array.isArray(entries)) throw invalid('verificationMaterial.tlogEntries is not a list');
  const all = (entries ?? []) as unknown[];
  if (all.length > MAX_TLOG_ENTRIES)
    throw invalid(`the bundle has ${all.length} log entries, more than ${MAX_TLOG_ENTRIES}`);
  const promised = all.filter((e) => promiseOf(e) !== undefined);
  if (promised.length === 0) {
    if (all.some(isRekorV2))
      throw new TrustError(
        'TLOG_UNSUPPORTED',
        'the sigstore bundle has only a Rekor v2 entry: it carries no signed entry timestamp and its time comes from an RFC 3161 timestamp authority, which containers-policy.json cannot name (sign with Rekor v1)',
      );
    throw new TrustError(
      'TLOG_MISSING',
      `the policy requires a Rekor entry and the sigstore bundle has ${all.length === 0 ? 'no transparency-log entry' : 'no entry with a signed entry timestamp (inclusionPromise)'}`,
    );
  }
  let first: unknown;
  for (const e of promised) {
    try {
      if (!isObject(e)) throw invalid('a log entry is not an object');
      return verifyEntry(e, logKeys, expect);
    } catch (err) {
      first ??= err;
    }
  }
  throw first as Error;
}
