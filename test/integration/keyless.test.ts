/**
 * Keyless (Fulcio + Rekor) signatures against a real registry (distribution 2.8.2 behind a
 * counting proxy), verified offline: `tiu verify --policy` and the device path (`update()` on
 * the MicroOS btrfs harness). Each refusal has its own code and comes before any config or
 * layer blob of the image was requested; the default snapshot stays as it was. Also a public
 * key with a Rekor SET (key + rekorPublicKey*).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { buildBundle } from '../../src/bundle/build.ts';
import type { Target } from '../../src/content/interfaces.ts';
import { OciLayoutTarget } from '../../src/content/oci-layout.ts';
import { copy } from '../../src/copy/copy.ts';
import { parseConfig } from '../../src/deploy/config.ts';
import { openContext, readState } from '../../src/deploy/state.ts';
import { update } from '../../src/deploy/update/index.ts';
import type { UpdateDeps } from '../../src/deploy/update/deps.ts';
import { productionDeps } from '../../src/deploy/wiring.ts';
import type { ErrorCode } from '../../src/error-codes.ts';
import { isTiuError } from '../../src/errors.ts';
import { sha256 } from '../../src/oci/digest.ts';
import { parseReference, referenceName, type DockerReference } from '../../src/oci/reference.ts';
import type { Descriptor } from '../../src/oci/types.ts';
import { openRegistryTarget } from '../../src/transport/registry/index.ts';
import { startCountingProxy, type CountingProxy } from '../helpers/counting-proxy.ts';
import { requireRoot } from '../helpers/env.ts';
import { baseOs, createMicroOS, v2Files, writeTree, type MicroOS } from '../helpers/microos.ts';
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts';
import {
  issueLeaf,
  makeFulcioCa,
  makeRekorLog,
  tamperIntegratedTime,
  TEST_EMAIL,
  TEST_OIDC_ISSUER,
  writeKeylessSignature,
  writeKeyRekorSignature,
  attachSigstoreBundle,
  type FulcioCa,
  type SigstoreBundleOptions,
  type KeylessSignOptions,
  type Leaf,
  type RekorLog,
} from '../helpers/sigstore-fixtures.ts';
import { TEST_IDENTITY } from '../helpers/update-deps.ts';

const BIN = new URL('../../bin/tiu', import.meta.url).pathname;
const MIN = 60_000;

describe('keyless signatures (Fulcio + Rekor) on a registry: tiu verify and tiu update', function () {
  this.timeout(300_000);
  let os: MicroOS;
  let work = '';
  let reg: RunningRegistry;
  let proxy: CountingProxy;
  let registry: Target;
  let ca: FulcioCa;
  let otherCa: FulcioCa;
  let log: RekorLog;
  let leaf: Leaf;
  let v2: Descriptor;
  /** Every blob of the built image (configs and layers): none may be fetched before trust. */
  const imageBlobs = new Set<string>();
  const noHooks = parseConfig('default-hooks = false');
  const t0 = new Date(Math.floor((Date.now() - 3 * 3600 * 1000) / 1000) * 1000);
  const logged = new Date(t0.getTime() + 4 * MIN);
  const deps: UpdateDeps = {
    ...productionDeps,
    async openSource(reference, o) {
      const r = parseReference(reference);
      if (r.transport !== 'docker') return productionDeps.openSource(reference, o);
      return {
        target: openRegistryTarget(r, { registriesConf: false, backoffBaseMs: 5, backoffMaxMs: 20 }),
        reference: referenceName(r),
      };
    },
  };
  const image = (tag: string): string => `docker://${proxy.host}/tiu/os:${tag}`;
  const state = async () => readState(await openContext(os.sysroot));

  /** A copy of v2's manifest under another digest (an annotation more), tagged `tag`, signed by `sign`. */
  async function variant(tag: string, sign: (d: Descriptor) => Promise<unknown>): Promise<Descriptor> {
    const m = JSON.parse(Buffer.concat(await (await registry.fetch(v2)).toArray()).toString('utf8')) as {
      annotations?: Record<string, string>;
    };
    m.annotations = { ...m.annotations, 'org.opensuse.tiu.test.case': tag };
    const bytes = Buffer.from(JSON.stringify(m));
    const desc: Descriptor = { mediaType: v2.mediaType, digest: sha256(bytes), size: bytes.length };
    await registry.push(desc, Readable.from([bytes]));
    await registry.tag(desc, tag);
    await sign(desc);
    return desc;
  }
  const keyless =
    (o: Partial<KeylessSignOptions> = {}) =>
    (d: Descriptor) =>
      writeKeylessSignature(registry, d, {
        dockerReference: `${TEST_IDENTITY}:v2`,
        leaf,
        ca,
        log,
        integratedTime: logged,
        ...o,
      });

  function fulcioRequirement(extra: Record<string, unknown> = {}): Record<string, unknown> {
    return {
      type: 'sigstoreSigned',
      fulcio: {
        caPath: join(os.sysroot, 'etc/tiu/fulcio.pem'),
        oidcIssuer: TEST_OIDC_ISSUER,
        subjectEmail: TEST_EMAIL,
      },
      rekorPublicKeyPath: join(os.sysroot, 'etc/tiu/rekor.pub'),
      signedIdentity: { type: 'exactRepository', dockerRepository: TEST_IDENTITY },
      ...extra,
    };
  }
  async function writePolicy(path: string, req: Record<string, unknown>): Promise<void> {
    await writeFile(path, JSON.stringify({ default: [{ type: 'reject' }], transports: { docker: { '': [req] } } }));
  }

  /** Run bin/tiu without blocking this process: the counting proxy runs in it. */
  function tiu(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((resolve, reject) => {
      const child = spawn(BIN, args, {
        env: { PATH: process.env.PATH, HOME: process.env.HOME },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
      child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
      child.on('error', reject);
      child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
    });
  }

  function noImageBlobFetched(what: string): void {
    const fetched = proxy.requests.filter((q) => q.blob !== undefined && imageBlobs.has(q.blob));
    assert.deepEqual(
      fetched.map((q) => `${q.method} ${q.path}`),
      [],
      `${what}: image blobs were requested before the signature was accepted`,
    );
    assert.ok(
      proxy.requests.some((q) => q.path.includes('.sig')),
      `${what}: the signature manifest was read through the proxy`,
    );
  }

  before(async function () {
    requireRoot(this);
    work = await mkdtemp(join(tmpdir(), 'tiu-keyless-'));
    os = await createMicroOS({ files: await baseOs() });
    const tree = join(work, 'v2');
    await writeTree(tree, await v2Files());
    const layout = join(work, 'layout');
    const target = await OciLayoutTarget.open(layout, { create: true });
    await buildBundle({ kind: 'directory', path: tree }, target, 'v2', {
      compression: 'zstd',
      sourceDateEpoch: 1_767_225_600,
      layers: 2,
    });
    for (const name of await readdir(join(layout, 'blobs/sha256'))) imageBlobs.add(`sha256:${name}`);
    reg = await startRegistry();
    proxy = await startCountingProxy(reg.port);
    registry = openRegistryTarget(parseReference(`docker://${reg.host}/tiu/os`) as DockerReference, {
      registriesConf: false,
    });
    await copy(target, 'v2', registry, 'v2', { referrers: true });
    v2 = await registry.resolve('v2');

    ca = makeFulcioCa('fulcio');
    otherCa = makeFulcioCa('other');
    log = makeRekorLog();
    leaf = issueLeaf(ca, {
      issuerV1: TEST_OIDC_ISSUER,
      issuerV2: TEST_OIDC_ISSUER,
      email: TEST_EMAIL,
      notBefore: t0,
      notAfter: new Date(t0.getTime() + 10 * MIN),
    });
    await mkdir(join(os.sysroot, 'etc/tiu'), { recursive: true });
    // The intermediate too: a sigstore bundle (v0.3) carries the leaf only, and every certificate
    // of the policy's CA file is an anchor (the simple signatures' chain annotation needs only the root).
    await writeFile(join(os.sysroot, 'etc/tiu/fulcio.pem'), ca.intermediate.certPem + ca.root.certPem);
    await writeFile(join(os.sysroot, 'etc/tiu/rekor.pub'), log.publicKeyPem);
    await writePolicy(join(os.sysroot, 'etc/tiu/policy.json'), fulcioRequirement());
  });
  after(async () => {
    await registry?.close?.();
    await proxy?.stop();
    await reg?.stop();
    await os?.teardown();
    for (const c of [ca, otherCa]) if (c) await rm(c.dir, { recursive: true, force: true });
    if (work) await rm(work, { recursive: true, force: true });
  });

  /** Each case: a variant tagged `tag` and signed by `sign`, refused with `code` by tiu update and tiu verify. */
  async function refusesEach(cases: [string, (d: Descriptor) => Promise<unknown>, ErrorCode][]): Promise<void> {
    for (const [tag, sign, code] of cases) {
      await variant(tag, sign);
      const before = await state();
      proxy.reset();
      await assert.rejects(
        update(deps, { sysroot: os.sysroot, reference: image(tag), config: noHooks }),
        (e: unknown) => {
          assert.ok(isTiuError(e, code), `${tag}: ${String(e)}`);
          return true;
        },
      );
      noImageBlobFetched(`tiu update ${tag}`);
      const after = await state();
      assert.equal(after.default, before.default, tag);
      assert.deepEqual(
        after.snapshots.map((s) => s.number),
        before.snapshots.map((s) => s.number),
        tag,
      );
      // The CLI says the same in one line.
      proxy.reset();
      const r = await tiu(['verify', '--policy', join(os.sysroot, 'etc/tiu/policy.json'), image(tag)]);
      assert.equal(r.code, 1, `${tag}: ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, new RegExp(`^tiu: error: .*\\[${code}\\]\\n$`), tag);
      noImageBlobFetched(`tiu verify ${tag}`);
    }
  }

  it('refuses each forged or mismatching keyless signature with its own code, before any image blob, nothing changed', async () => {
    const cases: [string, (d: Descriptor) => Promise<unknown>, ErrorCode][] = [
      [
        'wrong-issuer',
        keyless({
          leaf: issueLeaf(ca, { ...leafOpts(), issuerV1: undefined, issuerV2: 'https://accounts.example.org' }),
        }),
        'OIDC_ISSUER_MISMATCH',
      ],
      [
        'wrong-email',
        keyless({ leaf: issueLeaf(ca, { ...leafOpts(), email: 'mallory@example.com' }) }),
        'CERT_SUBJECT_MISMATCH',
      ],
      ['other-ca', keyless({ leaf: issueLeaf(otherCa, leafOpts()), ca: otherCa }), 'CERT_UNTRUSTED'],
      ['tampered-set', keyless({ tamperSet: tamperIntegratedTime }), 'TLOG_INVALID'],
      [
        'set-outside-validity',
        keyless({ integratedTime: new Date(t0.getTime() + 20 * MIN) }),
        'CERT_VALIDITY_MISMATCH',
      ],
      // v2's own valid signature, copied onto another image.
      ['replayed', keyless({ manifestDigest: v2.digest }), 'SIGNATURE_DIGEST_MISMATCH'],
    ];
    await refusesEach(cases);
  });

  it('accepts a keyless-signed image: tiu verify names the identity, tiu update installs it', async () => {
    await variant('keyless', keyless());
    const policy = join(os.sysroot, 'etc/tiu/policy.json');
    const text = await tiu(['verify', '--policy', policy, image('keyless')]);
    assert.equal(text.code, 0, text.stderr);
    assert.match(
      text.stdout,
      new RegExp(
        `by ${TEST_EMAIL} \\(issuer ${TEST_OIDC_ISSUER.replace(/\./g, '\\.')}\\), logged ${logged.toISOString()}`,
      ),
    );
    const json = await tiu(['verify', '--policy', policy, image('keyless'), '--json']);
    const doc = JSON.parse(json.stdout) as { signatures: { certificate: unknown; signedAt: string }[] };
    assert.deepEqual(doc.signatures[0]!.certificate, { issuer: TEST_OIDC_ISSUER, subject: TEST_EMAIL });
    assert.equal(doc.signatures[0]!.signedAt, logged.toISOString());

    const before = await state();
    const r = await update(deps, { sysroot: os.sysroot, reference: image('keyless'), config: noHooks });
    const after = await state();
    assert.notEqual(after.default, before.default);
    assert.ok(r, 'update result');
    assert.match(await readFile(join(os.snapshotPath(after.default!), 'usr/lib/os-release'), 'utf8'), /VERSION_ID="2"/);
  });

  /** Sign `d` with a keyless sigstore bundle only (no .sig), attached as a referrer: cosign 3's default. */
  const keylessBundle =
    (o: Partial<SigstoreBundleOptions> = {}) =>
    (d: Descriptor) =>
      attachSigstoreBundle(registry, d, {
        dockerReference: `${TEST_IDENTITY}:v2`,
        leaf,
        log,
        integratedTime: logged,
        ...o,
      });

  it('refuses each forged or mismatching keyless sigstore bundle (referrer, tag fallback) with its code, before any image blob', async () => {
    await refusesEach([
      [
        'bundle-wrong-issuer',
        keylessBundle({
          leaf: issueLeaf(ca, { ...leafOpts(), issuerV1: undefined, issuerV2: 'https://accounts.example.org' }),
        }),
        'OIDC_ISSUER_MISMATCH',
      ],
      [
        'bundle-wrong-email',
        keylessBundle({ leaf: issueLeaf(ca, { ...leafOpts(), email: 'mallory@example.com' }) }),
        'CERT_SUBJECT_MISMATCH',
      ],
      ['bundle-other-ca', keylessBundle({ leaf: issueLeaf(otherCa, leafOpts()) }), 'CERT_UNTRUSTED'],
      [
        'bundle-tampered-set',
        keylessBundle({
          tamper: (doc) =>
            (doc.verificationMaterial.tlogEntries[0]!.integratedTime = String(logged.getTime() / 1000 + 1)),
        }),
        'TLOG_INVALID',
      ],
      [
        'bundle-outside-validity',
        keylessBundle({ integratedTime: new Date(t0.getTime() + 20 * MIN) }),
        'CERT_VALIDITY_MISMATCH',
      ],
      // v2's own statement and entry, attached to another image.
      ['bundle-replayed', keylessBundle({ digest: v2.digest }), 'SIGNATURE_DIGEST_MISMATCH'],
      ['bundle-rekor-v2', keylessBundle({ rekorV2: true }), 'TLOG_UNSUPPORTED'],
    ]);
  });

  it('accepts an image whose only signature is a keyless sigstore bundle: tiu verify and tiu update', async () => {
    const d = await variant('keyless-bundle', keylessBundle());
    const referrers = await registry.referrers!(d);
    assert.deepEqual(
      referrers.map((r) => r.artifactType),
      ['application/vnd.dev.sigstore.bundle.v0.3+json'],
    );
    const policy = join(os.sysroot, 'etc/tiu/policy.json');
    const json = await tiu(['verify', '--policy', policy, image('keyless-bundle'), '--json']);
    assert.equal(json.code, 0, json.stderr);
    const doc = JSON.parse(json.stdout) as {
      signatures: { kind: string; certificate: unknown; signedAt: string }[];
    };
    assert.deepEqual(
      doc.signatures.map((s) => [s.kind, s.certificate, s.signedAt]),
      [['bundle', { issuer: TEST_OIDC_ISSUER, subject: TEST_EMAIL }, logged.toISOString()]],
    );
    const before = await state();
    await update(deps, { sysroot: os.sysroot, reference: image('keyless-bundle'), config: noHooks });
    const after = await state();
    assert.notEqual(after.default, before.default);
    const deployed = after.snapshots.find((s) => s.number === after.default);
    assert.equal(deployed?.digest, d.digest);
  });

  it('public key + Rekor: a SET naming the key verifies; the same signature with a tampered SET is refused', async () => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const pub = join(work, 'cosign.pub');
    await writeFile(pub, publicKey.export({ format: 'pem', type: 'spki' }));
    const policy = join(work, 'key-rekor.json');
    await writePolicy(policy, {
      type: 'sigstoreSigned',
      keyPath: pub,
      rekorPublicKeyPath: join(os.sysroot, 'etc/tiu/rekor.pub'),
      signedIdentity: { type: 'exactRepository', dockerRepository: TEST_IDENTITY },
    });
    const sign = (tamperSet?: (s: string) => string) => (d: Descriptor) =>
      writeKeyRekorSignature(registry, d, {
        key: privateKey,
        dockerReference: `${TEST_IDENTITY}:v2`,
        log,
        integratedTime: new Date(),
        ...(tamperSet ? { tamperSet } : {}),
      });
    await variant('key-rekor', sign());
    await variant('key-rekor-tampered', sign(tamperIntegratedTime));
    const ok = await tiu(['verify', '--policy', policy, image('key-rekor'), '--json']);
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    assert.ok((JSON.parse(ok.stdout) as { signatures: { signedAt?: string }[] }).signatures[0]!.signedAt);
    proxy.reset();
    const bad = await tiu(['verify', '--policy', policy, image('key-rekor-tampered')]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /\[TLOG_INVALID\]\n$/);
    noImageBlobFetched('key + Rekor, tampered');
  });

  function leafOpts() {
    return {
      issuerV1: TEST_OIDC_ISSUER,
      issuerV2: TEST_OIDC_ISSUER,
      email: TEST_EMAIL,
      notBefore: t0,
      notAfter: new Date(t0.getTime() + 10 * MIN),
    };
  }
});
