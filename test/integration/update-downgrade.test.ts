/**
 * Downgrade protection and signature freshness (issue 17), with the real CLI on a MicroOS-layout
 * btrfs with snapper, zstd:chunked images in a registry behind a byte-counting proxy.
 *
 *   v2 deployed, then v1 (validly signed, older created time and version): DOWNGRADE (exit 5),
 *     also from --check, and for an image older only by version or only by created time;
 *     nothing written (snapshot list and default unchanged) and no layer or TOC byte fetched.
 *     --allow-downgrade installs v1; tiu rollback still works.
 *   tiu.conf require-signature-expiry: an expired signature is SIGNATURE_EXPIRED (exit 4) with
 *     nothing fetched beyond manifests and signatures; the same image is accepted where tiu.conf
 *     does not ask; an unexpired signature is accepted; a payload with a forged expiry whose
 *     signature does not verify is not believed.
 */
import assert from 'node:assert/strict';
import { type KeyObject } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildBundle } from '../../src/bundle/build.ts';
import { openContext } from '../../src/deploy/state.ts';
import { OciLayoutTarget } from '../../src/content/oci-layout.ts';
import { copy } from '../../src/copy/copy.ts';
import { parseReference, type DockerReference } from '../../src/oci/reference.ts';
import { Annotation, type Descriptor } from '../../src/oci/types.ts';
import { openRegistryTarget } from '../../src/transport/registry/index.ts';
import { EXPIRES_CLAIM } from '../../src/trust/expiry.ts';
import { signBytes } from '../../src/trust/keys.ts';
import { makePayload } from '../../src/trust/payload.ts';
import { signImage } from '../../src/trust/sign.ts';
import { appendSignature } from '../../src/trust/signatures.ts';
import { startCountingProxy, type CountingProxy } from '../helpers/counting-proxy.ts';
import { requireRoot } from '../helpers/env.ts';
import { baseOs, createMicroOS, writeTree, type MicroOS, type OsFile } from '../helpers/microos.ts';
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts';
import { installPolicy, TEST_IDENTITY } from '../helpers/update-deps.ts';
import { tiuJson, type Ran } from '../helpers/tiu-cli.ts';

const tiu = tiuJson;

const errorOf = (r: Ran) => r.json.error as { code: string; message: string } | undefined;

interface Status {
  booted: number;
  default: number;
  snapshots: {
    number: number;
    version: string | null;
    created: string | null;
    ageFrom: string;
    userdata: Record<string, string>;
  }[];
}

type Signing = { expires?: string } | 'none';

