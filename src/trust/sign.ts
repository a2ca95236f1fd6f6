/** Sign an image: a simple-signing payload, signed, appended to the image's `.sig` manifest. */
import type { KeyObject } from 'node:crypto';
import type { Target } from '../content/interfaces.ts';
import { sha256 } from '../oci/digest.ts';
import type { Descriptor } from '../oci/types.ts';
import { attachBundle, makeBundle } from './bundle.ts';
import { publicOf, signBytes, verifyBytes } from './keys.ts';
import { json } from '@sigstore/core';
import { TiuError } from '../errors.ts';
import { EXPIRES_CLAIM } from './expiry.ts';
import { makePayload, parsePayload } from './payload.ts';
import { appendSignature, type AppendResult } from './signatures.ts';

export interface SignOptions {
  /** The docker-reference to claim in the payload (`host/repo[:tag]`). */
  dockerReference: string;
  /** Extra claims, in the payload's `optional` section. */
  annotations?: Record<string, string>;
  /** Also attach a sigstore bundle (v0.3) as an OCI referrer. */
  bundle?: boolean;
  /** The signature's expiry, RFC 3339 UTC (./expiry.ts): `org.opensuse.tiu.expires` in `optional`. */
  expires?: string;
}

export interface SignResult extends AppendResult {
  payloadDigest: string;
  /** The referrer manifest holding the sigstore bundle, when one was written. */
  bundle?: Descriptor;
}

/** Claims as comparable text: the same keys and values in any order are the same claims (RFC 8785). */
function claimsText(optional: Record<string, unknown> | null): string {
  return optional ? json.canonicalize(optional) : 'null';
}

/** The payload's optional section: the annotations, and the expiry where one is given. */
function optionalClaims(opts: SignOptions): Record<string, string> | null {
  const claims: Record<string, string> = { ...opts.annotations };
  if (EXPIRES_CLAIM in claims)
    throw new TiuError('USAGE', `${EXPIRES_CLAIM} is written by --expires, not given as an annotation`);
  if (opts.expires !== undefined) claims[EXPIRES_CLAIM] = opts.expires;
  return Object.keys(claims).length > 0 ? claims : null;
}

/**
 * Sign `root` in `target` with `key`. An existing signature by the same key over the same claims
 * counts as a duplicate (ECDSA signatures differ each time), and nothing is written then. The
 * expiry is one of the claims: re-signing with a new expiry adds a signature (that is how CI
 * keeps an unchanged image fresh), the older ones stay and the device takes the latest expiry.
 */
export async function signImage(
  target: Target,
  root: Descriptor,
  key: KeyObject,
  opts: SignOptions,
): Promise<SignResult> {
  const optional = optionalClaims(opts);
  const payload = makePayload({ dockerReference: opts.dockerReference, manifestDigest: root.digest, optional });
  const signature = signBytes(key, payload).toString('base64');
  const pub = publicOf(key);
  const result = await appendSignature(target, root.digest, payload, signature, (existing) => {
    if (!existing.payload) return false;
    if (!existing.payload.equals(payload)) {
      // Same claims written differently still count as the same signature.
      try {
        const p = parsePayload(existing.payload);
        if (
          p.manifestDigest !== root.digest ||
          p.dockerReference !== opts.dockerReference ||
          claimsText(p.optional) !== claimsText(optional)
        )
          return false;
      } catch {
        return false;
      }
    }
    return verifyBytes(pub, existing.payload, Buffer.from(existing.signature, 'base64'));
  });
  const out: SignResult = { ...result, payloadDigest: sha256(payload) };
  if (opts.bundle) out.bundle = await attachBundle(target, root, makeBundle(key, opts.dockerReference, root.digest));
  return out;
}
