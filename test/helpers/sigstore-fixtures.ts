/**
 * Keyless signing without the network, for tests: a Fulcio-like CA (root + intermediate), leaf
 * certificates for an ephemeral P-256 key with Fulcio's OIDC issuer extensions (v1: raw
 * string, v2: DER UTF8String), SAN email or URI, code-signing EKU and minutes of validity; a
 * Rekor-like P-256 log key; hashedrekord bodies and SETs; and signature layers written as
 * cosign writes them (signature, certificate, chain, bundle annotations). Certificates are made
 * with the openssl CLI (`openssl ca` for exact validity windows).
 */
import { execFileSync } from 'node:child_process';
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { json } from '@sigstore/core';
import type { Target } from '../../src/content/interfaces.ts';
import type { Descriptor } from '../../src/oci/types.ts';
import { CERTIFICATE_ANNOTATION, CHAIN_ANNOTATION } from '../../src/trust/fulcio.ts';
import { makePayload } from '../../src/trust/payload.ts';
import { REKOR_SET_ANNOTATION } from '../../src/trust/rekor.ts';
import { appendSignature } from '../../src/trust/signatures.ts';

export const TEST_OIDC_ISSUER = 'https://token.actions.example.com';
export const TEST_EMAIL = 'release@example.com';
export const TEST_URI = 'https://github.example.com/os/microos/.github/workflows/release.yml@refs/heads/main';

interface KeyCert {
  keyPath: string;
  certPath: string;
  certPem: string;
}

export interface FulcioCa {
  dir: string;
  root: KeyCert;
  intermediate: KeyCert;
  /** intermediate + root, as cosign's chain annotation holds it. */
  chainPem: string;
}

export interface LeafOptions {
  /** OIDC issuer in the v1 extension (raw bytes); undefined leaves it out. */
  issuerV1?: string;
  /** OIDC issuer in the v2 extension (UTF8String); undefined leaves it out. */
  issuerV2?: string;
  email?: string;
  uri?: string;
  notBefore: Date;
  notAfter: Date;
  /** The EKU (default codeSigning). */
  eku?: string;
}

export interface Leaf {
  certPem: string;
  key: KeyObject;
}

let serial = 1;

