/**
 * A parsed containers-policy.json(5) (src/trust/policy.ts parses and evaluates it; its
 * sigstoreSigned requirement is verified in ./policy-signed.ts, which both import from here).
 */
import type { SignedIdentity } from './identity.ts';

export type PolicyRequirement =
  | { type: 'insecureAcceptAnything' }
  | { type: 'reject' }
  | {
      type: 'sigstoreSigned';
      keyPaths: string[];
      /** Decoded keyData/keyDatas (PEM text). */
      keyDatas: string[];
      /** Keyless signers (instead of keys). */
      fulcio?: FulcioPolicy;
      /** rekorPublicKeyPath/Paths. */
      rekorKeyPaths: string[];
      /** Decoded rekorPublicKeyData/Datas (PEM text). */
      rekorKeyDatas: string[];
      signedIdentity: SignedIdentity;
      /** Set when the requirement asks for something tiu can't check (pki). */
      unsupported?: string;
    }
  | { type: 'signedBy'; unsupported: string };

/** A sigstoreSigned requirement's `fulcio` object. */
export interface FulcioPolicy {
  caPath?: string;
  /** Decoded caData (PEM text). */
  caData?: string;
  oidcIssuer: string;
  subjectEmail?: string;
  /** tiu only. */
  subjectURI?: string;
}

export interface Policy {
  default: PolicyRequirement[];
  transports: Record<string, Record<string, PolicyRequirement[]>>;
  /** Where it came from (a path, or a label), for messages. */
  source: string;
  /** Directory relative key paths are resolved against. */
  baseDir: string;
}

export type SigstoreRequirement = Extract<PolicyRequirement, { type: 'sigstoreSigned' }>;
