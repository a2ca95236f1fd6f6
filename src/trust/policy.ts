/**
 * containers-policy.json(5): parse strictly, pick the most specific scope for an image, and
 * evaluate its requirements (all must hold) against the image in a Target.
 *
 * Supported requirements: insecureAcceptAnything, reject, sigstoreSigned with keyPath /
 * keyPaths / keyData / keyDatas (public keys) or fulcio (keyless: `{caPath|caData, oidcIssuer,
 * subjectEmail}`, which needs rekorPublicKey*), rekorPublicKeyPath / Paths / Data / Datas (the
 * Rekor log's keys: every signature must then carry a SET by one of them, also with public
 * keys), and signedIdentity; the same rules as containers/image (exactly one key source, at most
 * one rekor field). tiu extension, which podman and skopeo refuse as an unknown field:
 * `fulcio.subjectURI` instead of subjectEmail, for CI identities (a GitHub Actions workflow
 * URI is a URI SAN). signedBy (GPG) and sigstoreSigned with pki are parsed but refused
 * (POLICY_UNSUPPORTED): an unverifiable requirement never passes.
 *
 * Relative keyPath, rekorPublicKeyPath and caPath values are taken relative to the policy
 * file's directory; *Data values are base64 of the PEM text.
 * Where no file is named: /etc/tiu/policy.json, else /etc/containers/policy.json, else
 * POLICY_NOT_FOUND (tiu never falls back to accepting anything).
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, resolve as resolvePath } from 'node:path';
import type { Target } from '../content/interfaces.ts';
import { type DockerReference, type ImageReference, dockerName } from '../oci/reference.ts';
import type { Descriptor } from '../oci/types.ts';
import { TrustError } from './errors.ts';
import { DEFAULT_SIGNED_IDENTITY, parseDockerName, type SignedIdentity } from './identity.ts';
import type { FulcioPolicy, Policy, PolicyRequirement } from './policy-types.ts';
import type { VerifiedSignature } from './verify.ts';
import { isObject } from '../util/json.ts';

export const DEFAULT_POLICY_PATHS = ['/etc/tiu/policy.json', '/etc/containers/policy.json'] as const;

export type { FulcioPolicy, Policy, PolicyRequirement, SigstoreRequirement } from './policy-types.ts';

function bad(source: string, why: string): TrustError {
  return new TrustError('POLICY_INVALID', `${source}: ${why}`, { source });
}

function onlyKeys(obj: Record<string, unknown>, allowed: string[], where: string, source: string): void {
  for (const k of Object.keys(obj)) {
    if (!allowed.includes(k)) throw bad(source, `${where}: unknown field ${JSON.stringify(k)}`);
  }
}

function str(v: unknown, where: string, source: string): string {
  if (typeof v !== 'string' || v === '') throw bad(source, `${where} must be a non-empty string`);
  return v;
}

function parseIdentity(v: unknown, where: string, source: string): SignedIdentity {
  if (v === undefined) return DEFAULT_SIGNED_IDENTITY;
  if (!isObject(v)) throw bad(source, `${where}.signedIdentity must be an object`);
  const w = `${where}.signedIdentity`;
  switch (v.type) {
    case 'matchExact':
    case 'matchRepoDigestOrExact':
    case 'matchRepository':
      onlyKeys(v, ['type'], w, source);
      return { type: v.type };
    case 'exactReference': {
      onlyKeys(v, ['type', 'dockerReference'], w, source);
      const ref = str(v.dockerReference, `${w}.dockerReference`, source);
      const p = parseDockerName(ref);
      if (!p || (p.tag === undefined && p.digest === undefined))
        throw bad(source, `${w}.dockerReference ${JSON.stringify(ref)} must name a tag or digest`);
      return { type: 'exactReference', dockerReference: ref };
    }
    case 'exactRepository': {
      onlyKeys(v, ['type', 'dockerRepository'], w, source);
      const repo = str(v.dockerRepository, `${w}.dockerRepository`, source);
      const p = parseDockerName(repo);
      if (!p || p.tag !== undefined || p.digest !== undefined)
        throw bad(source, `${w}.dockerRepository ${JSON.stringify(repo)} must be a repository without tag or digest`);
      return { type: 'exactRepository', dockerRepository: repo };
    }
    case 'remapIdentity': {
      onlyKeys(v, ['type', 'prefix', 'signedPrefix'], w, source);
      const prefix = str(v.prefix, `${w}.prefix`, source);
      const signedPrefix = str(v.signedPrefix, `${w}.signedPrefix`, source);
      for (const [n, x] of [
        ['prefix', prefix],
        ['signedPrefix', signedPrefix],
      ] as const) {
        if (/[:@]/.test(x.replace(/^[^/]*/, '')) || x.endsWith('/'))
          throw bad(source, `${w}.${n} ${JSON.stringify(x)} must be a host, namespace or repository`);
      }
      return { type: 'remapIdentity', prefix, signedPrefix };
    }
    default:
      throw bad(source, `${w}.type ${JSON.stringify(v.type)} is not a known identity rule`);
  }
}

