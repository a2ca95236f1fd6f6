/**
 * Typed errors of the trust module. Codes are what tests and callers check:
 *
 *   PASSPHRASE_WRONG            the passphrase does not open the encrypted private key
 *   PASSPHRASE_REQUIRED       no COSIGN_PASSWORD/TIU_PASSWORD and no terminal to ask on
 *   KEY_INVALID               a key file is not a key tiu can read (wrong PEM label, bad JSON, bad DER)
 *   KEY_UNSUPPORTED           a readable key of a kind tiu does not sign/verify with
 *   KEY_EXISTS                `key generate` would overwrite a key file
 *   SIGNATURE_MISSING              the image has no signature at all
 *   SIGNATURE_INVALID         no signature verifies with any trusted key: the payload was altered,
 *                             or it was signed by another key (the two are indistinguishable
 *                             cryptographically, so there is no separate KEY_MISMATCH)
 *   SIGNATURE_DIGEST_MISMATCH a valid signature that names another manifest digest (replay)
 *   IDENTITY_MISMATCH         a valid signature for this digest whose docker-reference the
 *                             identity rule (signedIdentity) does not accept
 *   SIGNATURE_PAYLOAD_INVALID a validly signed payload that is not a cosign simple-signing payload
 *   POLICY_REJECTED           the policy's requirement for this image is `reject`
 *   POLICY_INVALID            policy.json is malformed
 *   POLICY_NOT_FOUND          no policy file where one was looked for
 *   POLICY_UNSUPPORTED        a requirement tiu can't check (signedBy GPG, fulcio, rekor): refused
 *   IDENTITY_REQUIRED         signing an image that has no docker name (an OCI layout) without --identity
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
  | 'IDENTITY_REQUIRED';

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