function openssl(args: string[]): void {
  execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

function stamp(d: Date): string {
  return d
    .toISOString()
    .replace(/[-:T]/g, '')
    .replace(/\.\d+Z$/, 'Z');
}

function newKey(path: string): void {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  writeFileSync(path, privateKey.export({ format: 'pem', type: 'pkcs8' }));
}

/**
 * Issue a certificate with `openssl ca`: `issuer` undefined self-signs. `ext` is the body of an
 * extension section (openssl x509v3_config lines).
 */
function issue(
  dir: string,
  name: string,
  subject: string,
  issuer: KeyCert | undefined,
  notBefore: Date,
  notAfter: Date,
  ext: string[],
): KeyCert {
  const keyPath = join(dir, `${name}.key`);
  newKey(keyPath);
  const csr = join(dir, `${name}.csr`);
  openssl(['req', '-new', '-key', keyPath, '-subj', subject, '-out', csr]);
  const db = join(dir, `db-${name}`);
  mkdirSync(db);
  writeFileSync(join(db, 'index.txt'), '');
  writeFileSync(join(db, 'serial'), `${(serial++).toString(16).padStart(4, '0')}\n`);
  const cnf = join(dir, `${name}.cnf`);
  writeFileSync(
    cnf,
    [
      '[ca]',
      'default_ca = test_ca',
      '[test_ca]',
      `database = ${db}/index.txt`,
      `new_certs_dir = ${db}`,
      `serial = ${db}/serial`,
      'default_md = sha256',
      'policy = any',
      'unique_subject = no',
      'email_in_dn = no',
      '[any]',
      'organizationName = optional',
      'commonName = optional',
      '[ext]',
      ...ext,
      '',
    ].join('\n'),
  );
  const certPath = join(dir, `${name}.pem`);
  openssl([
    'ca',
    '-batch',
    '-notext',
    '-config',
    cnf,
    '-in',
    csr,
    '-out',
    certPath,
    '-startdate',
    stamp(notBefore),
    '-enddate',
    stamp(notAfter),
    '-extfile',
    cnf,
    '-extensions',
    'ext',
    ...(issuer ? ['-cert', issuer.certPath, '-keyfile', issuer.keyPath] : ['-selfsign', '-keyfile', keyPath]),
  ]);
  return { keyPath, certPath, certPem: readFileSync(certPath, 'utf8') };
}

const YEAR = 365 * 24 * 3600 * 1000;

/** A root and an intermediate, valid from a year ago for five years, as Fulcio's are shaped. */
export function makeFulcioCa(label = 'fulcio'): FulcioCa {
  const dir = mkdtempSync(join(tmpdir(), `tiu-${label}-`));
  const from = new Date(Date.now() - YEAR);
  const to = new Date(Date.now() + 5 * YEAR);
  const root = issue(dir, 'root', `/O=${label}.test/CN=${label}-root`, undefined, from, to, [
    'basicConstraints = critical, CA:TRUE',
    'keyUsage = critical, keyCertSign, cRLSign',
    'subjectKeyIdentifier = hash',
  ]);
  const intermediate = issue(dir, 'intermediate', `/O=${label}.test/CN=${label}-intermediate`, root, from, to, [
    'basicConstraints = critical, CA:TRUE, pathlen:0',
    'keyUsage = critical, keyCertSign, cRLSign',
    'extendedKeyUsage = codeSigning',
    'subjectKeyIdentifier = hash',
    'authorityKeyIdentifier = keyid',
  ]);
  return { dir, root, intermediate, chainPem: intermediate.certPem + root.certPem };
}

/** A CA one level deeper: a sub-intermediate under `ca`'s intermediate (which allows none: pathlen 0). */
export function subordinateCa(ca: FulcioCa): FulcioCa {
  const from = new Date(Date.now() - YEAR);
  const sub = issue(
    ca.dir,
    `sub-${serial}`,
    '/O=fulcio.test/CN=sub-intermediate',
    ca.intermediate,
    from,
    new Date(Date.now() + YEAR),
    [
      'basicConstraints = critical, CA:TRUE',
      'keyUsage = critical, keyCertSign, cRLSign',
      'extendedKeyUsage = codeSigning',
      'subjectKeyIdentifier = hash',
      'authorityKeyIdentifier = keyid',
    ],
  );
  return { ...ca, intermediate: sub, chainPem: sub.certPem + ca.chainPem };
}

function hexBytes(s: string): string {
  return [...Buffer.from(s, 'utf8')].map((b) => b.toString(16).padStart(2, '0')).join(':');
}

/** A Fulcio-like leaf for a fresh P-256 key, issued by the CA's intermediate. */
export function issueLeaf(ca: FulcioCa, opts: LeafOptions): Leaf {
  const name = `leaf-${serial}`;
  const san = [...(opts.email ? [`email:${opts.email}`] : []), ...(opts.uri ? [`URI:${opts.uri}`] : [])];
  const kc = issue(ca.dir, name, '/O=sigstore.test', ca.intermediate, opts.notBefore, opts.notAfter, [
    'keyUsage = critical, digitalSignature',
    `extendedKeyUsage = ${opts.eku ?? 'codeSigning'}`,
    ...(san.length > 0 ? [`subjectAltName = critical, ${san.join(', ')}`] : []),
    ...(opts.issuerV1 !== undefined ? [`1.3.6.1.4.1.57264.1.1 = DER:${hexBytes(opts.issuerV1)}`] : []),
    ...(opts.issuerV2 !== undefined ? [`1.3.6.1.4.1.57264.1.8 = ASN1:UTF8String:${opts.issuerV2}`] : []),
    'subjectKeyIdentifier = hash',
    'authorityKeyIdentifier = keyid',
  ]);
  return { certPem: kc.certPem, key: createPrivateKey(readFileSync(kc.keyPath)) };
}

export interface RekorLog {
  key: KeyObject;
  publicKeyPem: string;
  logID: string;
}

export function makeRekorLog(): RekorLog {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const spki = publicKey.export({ format: 'der', type: 'spki' });
  return {
    key: privateKey,
    publicKeyPem: publicKey.export({ format: 'pem', type: 'spki' }).toString(),
    logID: createHash('sha256').update(spki).digest('hex'),
  };
}

/** A hashedrekord v0.0.1 entry body for `signature` over `payload` by `signerPem` (a certificate or public key). */
export function hashedRekordBody(signature: Buffer, signerPem: string, payload: Buffer): Buffer {
  return Buffer.from(
    JSON.stringify({
      apiVersion: '0.0.1',
      kind: 'hashedrekord',
      spec: {
        data: { hash: { algorithm: 'sha256', value: createHash('sha256').update(payload).digest('hex') } },
        signature: {
          content: signature.toString('base64'),
          publicKey: { content: Buffer.from(signerPem).toString('base64') },
        },
      },
    }),
  );
}

/** The `dev.sigstore.cosign/bundle` annotation: the log's SET over the canonical JSON of Payload. */
export function makeSet(log: RekorLog, body: Buffer, integratedTime: Date, logIndex = 42): string {
  const payload = {
    body: body.toString('base64'),
    integratedTime: Math.floor(integratedTime.getTime() / 1000),
    logIndex,
    logID: log.logID,
  };
  const set = sign('sha256', Buffer.from(json.canonicalize(payload)), { key: log.key, dsaEncoding: 'der' });
  return JSON.stringify({ SignedEntryTimestamp: set.toString('base64'), Payload: payload });
}

export interface KeylessSignOptions {
  dockerReference: string;
  /** Sign for this digest (default: the subject's; another one makes a replayed signature). */
  manifestDigest?: string;
  leaf: Leaf;
  ca: FulcioCa;
  log: RekorLog;
  integratedTime: Date;
  /** Change the SET text after it was signed (a tampered SET). */
  tamperSet?: (set: string) => string;
  /** Leave out annotations (e.g. the bundle). */
  omit?: string[];
}

/** The signed simple-signing payload and its signature, for `subject`. */
function signPayload(
  key: KeyObject,
  dockerReference: string,
  manifestDigest: string,
): { payload: Buffer; signature: Buffer } {
  const payload = makePayload({
    dockerReference,
    manifestDigest: manifestDigest as `sha256:${string}`,
    optional: null,
  });
  return { payload, signature: sign('sha256', payload, { key, dsaEncoding: 'der' }) };
}

/** Append a keyless signature to `subject`'s `.sig` manifest exactly as cosign writes one. */
export async function writeKeylessSignature(target: Target, subject: Descriptor, o: KeylessSignOptions): Promise<void> {
  const { payload, signature } = signPayload(o.leaf.key, o.dockerReference, o.manifestDigest ?? subject.digest);
  let set = makeSet(o.log, hashedRekordBody(signature, o.leaf.certPem, payload), o.integratedTime);
  if (o.tamperSet) set = o.tamperSet(set);
  const annotations: Record<string, string> = {
    [CERTIFICATE_ANNOTATION]: o.leaf.certPem,
    [CHAIN_ANNOTATION]: o.ca.chainPem,
    [REKOR_SET_ANNOTATION]: set,
  };
  for (const k of o.omit ?? []) delete annotations[k];
  await appendSignature(target, subject.digest, payload, signature.toString('base64'), () => false, annotations);
}

/** Append a key-based signature with a Rekor SET naming the public key (cosign sign --key with the tlog). */
export async function writeKeyRekorSignature(
  target: Target,
  subject: Descriptor,
  o: {
    key: KeyObject;
    dockerReference: string;
    log: RekorLog;
    integratedTime: Date;
    tamperSet?: (set: string) => string;
  },
): Promise<void> {
  const { payload, signature } = signPayload(o.key, o.dockerReference, subject.digest);
  const pubPem = createPublicKey(o.key).export({ format: 'pem', type: 'spki' }).toString();
  let set = makeSet(o.log, hashedRekordBody(signature, pubPem, payload), o.integratedTime);
  if (o.tamperSet) set = o.tamperSet(set);
  await appendSignature(target, subject.digest, payload, signature.toString('base64'), () => false, {
    [REKOR_SET_ANNOTATION]: set,
  });
}

/** Flip the integrated time inside a SET without re-signing it. */
export function tamperIntegratedTime(set: string): string {
  const doc = JSON.parse(set) as { Payload: { integratedTime: number } };
  doc.Payload.integratedTime += 1;
  return JSON.stringify(doc);
}