function parseFulcio(
  v: unknown,
  where: string,
  source: string,
  decode: (b64: string, name: string) => string,
): FulcioPolicy {
  if (!isObject(v)) throw bad(source, `${where} must be an object`);
  onlyKeys(v, ['caPath', 'caData', 'oidcIssuer', 'subjectEmail', 'subjectURI'], where, source);
  if ((v.caPath === undefined) === (v.caData === undefined))
    throw bad(source, `${where}: exactly one of caPath, caData must be set`);
  if ((v.subjectEmail === undefined) === (v.subjectURI === undefined))
    throw bad(source, `${where}: exactly one of subjectEmail, subjectURI (tiu only) must be set`);
  const out: FulcioPolicy = { oidcIssuer: str(v.oidcIssuer, `${where}.oidcIssuer`, source) };
  if (v.caPath !== undefined) out.caPath = str(v.caPath, `${where}.caPath`, source);
  if (v.caData !== undefined) out.caData = decode(str(v.caData, `${where}.caData`, source), 'fulcio.caData');
  if (v.subjectEmail !== undefined) out.subjectEmail = str(v.subjectEmail, `${where}.subjectEmail`, source);
  if (v.subjectURI !== undefined) out.subjectURI = str(v.subjectURI, `${where}.subjectURI`, source);
  return out;
}

function parseRequirement(v: unknown, where: string, source: string): PolicyRequirement {
  if (!isObject(v)) throw bad(source, `${where} must be an object`);
  switch (v.type) {
    case 'insecureAcceptAnything':
    case 'reject':
      onlyKeys(v, ['type'], where, source);
      return { type: v.type };
    case 'signedBy':
      onlyKeys(v, ['type', 'keyType', 'keyPath', 'keyPaths', 'keyData', 'signedIdentity'], where, source);
      parseIdentity(v.signedIdentity, where, source);
      return { type: 'signedBy', unsupported: 'signedBy (GPG simple signing) is not supported by tiu' };
    case 'sigstoreSigned': {
      const keyFields = ['keyPath', 'keyPaths', 'keyData', 'keyDatas'];
      const otherRoots = ['fulcio', 'pki'];
      const rekor = ['rekorPublicKeyPath', 'rekorPublicKeyPaths', 'rekorPublicKeyData', 'rekorPublicKeyDatas'];
      onlyKeys(v, ['type', ...keyFields, ...otherRoots, ...rekor, 'signedIdentity'], where, source);
      const present = [...keyFields, ...otherRoots].filter((k) => v[k] !== undefined);
      if (present.length !== 1)
        throw bad(
          source,
          `${where}: exactly one of keyPath, keyPaths, keyData, keyDatas, fulcio, pki must be set (found ${present.join(', ') || 'none'})`,
        );
      const rekorPresent = rekor.filter((k) => v[k] !== undefined);
      if (rekorPresent.length > 1)
        throw bad(source, `${where}: at most one of ${rekor.join(', ')} may be set (found ${rekorPresent.join(', ')})`);
      if (v.fulcio !== undefined && rekorPresent.length === 0)
        throw bad(source, `${where}: fulcio needs one of ${rekor.join(', ')}`);
      if (v.pki !== undefined && rekorPresent.length > 0)
        throw bad(source, `${where}: ${rekorPresent[0]} is not allowed with pki`);
      const list = (x: unknown, name: string): string[] => {
        if (!Array.isArray(x) || x.length === 0) throw bad(source, `${where}.${name} must be a non-empty array`);
        return x.map((e, i) => str(e, `${where}.${name}[${i}]`, source));
      };
      const decode = (b64: string, name: string): string => {
        if (!/^[A-Za-z0-9+/=\s]+$/.test(b64)) throw bad(source, `${where}.${name} is not base64`);
        return Buffer.from(b64, 'base64').toString('utf8');
      };
      const paths = (one: string, many: string): string[] => [
        ...(v[one] !== undefined ? [str(v[one], `${where}.${one}`, source)] : []),
        ...(v[many] !== undefined ? list(v[many], many) : []),
      ];
      const datas = (one: string, many: string): string[] => [
        ...(v[one] !== undefined ? [decode(str(v[one], `${where}.${one}`, source), one)] : []),
        ...(v[many] !== undefined ? list(v[many], many).map((d) => decode(d, many)) : []),
      ];
      const req: PolicyRequirement = {
        type: 'sigstoreSigned',
        keyPaths: paths('keyPath', 'keyPaths'),
        keyDatas: datas('keyData', 'keyDatas'),
        rekorKeyPaths: paths('rekorPublicKeyPath', 'rekorPublicKeyPaths'),
        rekorKeyDatas: datas('rekorPublicKeyData', 'rekorPublicKeyDatas'),
        signedIdentity: parseIdentity(v.signedIdentity, where, source),
      };
      if (v.fulcio !== undefined) req.fulcio = parseFulcio(v.fulcio, `${where}.fulcio`, source, decode);
      if (v.pki !== undefined)
        req.unsupported = 'sigstoreSigned with pki (certificates of your own CA, no Fulcio) is not supported by tiu';
      return req;
    }
    default:
      throw bad(source, `${where}.type ${JSON.stringify(v.type)} is not a known requirement`);
  }
}

