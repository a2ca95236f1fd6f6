/**
 * A dead network in the middle of an update, on both download paths (the file delta by
 * Range, and whole layers into the cache): the update fails naming the registry, the
 * running system and its default snapshot are as they were, no snapshot is left behind, and
 * once the network is back the same command succeeds.
 */
import assert from 'node:assert/strict';
import { randomBytes, type KeyObject } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildBundle } from '../../src/bundle/build.ts';
import { OciLayoutTarget } from '../../src/content/oci-layout.ts';
import { copy } from '../../src/copy/copy.ts';
import { parseConfig } from '../../src/deploy/config.ts';
import { rollback } from '../../src/deploy/rollback.ts';
import { openContext, readState } from '../../src/deploy/state.ts';
import { update } from '../../src/deploy/update/index.ts';
import type { UpdateDeps } from '../../src/deploy/update/deps.ts';
import { productionDeps } from '../../src/deploy/wiring.ts';
import { isTiuError, type TiuError } from '../../src/errors.ts';
import { parseReference, referenceName, type DockerReference } from '../../src/oci/reference.ts';
import { openRegistryTarget } from '../../src/transport/registry/index.ts';
import { startCountingProxy, type CountingProxy } from '../helpers/counting-proxy.ts';
import { requireRoot } from '../helpers/env.ts';
import { baseOs, createMicroOS, v2Files, writeTree, type MicroOS } from '../helpers/microos.ts';
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts';
import { installPolicy, signInLayout } from '../helpers/update-deps.ts';

