/**
 * Rekor `dsse` v0.0.1 entries: what cosign 3 logs on a Rekor v1 log for a sigstore bundle's DSSE
 * envelope. The canonicalized body is
 * `{"apiVersion":"0.0.1","kind":"dsse","spec":{"envelopeHash":{"algorithm":"sha256","value":hex},
 * "payloadHash":{"algorithm":"sha256","value":hex},"signatures":[{"signature":b64,"verifier":b64 of PEM}]}}`.
 *
 * The entry must name this envelope: exactly one signature, the envelope's own, whose verifier is
 * this certificate (keyless) or public key (key + Rekor), and payloadHash = sha256 of the
 * envelope's payload. envelopeHash is the sha256 of the envelope JSON as it was sent to the log;
 * a bundle keeps the envelope's fields, not those bytes (protobuf JSON output is not byte-stable),
 * so it cannot be recomputed and only its form is checked. Nothing is lost by that: the signature
 * is over DSSE's PAE of payloadType and payload, so payload hash + signature pin the envelope.
 */
import { checkEntryHash, checkEntrySigner, invalid, withFields, base64, str, type RekorExpectation } from './rekor.ts';
import { quoteUntrusted } from './x509.ts';

export const DSSE_ENTRY_VERSION = '0.0.1';

/** Check a verified entry body (already checked to be signed by the log) against the envelope. */
export function checkDsseEntry(body: Record<string, unknown>, expect: RekorExpectation): void {
  if (body.kind !== 'dsse') throw invalid(`the entry is a ${quoteUntrusted(body.kind, 40)}, not a dsse entry`);
  if (body.apiVersion !== DSSE_ENTRY_VERSION)
    throw invalid(`dsse entry version ${quoteUntrusted(body.apiVersion, 40)} is not ${DSSE_ENTRY_VERSION}`);
  const spec = withFields(body.spec, ['envelopeHash', 'payloadHash', 'signatures'], 'spec');
  const envelopeHash = withFields(spec.envelopeHash, ['algorithm', 'value'], 'spec.envelopeHash');
  if (
    str(envelopeHash.algorithm, 'spec.envelopeHash.algorithm') !== 'sha256' ||
    !/^[0-9a-f]{64}$/.test(str(envelopeHash.value, 'spec.envelopeHash.value'))
  )
    throw invalid('spec.envelopeHash is not a sha256 hex digest');
  if (!Array.isArray(spec.signatures) || spec.signatures.length !== 1)
    throw invalid(
      `the entry has ${Array.isArray(spec.signatures) ? spec.signatures.length : 'no list of'} signatures, not 1`,
    );
  const sig = withFields(spec.signatures[0], ['signature', 'verifier'], 'spec.signatures[0]');
  checkEntrySigner(sig.verifier, 'spec.signatures[0].verifier', expect.signerDer);
  if (!base64(sig.signature, 'spec.signatures[0].signature', 4096).equals(expect.signature))
    throw invalid('the entry names another signature (an entry of another signature)');
  checkEntryHash(spec.payloadHash, 'spec.payloadHash', expect.payload);
}
