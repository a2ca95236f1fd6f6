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
  | 'SIGNATURE_MISSING'
  | 'SIGNATURE_INVALID'
  | 'SIGNATURE_DIGEST_MISMATCH'
  | 'IDENTITY_MISMATCH'
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

/** How far a signature got through verification: higher is closer to valid. Picks the error to report. */
export const FAILURE_RANK: Partial<Record<TrustErrorCode, number>> = {
  SIGNATURE_INVALID: 1,
  SIGNATURE_PAYLOAD_INVALID: 2,
  SIGNATURE_DIGEST_MISMATCH: 3,
  IDENTITY_MISMATCH: 4,
};
