/**
 * The sigstoreSigned requirement of a signature policy (./policy.ts): load what it trusts (public
 * keys, Rekor keys, a Fulcio CA) from its files and data, then verify the image's signatures
 * against it. A module of its own so that policies without it never load the key, X.509 and
 * signature code (./policy.ts imports it where such a requirement is evaluated).
 */
import { readFileSync } from 'node:fs';
import { isAbsolute, resolve as resolvePath } from 'node:path';
import type { KeyObject } from 'node:crypto';
import type { Target } from '../content/interfaces.ts';
import type { DockerReference } from '../oci/reference.ts';
import type { Descriptor } from '../oci/types.ts';
import type { SignerTrust } from './bundle-signer.ts';
import { TrustError } from './errors.ts';
import type { FulcioTrust } from './fulcio.ts';
import { loadPublicKeys } from './keys.ts';
import { pemDecodeAll } from './pem.ts';
import type { FulcioPolicy, Policy, SigstoreRequirement } from './policy-types.ts';
import { verifyImageSignatures, type VerifiedSignature } from './verify.ts';
import { parseCertificateDer, type Certificate } from './x509.ts';

function readPolicyFile(policy: Policy, p: string, what: string): { path: string; text: string } {
  const path = isAbsolute(p) ? p : resolvePath(policy.baseDir, p);
  try {
    return { path, text: readFileSync(path, 'utf8') };
  } catch (e) {
    throw new TrustError(
      'KEY_INVALID',
      `${policy.source}: ${what} ${path} can't be read (${(e as NodeJS.ErrnoException).code ?? 'error'})`,
      { path },
    );
  }
}

function loadKeyList(policy: Policy, paths: string[], datas: string[], what: string): KeyObject[] {
  const keys: KeyObject[] = [];
  for (const p of paths) {
    const { path, text } = readPolicyFile(policy, p, what);
    keys.push(...loadPublicKeys(text, path));
  }
  datas.forEach((d, i) => keys.push(...loadPublicKeys(d, `${policy.source}: ${what} data #${i + 1}`)));
  return keys;
}

function loadRekorKeys(req: SigstoreRequirement, policy: Policy): KeyObject[] | undefined {
  if (req.rekorKeyPaths.length === 0 && req.rekorKeyDatas.length === 0) return undefined;
  const keys = loadKeyList(policy, req.rekorKeyPaths, req.rekorKeyDatas, 'Rekor public key');
  keys.forEach((k, i) => {
    // A SET is an ECDSA signature (containers/image accepts nothing else either).
    if (k.asymmetricKeyType !== 'ec')
      throw new TrustError('KEY_UNSUPPORTED', `${policy.source}: Rekor public key #${i + 1} is not an ECDSA key`);
  });
  return keys;
}

function loadFulcio(f: FulcioPolicy, policy: Policy): FulcioTrust {
  const { path, text } =
    f.caPath !== undefined ? readPolicyFile(policy, f.caPath, 'Fulcio CA') : { path: 'caData', text: f.caData ?? '' };
  const cas: Certificate[] = [];
  for (const block of pemDecodeAll(text)) {
    if (block.label !== 'CERTIFICATE') continue;
    try {
      cas.push(parseCertificateDer(block.der, `${policy.source}: Fulcio CA ${path}`));
    } catch (e) {
      throw new TrustError('POLICY_INVALID', (e as Error).message, { path });
    }
  }
  if (cas.length === 0)
    throw new TrustError('POLICY_INVALID', `${policy.source}: Fulcio CA ${path} holds no PEM certificate`, { path });
  const subject = f.subjectURI !== undefined ? { uri: f.subjectURI } : { email: f.subjectEmail ?? '' };
  return { cas, oidcIssuer: f.oidcIssuer, subject };
}

/** What one sigstoreSigned requirement trusts, loaded from its files and data. */
export function loadTrust(req: SigstoreRequirement, policy: Policy): SignerTrust {
  const keys = loadKeyList(policy, req.keyPaths, req.keyDatas, 'public key');
  const rekorKeys = loadRekorKeys(req, policy);
  const fulcio = req.fulcio ? loadFulcio(req.fulcio, policy) : undefined;
  return { keys, ...(fulcio ? { fulcio } : {}), ...(rekorKeys ? { rekorKeys } : {}) };
}

/** Verify the image's signatures against one sigstoreSigned requirement; throws a TrustError when none is accepted. */
export async function verifySigstoreRequirement(
  req: SigstoreRequirement,
  policy: Policy,
  source: Target,
  root: Descriptor,
  imageIdentity: DockerReference | undefined,
): Promise<VerifiedSignature[]> {
  const r = await verifyImageSignatures(source, root, {
    ...loadTrust(req, policy),
    identity: req.signedIdentity,
    imageIdentity,
  });
  return r.verified;
}
