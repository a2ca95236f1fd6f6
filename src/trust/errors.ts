/**
 * Typed errors of the trust module; what each code means and what to do: src/error-codes.ts
 * (docs/errors.md). SIGNATURE_INVALID covers a signature by another key too: altered payload and
 * wrong key are indistinguishable cryptographically, so there is no separate KEY_MISMATCH.
 *
 * No message or detail ever carries key material or a passphrase.
 */
import { TiuError } from '../errors.ts';

export type TrustErrorCode =
  | 'PASSPHRASE_WRONG'
  | 'PASSPHRASE_REQUIRED'
  | 'KEY_INVALID'
  | 'KEY_UNSUPPORTED'
  | 'KEY_EXISTS'
  | 'KEY_WRITE_FAILED'
  | 'SIGNATURE_MISSING'
  | 'SIGNATURE_INVALID'
  | 'SIGNATURE_DIGEST_MISMATCH'
  | 'IDENTITY_MISMATCH'
  | 'CERT_INVALID'
  | 'CERT_UNTRUSTED'
  | 'CERT_VALIDITY_MISMATCH'
  | 'OIDC_ISSUER_MISMATCH'
  | 'CERT_SUBJECT_MISMATCH'
  | 'TLOG_MISSING'
  | 'TLOG_INVALID'
  | 'TLOG_UNSUPPORTED'
  | 'SIGNATURE_PAYLOAD_INVALID'
  | 'POLICY_REJECTED'
  | 'POLICY_INVALID'
  | 'POLICY_NOT_FOUND'
  | 'POLICY_UNSUPPORTED'
  | 'IDENTITY_REQUIRED'
  // freshness (src/trust/freshness.ts)
  | 'SIGNATURE_EXPIRED';

export class TrustError extends TiuError {
  declare readonly code: TrustErrorCode;
  constructor(code: TrustErrorCode, message: string, details: Record<string, unknown> = {}, options?: ErrorOptions) {
    super(code, message, details, options);
  }
}

/**
 * How far a signature got through verification: higher is closer to valid. Picks the error to
 * report. The order is the order of the checks (src/trust/verify.ts): certificate, chain, Rekor
 * SET, validity at the logged time, OIDC issuer, SAN, then the signature and its payload.
 */
export const FAILURE_RANK: Partial<Record<TrustErrorCode, number>> = {
  CERT_INVALID: 1,
  CERT_UNTRUSTED: 2,
  TLOG_MISSING: 3,
  TLOG_UNSUPPORTED: 3,
  TLOG_INVALID: 4,
  CERT_VALIDITY_MISMATCH: 5,
  OIDC_ISSUER_MISMATCH: 6,
  CERT_SUBJECT_MISMATCH: 7,
  SIGNATURE_INVALID: 8,
  SIGNATURE_PAYLOAD_INVALID: 9,
  SIGNATURE_DIGEST_MISMATCH: 10,
  IDENTITY_MISMATCH: 11,
};
