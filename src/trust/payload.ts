/**
 * The simple-signing payload cosign signs (containers-signature(5) JSON, cosign flavour):
 *   {"critical":{"identity":{"docker-reference":REF},"image":{"docker-manifest-digest":DIGEST},
 *    "type":"cosign container image signature"},"optional":null|{...}}
 * Written compactly with keys in this order, as cosign's Go encoder does.
 */
import { isDigest } from '../oci/digest.ts';
import type { Digest } from '../oci/types.ts';
import { TrustError } from './errors.ts';
import { isObject } from '../util/json.ts';

export const COSIGN_SIGNATURE_TYPE = 'cosign container image signature';
/** Payloads are small; anything bigger is not one. */
export const MAX_PAYLOAD_BYTES = 64 * 1024;

export interface SimpleSigningPayload {
  dockerReference: string;
  manifestDigest: Digest;
  optional: Record<string, unknown> | null;
}

export function makePayload(p: SimpleSigningPayload): Buffer {
  return Buffer.from(
    JSON.stringify({
      critical: {
        identity: { 'docker-reference': p.dockerReference },
        image: { 'docker-manifest-digest': p.manifestDigest },
        type: COSIGN_SIGNATURE_TYPE,
      },
      optional: p.optional,
    }),
  );
}

function invalid(why: string): TrustError {
  return new TrustError('SIGNATURE_PAYLOAD_INVALID', `signed payload is not a cosign simple-signing payload: ${why}`);
}

/** Field names are matched case-insensitively, as Go's encoding/json does when cosign reads them. */
function field(obj: Record<string, unknown>, name: string): unknown {
  if (name in obj) return obj[name];
  const k = Object.keys(obj).find((key) => key.toLowerCase() === name.toLowerCase());
  return k === undefined ? undefined : obj[k];
}

/** Parse a payload whose signature was already verified. */
export function parsePayload(bytes: Uint8Array): SimpleSigningPayload {
  if (bytes.length > MAX_PAYLOAD_BYTES) throw invalid(`${bytes.length} bytes is too large`);
  let doc: unknown;
  try {
    doc = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    throw invalid('not JSON');
  }
  if (!isObject(doc)) throw invalid('not an object');
  const critical = field(doc, 'critical');
  if (!isObject(critical)) throw invalid('no "critical" object');
  const type = field(critical, 'type');
  if (type !== COSIGN_SIGNATURE_TYPE) throw invalid(`critical.type is ${JSON.stringify(type)}`);
  const identity = field(critical, 'identity');
  const image = field(critical, 'image');
  if (!isObject(identity) || !isObject(image)) throw invalid('critical.identity or critical.image missing');
  const ref = field(identity, 'docker-reference');
  const digest = field(image, 'docker-manifest-digest');
  if (typeof ref !== 'string') throw invalid('critical.identity.docker-reference is not a string');
  if (typeof digest !== 'string' || !isDigest(digest))
    throw invalid('critical.image.docker-manifest-digest is not a digest');
  const optional = field(doc, 'optional');
  if (optional !== undefined && optional !== null && !isObject(optional)) throw invalid('"optional" is not an object');
  return { dockerReference: ref, manifestDigest: digest, optional: optional ?? null };
}
