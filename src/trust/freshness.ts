/**
 * Freshness (a freeze attack: a mirror that keeps serving last month's tag): where the device
 * requires it, at least one signature the policy accepted must carry an expiry
 * (`org.opensuse.tiu.expires`, ./expiry.ts) that lies in the future. Runs over the policy's
 * decision, after every signature in it was verified: an expiry is believed only from a payload
 * whose signature verified.
 */
import { TrustError } from './errors.ts';
import { EXPIRES_CLAIM, expiryOf, formatRfc3339 } from './expiry.ts';
import type { PolicyDecision } from './policy.ts';

export interface Freshness {
  /** The latest expiry among the accepted signatures. */
  expires: Date;
  payloadDigest: string;
}

/** The accepted signature that expires last; SIGNATURE_EXPIRED when none carries an expiry after `now`. */
export function checkFreshness(decision: PolicyDecision, image: string, now: Date): Freshness {
  const signatures = decision.accepted.flatMap((a) => a.signatures ?? []);
  let latest: Freshness | undefined;
  for (const s of signatures) {
    const expires = expiryOf(s.optional);
    if (expires && (!latest || expires > latest.expires)) latest = { expires, payloadDigest: s.payloadDigest };
  }
  if (latest && latest.expires > now) return latest;
  const details = { image, now: formatRfc3339(now), signatures: signatures.length };
  if (!latest)
    throw new TrustError(
      'SIGNATURE_EXPIRED',
      `${image}: tiu.conf requires an unexpired signature, and none of the ${signatures.length} signature(s) the policy accepted carries an expiry (${EXPIRES_CLAIM}; sign with tiu sign --expires)`,
      details,
    );
  throw new TrustError(
    'SIGNATURE_EXPIRED',
    `${image}: the signature expired at ${formatRfc3339(latest.expires)} (the latest expiry of the ${signatures.length} accepted signature(s); now ${formatRfc3339(now)})`,
    { ...details, expires: formatRfc3339(latest.expires), payloadDigest: latest.payloadDigest },
  );
}
