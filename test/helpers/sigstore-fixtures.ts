/**
 * Keyless signing without the network, for tests: a Fulcio-like CA (root + intermediate), leaf
 * certificates for an ephemeral P-256 key with Fulcio's OIDC issuer extensions (v1: raw
 * string, v2: DER UTF8String), SAN email or URI, code-signing EKU and minutes of validity; a
 * Rekor-like P-256 log key; hashedrekord bodies and SETs; and signature layers written as
 * cosign writes them (signature, certificate, chain, bundle annotations); sigstore bundles as
 * cosign 3 writes them (DSSE envelope, leaf certificate, Rekor v1 dsse entry with SET and
 * inclusion proof), attached as referrers. Certificates are made
 * with the openssl CLI (`openssl ca` for exact validity windows).
 */
import { execFileSync } from 'node:child_process';
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { json } from '@sigstore/core';
import { atExit } from './at-exit.ts';
import type { Target } from '../../src/content/interfaces.ts';
import type { Descriptor } from '../../src/oci/types.ts';
import {
  attachBundle,
  BUNDLE_MEDIA_TYPE,
  IN_TOTO_PAYLOAD_TYPE,
  keyHint,
  makeStatement,
  pae,
} from '../../src/trust/bundle.ts';
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
  // Made while a test file loads (describe bodies), used until its last test: gone when the process ends.
  atExit(() => rmSync(dir, { recursive: true, force: true }));
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

export const MINUTE_MS = 60_000;

/**
 * A Fulcio-like leaf's life as the tests use it: ten minutes of validity `hoursAgo` hours ago
 * (already expired by the device's clock, as real keyless certificates are) and the time the log
 * integrated the signature, `loggedAfter` minutes into it.
 */