function parseRequirements(v: unknown, where: string, source: string): PolicyRequirement[] {
  if (!Array.isArray(v) || v.length === 0) throw bad(source, `${where} must be a non-empty array of requirements`);
  return v.map((r, i) => parseRequirement(r, `${where}[${i}]`, source));
}

export function parsePolicy(text: string, source = 'policy', baseDir = process.cwd()): Policy {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw bad(source, `not valid JSON (${(e as Error).message})`);
  }
  if (!isObject(doc)) throw bad(source, 'not a JSON object');
  onlyKeys(doc, ['default', 'transports'], 'policy', source);
  if (doc.default === undefined) throw bad(source, '"default" is required');
  const policy: Policy = {
    default: parseRequirements(doc.default, 'default', source),
    transports: {},
    source,
    baseDir,
  };
  if (doc.transports !== undefined) {
    if (!isObject(doc.transports)) throw bad(source, '"transports" must be an object');
    for (const [transport, scopes] of Object.entries(doc.transports)) {
      if (!isObject(scopes)) throw bad(source, `transports.${transport} must be an object`);
      const parsed: Record<string, PolicyRequirement[]> = {};
      for (const [scope, reqs] of Object.entries(scopes)) {
        if ((transport === 'oci' || transport === 'oci-archive' || transport === 'dir') && scope === '/') {
          throw bad(source, `transports.${transport}: the scope "/" is not allowed, use ""`);
        }
        parsed[scope] = parseRequirements(reqs, `transports.${transport}[${JSON.stringify(scope)}]`, source);
      }
      policy.transports[transport] = parsed;
    }
  }
  return policy;
}

/** Read a policy file: `path` if given, else the first of DEFAULT_POLICY_PATHS that exists. */
export function loadPolicy(path?: string): Policy {
  const candidates = path !== undefined ? [path] : [...DEFAULT_POLICY_PATHS];
  for (const p of candidates) {
    if (path === undefined && !existsSync(p)) continue;
    let text: string;
    try {
      text = readFileSync(p, 'utf8');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new TrustError('POLICY_NOT_FOUND', `policy file ${p} does not exist`, { path: p });
      throw new TrustError('POLICY_INVALID', `policy file ${p} can't be read (${code ?? 'error'})`, { path: p });
    }
    return parsePolicy(text, p, dirname(resolvePath(p)));
  }
  throw new TrustError('POLICY_NOT_FOUND', `no signature policy: none of ${candidates.join(', ')} exists`, {
    paths: candidates,
  });
}