describe('downgrade protection and signature freshness (the CLI, a registry, snapper)', function () {
  this.timeout(300_000);
  let os: MicroOS;
  let reg: RunningRegistry;
  let proxy: CountingProxy;
  let work: string;
  let key: KeyObject;
  const conf = () => join(os.sysroot, 'etc/tiu/tiu.conf');
  const layout = () => join(work, 'layout');
  const ref = (tag: string) => `docker://${proxy.host}/tiu/os:${tag}`;
  const layers = new Map<string, Descriptor[]>();
  const roots = new Map<string, Descriptor>();
  let tree = '';

  const files = async (): Promise<OsFile[]> => [
    ...(await baseOs()),
    { path: 'usr/lib/pkg/data', content: Buffer.alloc(64 * 1024, 7) },
  ];

  /** Build the one test tree as `tag` with these age annotations ('' removes one), sign, push. */
  async function build(tag: string, age: { created: string; version: string }, signing: Signing = {}): Promise<void> {
    const target = await OciLayoutTarget.open(layout(), { create: true });
    const r = await buildBundle({ kind: 'directory', path: tree }, target, tag, {
      compression: 'zstd',
      sourceDateEpoch: 1_767_225_600,
      layers: 2,
      annotations: { [Annotation.Created]: age.created, [Annotation.Version]: age.version, 'org.example.tag': tag },
    });
    layers.set(tag, r.manifest.layers);
    roots.set(tag, r.descriptor);
    if (signing !== 'none') await sign(target, tag, signing.expires);
    await push(target, tag);
  }

  async function sign(target: OciLayoutTarget, tag: string, expires?: string): Promise<void> {
    await signImage(target, await target.resolve(tag), key, {
      dockerReference: `${TEST_IDENTITY}:${tag}`,
      ...(expires ? { expires } : {}),
    });
  }

  async function push(target: OciLayoutTarget, tag: string): Promise<void> {
    const dst = openRegistryTarget(parseReference(`docker://${reg.host}/tiu/os`) as DockerReference, {
      registriesConf: false,
    });
    try {
      await copy(target, tag, dst, tag, { referrers: true });
    } finally {
      await dst.close();
    }
  }

  const status = async (): Promise<Status> => {
    const r = await tiu(['status', '--sysroot', os.sysroot]);
    assert.equal(r.code, 0, r.stderr);
    return r.json as unknown as Status;
  };

  /** Layer bytes (TOCs, frames, whole layers) the proxy served for `tag`. */
  const layerBytes = (tag: string) => proxy.blobBytes(layers.get(tag)!.map((l) => l.digest));

  /** The update of `tag` is refused with `code`/`exit` and leaves the system and the cache's layers as they were. */
  async function refused(tag: string, code: string, exit: number, extra: string[] = []): Promise<string> {
    const before = await status();
    proxy.reset();
    const r = await tiu(['update', '--sysroot', os.sysroot, ref(tag), ...extra]);
    assert.equal(r.code, exit, r.stderr);
    assert.equal(errorOf(r)?.code, code, JSON.stringify(r.json));
    assert.equal(layerBytes(tag), 0, 'no layer or TOC byte was fetched');
    const after = await status();
    assert.deepEqual(
      after.snapshots.map((s) => s.number),
      before.snapshots.map((s) => s.number),
    );
    assert.equal(after.default, before.default);
    const c = await tiu(['update', '--check', '--sysroot', os.sysroot, ref(tag), ...extra]);
    assert.equal(c.code, exit, c.stderr);
    assert.equal(errorOf(c)?.code, code);
    assert.equal(layerBytes(tag), 0, '--check fetched no layer byte either');
    return errorOf(r)!.message;
  }

  async function updated(tag: string, extra: string[] = []): Promise<number> {
    proxy.reset();
    const r = await tiu(['update', '--sysroot', os.sysroot, ref(tag), ...extra]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json.status, 'updated');
    assert.ok(layerBytes(tag) > 0, 'an update that goes through fetches layer bytes the proxy counts');
    return r.json.snapshot as number;
  }

  async function setConf(text: string): Promise<void> {
    await writeFile(conf(), `default-hooks = false\n${text}`);
  }

  before(async function () {
    requireRoot(this);
    work = await mkdtemp(join(tmpdir(), 'tiu-downgrade-'));
    os = await createMicroOS({ files: await baseOs() });
    key = await installPolicy(os.sysroot);
    await mkdir(join(os.sysroot, 'etc/tiu'), { recursive: true });
    await setConf('');
    reg = await startRegistry();
    proxy = await startCountingProxy(reg.port);
    tree = join(work, 'tree');
    await writeTree(tree, await files());
    await build('v2', { created: '2026-12-01T00:00:00Z', version: '20261201' });
    await build('v1', { created: '2026-11-01T00:00:00Z', version: '20261101' });
    await build('v1-version-only', { created: '', version: '20261101' });
    await build('v1-created-only', { created: '2026-11-01T00:00:00Z', version: '' });
    await build('v0-no-age', { created: '', version: '' });
  });
  after(async () => {
    await proxy?.stop();
    await reg?.stop();
    await os?.teardown();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('v2 deploys; its commit records the signed version and created time, which tiu status shows', async () => {
    const n = await updated('v2');
    assert.equal(n, 2);
    const s = (await status()).snapshots.find((x) => x.number === 2)!;
    assert.equal(s.version, '20261201');
    assert.equal(s.created, '2026-12-01T00:00:00Z');
    assert.equal(s.ageFrom, 'userdata');
    assert.equal(s.userdata['tiu-version'], '20261201');
    assert.equal(s.userdata['tiu-created'], '2026-12-01T00:00:00Z');
    const booted = (await status()).snapshots.find((x) => x.number === 1)!;
    assert.equal(booted.version, null, 'the installed system carries no tiu image');
  });

  it('v1 (older created time and version, validly signed) is refused with DOWNGRADE: exit 5, nothing written or fetched', async () => {
    const why = await refused('v1', 'DOWNGRADE', 5);
    assert.match(why, /version 20261101, lower than 20261201 of snapshot 2 \(default\)/);
    assert.match(why, /created 2026-11-01T00:00:00Z, before 2026-12-01T00:00:00Z/);
  });

  it('a snapshot committed before tiu recorded its age: the age comes from the manifests kept in the cache', async () => {
    const ctx = await openContext(os.sysroot);
    await ctx.snapper.modify(2, { userdata: { 'tiu-created': '', 'tiu-version': '' } });
    const s = (await status()).snapshots.find((x) => x.number === 2)!;
    assert.equal(s.userdata['tiu-version'], undefined);
    assert.equal(s.ageFrom, 'cache');
    assert.equal(s.version, '20261201');
    assert.match(await refused('v1', 'DOWNGRADE', 5), /version 20261101, lower than 20261201 of snapshot 2/);
  });

  it('older only by version, or only by created time: DOWNGRADE too', async () => {
    assert.match(await refused('v1-version-only', 'DOWNGRADE', 5), /version 20261101, lower/);
    assert.match(await refused('v1-created-only', 'DOWNGRADE', 5), /created 2026-11-01T00:00:00Z, before/);
  });

  it('--offline judges the cached copy the same way: --download-only fetches v1, --offline refuses it', async () => {
    const d = await tiu(['update', '--download-only', '--sysroot', os.sysroot, ref('v1')]);
    assert.equal(d.code, 0, d.stderr);
    assert.equal(d.json.status, 'downloaded');
    const before = await status();
    const r = await tiu(['update', '--offline', '--sysroot', os.sysroot, ref('v1')]);
    assert.equal(r.code, 5, r.stderr);
    assert.equal(errorOf(r)?.code, 'DOWNGRADE');
    const after = await status();
    assert.deepEqual(
      after.snapshots.map((x) => x.number),
      before.snapshots.map((x) => x.number),
    );
    assert.equal(after.default, before.default);
  });

  it('an image without version or created time cannot be compared: --check says so and does not refuse', async () => {
    const r = await tiu(['update', '--check', '--sysroot', os.sysroot, ref('v0-no-age')]);
    assert.equal(r.code, 0, r.stderr);
    const age = r.json.age as { older: string[]; notes: string[] };
    assert.deepEqual(age.older, []);
    assert.ok(
      age.notes.some((n) => /cannot tell .* snapshot 2 \(default\)/.test(n)),
      JSON.stringify(age.notes),
    );
  });

  it('--allow-downgrade installs v1; tiu rollback still works', async () => {
    const check = await tiu(['update', '--check', '--allow-downgrade', '--sysroot', os.sysroot, ref('v1')]);
    assert.equal(check.code, 0, check.stderr);
    assert.equal((check.json.age as { older: string[] }).older.length, 2);
    const n = await updated('v1', ['--allow-downgrade']);
    assert.equal(n, 3);
    let s = await status();
    assert.equal(s.default, 3);
    assert.equal(s.snapshots.find((x) => x.number === 3)?.version, '20261101');
    const r = await tiu(['rollback', '2', '--sysroot', os.sysroot]);
    assert.equal(r.code, 0, r.stderr);
    s = await status();
    assert.equal(s.default, 2, 'rollback to a local snapshot is not a downgrade check');
    const back = await tiu(['rollback', '3', '--sysroot', os.sysroot]);
    assert.equal(back.code, 0, back.stderr);
  });

  describe('freshness (tiu.conf require-signature-expiry)', () => {
    const age = { created: '2027-01-01T00:00:00Z', version: '20270101' };

    before(async () => {
      await build('fresh', age, { expires: '2099-01-01T00:00:00Z' });
      await build('expired', { ...age, version: '20270102' }, { expires: '2020-01-01T00:00:00Z' });
      await build('no-expiry', { ...age, version: '20270103' });
      // A valid signature that expired, next to a payload claiming a far expiry whose signature
      // is over other bytes: only the first may be believed.
      await build('forged', { ...age, version: '20270104' }, { expires: '2020-01-01T00:00:00Z' });
      const target = await OciLayoutTarget.open(layout());
      const root = roots.get('forged')!;
      const forged = makePayload({
        dockerReference: `${TEST_IDENTITY}:forged`,
        manifestDigest: root.digest,
        optional: { [EXPIRES_CLAIM]: '2099-01-01T00:00:00Z' },
      });
      const signedOther = signBytes(key, Buffer.concat([forged, Buffer.from(' ')])).toString('base64');
      const added = await appendSignature(target, root.digest, forged, signedOther);
      assert.equal(added.count, 2);
      await push(target, 'forged');
    });
    after(async () => {
      await setConf('');
    });

    it('an expired signature: SIGNATURE_EXPIRED (exit 4) naming the expiry, nothing fetched beyond manifests and signatures', async () => {
      await setConf('require-signature-expiry = true\n');
      const why = await refused('expired', 'SIGNATURE_EXPIRED', 4);
      assert.match(why, /expired at 2020-01-01T00:00:00Z/);
    });

    it('no expiry at all where one is required: SIGNATURE_EXPIRED', async () => {
      assert.match(await refused('no-expiry', 'SIGNATURE_EXPIRED', 4), /carries an expiry/);
    });

    it('a forged expiry in a payload whose signature does not verify is not believed', async () => {
      assert.match(await refused('forged', 'SIGNATURE_EXPIRED', 4), /expired at 2020-01-01T00:00:00Z/);
    });

    it('where tiu.conf does not ask, the expired signature is accepted', async () => {
      await setConf('');
      const r = await tiu(['update', '--check', '--sysroot', os.sysroot, ref('expired')]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.json.status, 'available');
    });

    it('an unexpired signature is accepted where tiu.conf asks, and the update goes through', async () => {
      await setConf('require-signature-expiry = true\n');
      const n = await updated('fresh');
      assert.equal(n, 4);
      assert.equal((await status()).snapshots.find((x) => x.number === 4)?.version, '20270101');
    });
  });
});