export function pastValidity(hoursAgo = 2, loggedAfter = 5): { t0: Date; logged: Date; leafOpts: LeafOptions } {
  const t0 = new Date(Math.floor((Date.now() - hoursAgo * 3600 * 1000) / 1000) * 1000);
  return {
    t0,
    logged: new Date(t0.getTime() + loggedAfter * MINUTE_MS),
    leafOpts: {
      issuerV1: TEST_OIDC_ISSUER,
      issuerV2: TEST_OIDC_ISSUER,
      email: TEST_EMAIL,
      notBefore: t0,
      notAfter: new Date(t0.getTime() + 10 * MINUTE_MS),
    },
  };
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

/** The in-toto DSSE payload type and a sigstore bundle v0.3 document as cosign 3 writes one. */
export interface SigstoreBundleDoc {
  mediaType: string;
  verificationMaterial: {
    certificate?: { rawBytes: string };
    x509CertificateChain?: { certificates: { rawBytes: string }[] };
    publicKey?: { hint: string };
    tlogEntries: Record<string, unknown>[];
    timestampVerificationData?: Record<string, unknown>;
  };
  dsseEnvelope: { payload: string; payloadType: string; signatures: { sig: string; keyid: string }[] };
}

export interface SigstoreBundleOptions {
  dockerReference: string;
  /** The statement's subject digest (the image; another one makes a replayed bundle). */
  digest: string;
  /** Keyless: the leaf's key signs, its certificate is the material and the entry's verifier. */
  leaf?: Leaf;
  /** Key + Rekor: this key signs, the entry's verifier is its public key. */
  key?: KeyObject;
  log: RekorLog;
  integratedTime: Date;
  /** Shape the entry as Rekor v2 writes it: dsse 0.0.2, no SET, no integrated time. */
  rekorV2?: boolean;
  /** The entry body to log instead of this envelope's (e.g. an entry of another signature). */
  body?: (real: Record<string, unknown>) => Record<string, unknown>;
  /** The entry's logID instead of the log's (the SET still by the log's key). */
  logID?: string;
  /** Edit the document after everything was signed (tampering, leaving parts out). */
  tamper?: (doc: SigstoreBundleDoc) => void;
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----([\s\S]*?)-----END CERTIFICATE-----/;

/** The DER of the (first) PEM certificate in `pem`. */
export function certificateDer(pem: string): Buffer {
  return Buffer.from(PEM_CERT.exec(pem)![1]!.replace(/\s+/g, ''), 'base64');
}

/** A Rekor dsse v0.0.1 entry body for the envelope (canonical JSON, as the log stores it). */
export function dsseEntryBody(envelopeJson: string, payload: Buffer, signature: Buffer, verifierPem: string) {
  const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');
  return {
    apiVersion: '0.0.1',
    kind: 'dsse',
    spec: {
      envelopeHash: { algorithm: 'sha256', value: sha(envelopeJson) },
      payloadHash: { algorithm: 'sha256', value: sha(payload) },
      signatures: [{ signature: signature.toString('base64'), verifier: Buffer.from(verifierPem).toString('base64') }],
    },
  };
}

const REKOR_ORIGIN = 'rekor.test';
export const REKOR_TEST_URL = `https://${REKOR_ORIGIN}`;

/**
 * An inclusion proof in a one-entry tree and its checkpoint (a signed note by the log's key):
 * what a Rekor v1 entry carries next to its SET. tiu does not read it; sigstore-js checks it.
 */
function inclusionProof(log: RekorLog, body: Buffer): Record<string, unknown> {
  const root = createHash('sha256')
    .update(Buffer.concat([Buffer.from([0]), body]))
    .digest();
  const note = `${REKOR_ORIGIN} - 1\n1\n${root.toString('base64')}\n`;
  const sig = sign('sha256', Buffer.from(note), { key: log.key, dsaEncoding: 'der' });
  const hint = Buffer.from(log.logID, 'hex').subarray(0, 4);
  return {
    logIndex: '0',
    rootHash: root.toString('base64'),
    treeSize: '1',
    hashes: [],
    checkpoint: { envelope: `${note}\n\u2014 ${REKOR_ORIGIN} ${Buffer.concat([hint, sig]).toString('base64')}\n` },
  };
}

/**
 * A sigstore bundle v0.3 as cosign 3 writes one: a DSSE envelope over the cosign-sign in-toto
 * statement, signed by the leaf's (keyless) or the key's private key, the leaf certificate (DER)
 * or a key hint as material, and one Rekor v1 dsse 0.0.1 entry with its SET and inclusion proof.
 */
export function makeSigstoreBundle(o: SigstoreBundleOptions): Buffer {
  const signingKey = o.leaf?.key ?? o.key!;
  const statement = makeStatement(o.dockerReference, o.digest as `sha256:${string}`);
  const signature = sign('sha256', pae(IN_TOTO_PAYLOAD_TYPE, statement), { key: signingKey, dsaEncoding: 'der' });
  const envelope = {
    payload: statement.toString('base64'),
    payloadType: IN_TOTO_PAYLOAD_TYPE,
    signatures: [{ sig: signature.toString('base64'), keyid: '' }],
  };
  const verifierPem = o.leaf
    ? o.leaf.certPem
    : createPublicKey(signingKey).export({ format: 'pem', type: 'spki' }).toString();
  const real = dsseEntryBody(JSON.stringify(envelope), statement, signature, verifierPem);
  const body = Buffer.from(json.canonicalize(o.body ? o.body(real) : real));
  const integratedTime = Math.floor(o.integratedTime.getTime() / 1000);
  const logIndex = 42;
  const entry: Record<string, unknown> = {
    logIndex: String(logIndex),
    logId: { keyId: Buffer.from(o.logID ?? o.log.logID, 'hex').toString('base64') },
    kindVersion: { kind: 'dsse', version: o.rekorV2 ? '0.0.2' : '0.0.1' },
    integratedTime: o.rekorV2 ? '0' : String(integratedTime),
    inclusionProof: inclusionProof(o.log, body),
    canonicalizedBody: body.toString('base64'),
  };
  if (!o.rekorV2) {
    const setPayload = { body: body.toString('base64'), integratedTime, logIndex, logID: o.logID ?? o.log.logID };
    const set = sign('sha256', Buffer.from(json.canonicalize(setPayload)), { key: o.log.key, dsaEncoding: 'der' });
    entry.inclusionPromise = { signedEntryTimestamp: set.toString('base64') };
  }
  const doc: SigstoreBundleDoc = {
    mediaType: BUNDLE_MEDIA_TYPE,
    verificationMaterial: {
      ...(o.leaf
        ? { certificate: { rawBytes: certificateDer(o.leaf.certPem).toString('base64') } }
        : { publicKey: { hint: keyHint(signingKey) } }),
      tlogEntries: [entry],
      timestampVerificationData: {},
    },
    dsseEnvelope: envelope,
  };
  o.tamper?.(doc);
  return Buffer.from(JSON.stringify(doc));
}

/** Attach a bundle made by makeSigstoreBundle to `subject` as a referrer (cosign 3's default layout). */
export async function attachSigstoreBundle(
  target: Target,
  subject: Descriptor,
  o: Omit<SigstoreBundleOptions, 'digest'> & { digest?: string },
): Promise<Descriptor> {
  return attachBundle(target, subject, makeSigstoreBundle({ ...o, digest: o.digest ?? subject.digest }));
}