/** Scopes to try for an image, most specific first (the transport default "" last). */
export function policyScopes(ref: ImageReference): { transport: string; scopes: string[] } {
  if (ref.transport === 'docker') {
    const repo = dockerName(ref, false);
    const scopes: string[] = [];
    if (ref.digest) scopes.push(`${repo}@${ref.digest}`);
    else scopes.push(`${repo}:${ref.tag ?? 'latest'}`);
    const parts = repo.split('/');
    for (let i = parts.length; i >= 1; i--) scopes.push(parts.slice(0, i).join('/'));
    const host = ref.registry;
    if (!host.includes(':') && !/^[\d.]+$/.test(host)) {
      const labels = host.split('.');
      for (let i = 1; i < labels.length; i++) scopes.push(`*.${labels.slice(i).join('.')}`);
    }
    scopes.push('');
    return { transport: 'docker', scopes };
  }
  // Scopes inside containers-storage name podman's store ([driver@root]...), which tiu does not
  // open itself: only the transport's default applies.
  if (ref.transport === 'containers-storage') return { transport: ref.transport, scopes: [''] };
  const path = resolvePath(ref.path);
  const scopes: string[] = [];
  const name = ref.tag ?? ref.digest;
  if (name !== undefined) scopes.push(`${path}:${name}`);
  for (let p = path; p !== '/'; p = dirname(p)) scopes.push(p);
  scopes.push('');
  return { transport: ref.transport, scopes };
}

/** The requirements that apply to `ref` and the scope they came from ('default' for the global default). */
export function requirementsFor(
  policy: Policy,
  ref: ImageReference,
): { scope: string; transport: string; requirements: PolicyRequirement[] } {
  const { transport, scopes } = policyScopes(ref);
  const table = policy.transports[transport];
  if (table) {
    for (const s of scopes) {
      const reqs = table[s];
      if (reqs) return { scope: s, transport, requirements: reqs };
    }
  }
  return { scope: 'default', transport, requirements: policy.default };
}

export interface CheckPolicyOptions {
  /**
   * The docker identity the image is expected to have, where the reference does not carry one
   * (an OCI layout on a USB stick) or should be checked as another name. Defaults to the
   * reference itself for docker references, none for layouts.
   */
  identity?: DockerReference;
}

export interface PolicyDecision {
  transport: string;
  scope: string;
  /** One entry per requirement, in order: what accepted it. */
  accepted: { type: string; signatures?: VerifiedSignature[] }[];
}

/**
 * Check the image `root` in `source` (reached as `ref`) against `policy`. Resolves with what
 * accepted it; throws a TrustError (POLICY_REJECTED, SIGNATURE_MISSING, SIGNATURE_INVALID,
 * SIGNATURE_DIGEST_MISMATCH, IDENTITY_MISMATCH, POLICY_UNSUPPORTED, CERT_*, TLOG_*...) otherwise.
 */
export async function checkPolicy(
  policy: Policy,
  source: Target,
  root: Descriptor,
  ref: ImageReference,
  opts: CheckPolicyOptions = {},
): Promise<PolicyDecision> {
  const { transport, scope, requirements } = requirementsFor(policy, ref);
  const where = scope === 'default' ? 'the default requirement' : `transports.${transport}[${JSON.stringify(scope)}]`;
  const imageIdentity = opts.identity ?? (ref.transport === 'docker' ? ref : undefined);
  const decision: PolicyDecision = { transport, scope, accepted: [] };
  for (const req of requirements) {
    switch (req.type) {
      case 'insecureAcceptAnything':
        decision.accepted.push({ type: req.type });
        break;
      case 'reject':
        throw new TrustError('POLICY_REJECTED', `${policy.source}: ${where} rejects ${source.name} (${root.digest})`, {
          policy: policy.source,
          transport,
          scope,
        });
      case 'signedBy':
        throw new TrustError('POLICY_UNSUPPORTED', `${policy.source}: ${where}: ${req.unsupported}`, {
          policy: policy.source,
          transport,
          scope,
        });
      case 'sigstoreSigned': {
        if (req.unsupported)
          throw new TrustError('POLICY_UNSUPPORTED', `${policy.source}: ${where}: ${req.unsupported}`, {
            policy: policy.source,
            transport,
            scope,
          });
        // Loaded here, not at the top: the keys, X.509 and signature code (@sigstore/core among
        // them, ~40 modules) cost every device command ~5 MiB, and only this requirement needs it.
        const { verifySigstoreRequirement } = await import('./policy-signed.ts');
        const signatures = await verifySigstoreRequirement(req, policy, source, root, imageIdentity);
        decision.accepted.push({ type: req.type, signatures });
        break;
      }
    }
  }
  return decision;
}