describe('tiu update when the network dies mid-download (registry behind a proxy, MicroOS on btrfs)', function () {
  this.timeout(300_000);
  let os: MicroOS;
  let work = '';
  let reg: RunningRegistry;
  let proxy: CountingProxy;
  let key: KeyObject;
  const noHooks = parseConfig('default-hooks = false');
  const ref = `docker://127.0.0.1:0/tiu/os:v2`;
  const image = () => ref.replace('127.0.0.1:0', proxy.host);
  const state = async () => readState(await openContext(os.sysroot));
  /** The real dependencies, docker:// without the host's registries.conf, and quick retries. */
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

  before(async function () {
    requireRoot(this);
    work = await mkdtemp(join(tmpdir(), 'tiu-net-'));
    os = await createMicroOS({ files: await baseOs() });
    const tree = join(work, 'v2');
    // Some weight, so that a whole layer is several reads and the failure lands inside one.
    const files = [
      ...(await v2Files()),
      ...Array.from({ length: 40 }, (_, i) => ({ path: `usr/lib/big/f${i}`, content: `${i}`.repeat(20_000 + i) })),
    ];
    await writeTree(tree, files);
    const layout = join(work, 'layout');
    const target = await OciLayoutTarget.open(layout, { create: true });
    await buildBundle({ kind: 'directory', path: tree }, target, 'v2', {
      compression: 'zstd',
      sourceDateEpoch: 1_767_225_600,
      layers: 2,
    });
    key = await installPolicy(os.sysroot);
    await signInLayout(layout, 'v2', key);
    reg = await startRegistry();
    proxy = await startCountingProxy(reg.port);
    const dst = openRegistryTarget(parseReference(`docker://${reg.host}/tiu/os`) as DockerReference, {
      registriesConf: false,
    });
    try {
      await copy(target, 'v2', dst, 'v2', { referrers: true });
    } finally {
      await dst.close();
    }
  });
  after(async () => {
    proxy?.up();
    await proxy?.stop();
    await reg?.stop();
    await os?.teardown();
    if (work) await rm(work, { recursive: true, force: true });
  });

  /** The progress lines count the download up to all of it, and no more. */
  function progressEndsAtAll(lines: string[]): void {
    const shown = lines.filter((l) => l.startsWith('downloading: '));
    assert.ok(shown.length > 0, lines.join('\n'));
    assert.match(shown.at(-1)!, /^downloading: .+ of .+ \(100%\)$/);
    const [, done, total] = /^downloading: (.+) of (.+) \(/.exec(shown.at(-1)!)!;
    assert.equal(done, total, 'all of it and no more');
  }

  /** Run an update that loses the network when `trigger` says so; assert nothing changed. */
  async function failsUnchanged(transfer: 'auto' | 'whole-layer', trigger: (line: string) => void): Promise<TiuError> {
    const before = await state();
    let err: unknown;
    try {
      await update(deps, { sysroot: os.sysroot, reference: image(), config: noHooks, transfer, onProgress: trigger });
    } catch (e) {
      err = e;
    } finally {
      proxy.up();
    }
    assert.ok(err !== undefined, 'the update succeeded without a network');
    // REGISTRY_UNREACHABLE itself, or the copy into the cache failing because of it.
    const e = err as TiuError;
    const cause = isTiuError(err, 'COPY_FAILED') ? e.cause : err;
    assert.ok(
      isTiuError(cause, 'REGISTRY_UNREACHABLE'),
      `unexpected error: ${err instanceof Error ? err.message : JSON.stringify(err)}`,
    );
    // The message names the registry (directly, or through the failed blob's cause).
    const chain: string[] = [];
    for (let x: unknown = e; x instanceof Error; x = x.cause) chain.push(x.message);
    assert.match(chain.join(' | '), new RegExp(proxy.host.replace(/\./g, '\\.')));
    const after = await state();
    assert.equal(after.default, before.default);
    assert.equal(after.booted, before.booted);
    assert.deepEqual(
      after.snapshots.map((s) => s.number),
      before.snapshots.map((s) => s.number),
    );
    assert.ok(after.snapshots.every((s) => !s.inProgress));
    return e;
  }

  it('during the file delta: refused with the registry named, nothing changed; with the network back it succeeds', async () => {
    await failsUnchanged('auto', (line) => {
      // The plan is made (TOCs fetched); the network goes as the files start to come.
      if (line.startsWith('transfer: file delta')) proxy.down();
    });
    const lines: string[] = [];
    const r = await update(deps, {
      sysroot: os.sysroot,
      reference: image(),
      config: noHooks,
      progressEveryMs: 0,
      onProgress: (l) => lines.push(l),
    });
    assert.equal(r.status, 'updated');
    assert.ok(r.status === 'updated' && r.transfer?.path === 'delta');
    progressEndsAtAll(lines);
    assert.equal((await state()).default, r.snapshot);
  });

  it('inside a whole layer: refused with the registry named, nothing changed; with the network back it succeeds', async () => {
    await rollback({ sysroot: os.sysroot, snapshot: 1 });
    const before = (await state()).default;
    assert.equal(before, 1);
    const e = await failsUnchanged('whole-layer', (line) => {
      if (line.startsWith('fetching ')) proxy.down(30_000);
    });
    assert.ok(
      proxy.requests.some((q) => q.method === 'GET' && q.blob && q.bytes > 0),
      `no blob bytes went out before the failure (${e.message})`,
    );
    const lines: string[] = [];
    const r = await update(deps, {
      sysroot: os.sysroot,
      reference: image(),
      config: noHooks,
      transfer: 'whole-layer',
      progressEveryMs: 0,
      onProgress: (l) => lines.push(l),
    });
    assert.equal(r.status, 'updated');
    progressEndsAtAll(lines);
    assert.equal((await state()).default, r.snapshot);
  });

  it('a delta the network cut off goes on where it stopped: the next run verifies what came and downloads the rest', async () => {
    // Six files of 3 MiB that do not compress, one request each; four run at once, so the cut
    // after 16 MiB lands when the first four are in and the last two are not.
    const tree = join(work, 'v3');
    await writeTree(tree, [
      ...(await v2Files()),
      ...Array.from({ length: 6 }, (_, i) => ({ path: `usr/lib/huge/h${i}`, content: randomBytes(3 << 20) })),
    ]);
    const layout = join(work, 'layout-v3');
    await buildBundle({ kind: 'directory', path: tree }, await OciLayoutTarget.open(layout, { create: true }), 'v3', {
      compression: 'zstd',
      sourceDateEpoch: 1_767_225_600,
      layers: 2,
    });
    await signInLayout(layout, 'v3', key);
    const dst = openRegistryTarget(parseReference(`docker://${reg.host}/tiu/os`) as DockerReference, {
      registriesConf: false,
    });
    try {
      await copy(await OciLayoutTarget.open(layout), 'v3', dst, 'v3', { referrers: true });
    } finally {
      await dst.close();
    }
    const v3 = image().replace(/:v2$/, ':v3');
    const before = await state();
    proxy.reset();
    await assert.rejects(
      update(deps, {
        sysroot: os.sysroot,
        reference: v3,
        config: noHooks,
        onProgress: (l) => l.startsWith('transfer: file delta') && proxy.down(16 << 20),
      }),
      (e: unknown) => isTiuError(e, 'REGISTRY_UNREACHABLE') || isTiuError((e as Error).cause, 'REGISTRY_UNREACHABLE'),
    );
    proxy.up();
    assert.deepEqual(
      (await state()).snapshots.map((x) => x.number),
      before.snapshots.map((x) => x.number),
    );
    const stores = join(os.sysroot, 'var/cache/tiu/delta');
    const kept = existsSync(stores)
      ? (await readdir(stores, { recursive: true })).filter((f) => /\/[0-9a-f]{64}$/.test(f))
      : [];
    const keptHuge = (await Promise.all(kept.map(async (f) => (await stat(join(stores, f))).size))).filter(
      (n) => n === 3 << 20,
    ).length;
    assert.ok(keptHuge >= 1 && keptHuge < 6, `big files kept from the cut download: ${keptHuge} of 6`);

    const lines: string[] = [];
    proxy.reset();
    const r = await update(deps, {
      sysroot: os.sysroot,
      reference: v3,
      config: noHooks,
      onProgress: (l) => lines.push(l),
    });
    const second = proxy.reset().down;
    assert.ok(r.status === 'updated' && r.transfer?.path === 'delta');
    assert.ok(
      lines.some((l) => new RegExp(`^resuming: ${kept.length} file\\(s\\)`).test(l)),
      lines.join('\n'),
    );
    // Only the files that had not come: about 3 MiB each, plus the tables of contents.
    const left = 6 - keptHuge;
    assert.ok(
      second < (left * 3 + 1) * (1 << 20) && second > left * 3 * (1 << 20) - (1 << 20),
      `second run downloaded ${second} bytes for ${left} file(s)`,
    );
    assert.ok(r.transfer.downloaded! < r.transfer.downloadBytes);
    assert.equal(existsSync(stores) ? (await readdir(stores)).length : 0, 0, 'the store is gone after the update');
  });
});
