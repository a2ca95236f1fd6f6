/**
 * What `tiu sign` and `tiu verify` do once the reference is opened as a Target: pick the root
 * descriptor, the identity to claim or check, and call sign/verify/policy. Kept apart from the
 * CLI files so it is testable with any Target.
 */
import type { KeyObject } from 'node:crypto';
import type { Target } from '../content/interfaces.ts';
import {
  type DockerReference,
  type ImageReference,
  dockerName,
  formatReference,
  referenceName,
} from '../oci/reference.ts';
import type { Descriptor } from '../oci/types.ts';
import { TrustError } from './errors.ts';
import { parseDockerName, type SignedIdentity } from './identity.ts';
import { checkPolicy, type Policy, type PolicyDecision } from './policy.ts';
import { signImage, type SignResult } from './sign.ts';
import { verifyImageSignatures, type VerifiedSignature } from './verify.ts';

export interface Opened {
  target: Target;
  ref: ImageReference;
}

/** The manifest/index `ref` names in `target` (a layout without tag: its only image). */
export async function resolveRoot(o: Opened): Promise<Descriptor> {
  const name = referenceName(o.ref);
  if (name !== undefined) return o.target.resolve(name);
  const t = o.target as Target & { resolveDefault?: () => Promise<Descriptor> };
  if (typeof t.resolveDefault === 'function') return t.resolveDefault();
  throw new TrustError('IDENTITY_REQUIRED', `${formatReference(o.ref)}: name a tag or digest`);
}

/** Parse a `--identity host/repo[:tag]` value. */
export function parseIdentityOption(value: string | undefined): DockerReference | undefined {
  if (value === undefined) return undefined;
  const r = parseDockerName(value);
  if (!r)
    throw new TrustError(
      'IDENTITY_REQUIRED',
      `--identity ${JSON.stringify(value)} is not an image name (host/repository[:tag])`,
    );
  return r;
}

/**
 * The docker-reference a signature claims: the given identity, else the reference itself
 * (`host/repo:tag`; a digest reference claims the repository). A layout has no name of its own.
 */
export function claimedReference(ref: ImageReference, identity?: DockerReference): string {
  const r = identity ?? (ref.transport === 'docker' ? ref : undefined);
  if (!r)
    throw new TrustError(
      'IDENTITY_REQUIRED',
      `${formatReference(ref)} has no registry name: say which image it is with --identity host/repository:tag`,
    );
  if (r.tag !== undefined) return `${dockerName(r, false)}:${r.tag}`;
  return dockerName(r, false);
}

export interface SignOutcome extends SignResult {
  image: string;
  digest: string;
  dockerReference: string;
}

export async function signReference(
  o: Opened,
  key: KeyObject,
  opts: { identity?: DockerReference; annotations?: Record<string, string>; bundle?: boolean; expires?: string } = {},
): Promise<SignOutcome> {
  const dockerReference = claimedReference(o.ref, opts.identity);
  const root = await resolveRoot(o);
  const r = await signImage(o.target, root, key, {
    dockerReference,
    annotations: opts.annotations,
    bundle: opts.bundle,
    ...(opts.expires !== undefined ? { expires: opts.expires } : {}),
  });
  return { ...r, image: formatReference(o.ref), digest: root.digest, dockerReference };
}

export interface VerifyOutcome {
  image: string;
  digest: string;
  /** What was checked: the keys given, or the policy's scope. */
  mode: 'key' | 'policy';
  signatures: VerifiedSignature[];
  identityRule: SignedIdentity['type'] | 'policy';
  policy?: PolicyDecision;
}

/**
 * `tiu verify --key`: signatures by one of `keys`, for the image's digest, whose docker-reference
 * is in the image's repository (matchRepository, which also accepts cosign's repository-only
 * references). An image with no docker identity (a layout without --identity) has its digest
 * and signature checked, not its name.
 */
export async function verifyWithKeys(
  o: Opened,
  keys: KeyObject[],
  opts: { identity?: DockerReference; annotations?: Record<string, string> } = {},
): Promise<VerifyOutcome> {
  const root = await resolveRoot(o);
  const imageIdentity = opts.identity ?? (o.ref.transport === 'docker' ? o.ref : undefined);
  const identity: SignedIdentity = imageIdentity ? { type: 'matchRepository' } : { type: 'any' };
  const r = await verifyImageSignatures(o.target, root, {
    keys,
    identity,
    imageIdentity,
    annotations: opts.annotations,
  });
  return {
    image: formatReference(o.ref),
    digest: root.digest,
    mode: 'key',
    signatures: r.verified,
    identityRule: identity.type,
  };
}

export async function verifyWithPolicy(
  o: Opened,
  policy: Policy,
  opts: { identity?: DockerReference } = {},
): Promise<VerifyOutcome> {
  const root = await resolveRoot(o);
  const d = await checkPolicy(policy, o.target, root, o.ref, { identity: opts.identity });
  const signatures = d.accepted.flatMap((a) => a.signatures ?? []);
  return {
    image: formatReference(o.ref),
    digest: root.digest,
    mode: 'policy',
    signatures,
    identityRule: 'policy',
    policy: d,
  };
}
