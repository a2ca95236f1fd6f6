/**
 * signedIdentity rules of containers-policy.json(5): does a signature's claimed
 * docker-reference fit the identity of the image being checked?
 */
import { type DockerReference, dockerName, parseReference } from '../oci/reference.ts';
import { TrustError } from './errors.ts';

export type SignedIdentity =
  | { type: 'matchExact' }
  | { type: 'matchRepoDigestOrExact' }
  | { type: 'matchRepository' }
  | { type: 'exactReference'; dockerReference: string }
  | { type: 'exactRepository'; dockerRepository: string }
  | { type: 'remapIdentity'; prefix: string; signedPrefix: string }
  /** tiu's own, for `tiu verify --key` on an image whose identity is unknown (an OCI layout): no identity check. */
  | { type: 'any' };

export const DEFAULT_SIGNED_IDENTITY: SignedIdentity = { type: 'matchRepoDigestOrExact' };

/** Parse a docker name (`host/repo[:tag][@digest]`, docker.io-normalised); undefined if it is not one. */
export function parseDockerName(name: string): DockerReference | undefined {
  if (name.includes('://')) return undefined;
  try {
    const r = parseReference(`docker://${name}`);
    return r.transport === 'docker' ? r : undefined;
  } catch {
    return undefined;
  }
}

function repoOf(r: DockerReference): string {
  return dockerName(r, false);
}

function sameExact(a: DockerReference, b: DockerReference): boolean {
  return repoOf(a) === repoOf(b) && a.tag === b.tag && a.digest === b.digest;
}

function repoDigestOrExact(image: DockerReference, sig: DockerReference): boolean {
  if (image.digest !== undefined && image.tag === undefined) return repoOf(image) === repoOf(sig);
  return sameExact(image, sig);
}

/** The identity of an image as the containers tools see it: a reference with neither tag nor digest means :latest. */
export function imageIdentityOf(ref: DockerReference): DockerReference {
  if (ref.tag === undefined && ref.digest === undefined) return { ...ref, tag: 'latest' };
  return ref;
}

/**
 * Does `signatureReference` (the payload's docker-reference) satisfy `rule` for an image whose
 * identity is `image` (undefined when the image has no docker identity, e.g. an OCI layout)?
 * Returns null when it does, else the reason.
 */
export function identityMismatch(
  rule: SignedIdentity,
  image: DockerReference | undefined,
  signatureReference: string,
): string | null {
  if (rule.type === 'any') return null;
  const sig = parseDockerName(signatureReference);
  if (!sig) return `the signed docker-reference ${JSON.stringify(signatureReference)} is not a valid image name`;
  const show = (r: DockerReference): string => dockerName(r);
  switch (rule.type) {
    case 'exactReference': {
      const want = parseDockerName(rule.dockerReference);
      if (want && sameExact(want, sig)) return null;
      return `signed for ${show(sig)}, the policy requires exactly ${rule.dockerReference}`;
    }
    case 'exactRepository': {
      const want = parseDockerName(rule.dockerRepository);
      if (want && repoOf(want) === repoOf(sig)) return null;
      return `signed for repository ${repoOf(sig)}, the policy requires ${rule.dockerRepository}`;
    }
    default:
      break;
  }
  if (!image)
    return `the image has no docker identity to compare the signed ${show(sig)} with (give one with --identity)`;
  const id = imageIdentityOf(image);
  switch (rule.type) {
    case 'matchExact':
      return sameExact(id, sig) ? null : `signed for ${show(sig)}, not for ${show(id)}`;
    case 'matchRepository':
      return repoOf(id) === repoOf(sig) ? null : `signed for repository ${repoOf(sig)}, not ${repoOf(id)}`;
    case 'matchRepoDigestOrExact':
      return repoDigestOrExact(id, sig) ? null : `signed for ${show(sig)}, not for ${show(id)}`;
    case 'remapIdentity': {
      const remapped = remap(id, rule.prefix, rule.signedPrefix);
      return repoDigestOrExact(remapped, sig)
        ? null
        : `signed for ${show(sig)}, not for ${show(remapped)} (${show(id)} remapped)`;
    }
  }
}

/** remapIdentity: replace `prefix` (a host, namespace or repository, at a path boundary) by `signedPrefix`. */
export function remap(image: DockerReference, prefix: string, signedPrefix: string): DockerReference {
  const name = repoOf(image);
  if (name !== prefix && !name.startsWith(prefix + '/')) return image;
  const rest = name.slice(prefix.length);
  let s = signedPrefix + rest;
  if (image.tag) s += `:${image.tag}`;
  if (image.digest) s += `@${image.digest}`;
  const r = parseDockerName(s);
  if (!r) throw new TrustError('POLICY_INVALID', `remapIdentity gives an invalid name ${JSON.stringify(s)}`);
  return r;
}
