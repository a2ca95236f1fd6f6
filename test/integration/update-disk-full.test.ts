import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, rm, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { requireRoot } from '../helpers/env.ts';
import { baseOs, createMicroOS, writeTree, type MicroOS } from '../helpers/microos.ts';
import { buildBundle } from '../../src/bundle/build.ts';
import { OciLayoutTarget } from '../../src/content/oci-layout.ts';
import { buildImage, installPolicy, signInLayout } from '../helpers/update-deps.ts';
import { isTiuError } from '../../src/errors.ts';
import { run } from '../../src/host/exec.ts';
import { parseConfig } from '../../src/deploy/config.ts';
import { openContext, readState } from '../../src/deploy/state.ts';
import { update } from '../../src/deploy/update/index.ts';
import { productionDeps } from '../../src/deploy/wiring.ts';

const MiB = 1 << 20;

/**
 * Take all but about `leave` bytes of the filesystem with preallocated files (`fill`,
 * `fill.1`, …). btrfs's free-space figure is an estimate (metadata and chunk allocation move
 * it), so one fallocate of "free − leave" can itself hit ENOSPC: ask for less and top up until
 * what is left is within 4 MiB of `leave`.
 */
async function fillUntil(fill: string, leave: number): Promise<void> {
  const dir = join(fill, '..');
  for (let part = 0, tries = 0; tries < 40; tries++) {
    await run('btrfs', ['filesystem', 'sync', dir]);
    const st = await statfs(dir);
    const free = st.bavail * st.bsize;
    if (free <= leave + 4 * MiB) return;
    const want = free - leave - Math.min(tries, 8) * 2 * MiB;
    try {
      await run('fallocate', ['-l', String(want), part === 0 ? fill : `${fill}.${part}`]);
      part++;
    } catch (e) {
      if (!/No space left/.test(e instanceof Error ? e.message : String(e))) throw e;
      await rm(part === 0 ? fill : `${fill}.${part}`, { force: true });
    }
  }
  throw new Error(`could not fill ${dir} down to ${leave} bytes free`);
}

describe('tiu update on a full disk', function () {
  let os: MicroOS;
  before(async function () {
    requireRoot(this);
    os = await createMicroOS({ sizeMiB: 300 });
  });
  after(async () => {
    await os?.teardown();
  });

  it('fails with DISK_FULL, deletes its snapshot, and the next update succeeds once there is room', async () => {
    const images = join(os.dir, 'images');
    // 16 MiB that do not compress (the apply writes zero blocks as holes).
    await buildImage(images, 'big', [
      ...(await baseOs()),
      { path: 'usr/share/fake/huge', content: randomBytes(16 << 20) },
    ]);
    const key = await installPolicy(os.sysroot);
    await signInLayout(images, 'big', key);
    const config = parseConfig('default-hooks = false');
    await update(productionDeps, { sysroot: os.sysroot, reference: `oci:${images}:big`, config, downloadOnly: true });

    const fill = join(os.sysroot, 'var/fill');
    await fillUntil(fill, 8 << 20);
    const ctx = await openContext(os.sysroot);
    const before = await readState(ctx);
    await assert.rejects(
      update(productionDeps, { sysroot: os.sysroot, reference: `oci:${images}:big`, config, offline: true }),
      (e: unknown) => isTiuError(e, 'DISK_FULL') && /no space left/.test(e.message),
    );
    const after = await readState(ctx);
    assert.deepEqual(
      after.snapshots.map((s) => s.number),
      before.snapshots.map((s) => s.number),
    );
    assert.equal(after.default, before.default);
    assert.equal(existsSync(join(os.sysroot, '.snapshots/2')), false);

    for (const f of await readdir(join(os.sysroot, 'var')))
      if (f === 'fill' || f.startsWith('fill.')) await rm(join(os.sysroot, 'var', f));
    await run('btrfs', ['filesystem', 'sync', os.sysroot]);
    const r = await update(productionDeps, {
      sysroot: os.sysroot,
      reference: `oci:${images}:big`,
      config,
      offline: true,
    });
    assert.equal(r.status, 'updated');
  });

  it('a cache that fills up while fetching (file delta, whole layers): DISK_FULL naming the cache, no snapshot, nothing left behind', async () => {
    const tree = join(os.dir, 'tree-delta');
    await writeTree(tree, [...(await baseOs()), { path: 'usr/share/fake/huge-delta', content: randomBytes(16 << 20) }]);
    const layout = join(os.dir, 'bundles');
    await buildBundle({ kind: 'directory', path: tree }, await OciLayoutTarget.open(layout, { create: true }), 'd1', {
      sourceDateEpoch: 1767225600,
    });
    const key = await installPolicy(os.sysroot);
    await signInLayout(layout, 'd1', key);
    const config = parseConfig('default-hooks = false');
    const ctx = await openContext(os.sysroot);
    const before = await readState(ctx);
    const fill = join(os.sysroot, 'var/fill');
    await fillUntil(fill, 8 << 20);
    try {
      for (const opts of [{}, { downloadOnly: true }]) {
        await assert.rejects(
          update(productionDeps, { sysroot: os.sysroot, reference: `oci:${layout}:d1`, config, ...opts }),
          (e: unknown) => {
            assert.ok(isTiuError(e, 'DISK_FULL'), String(e));
            assert.match(e.message, /\/var\/cache\/tiu while fetching .*no snapshot was made/);
            // the disk, not the image, is named as what went wrong
            assert.doesNotMatch(e.message, /does not match|does not decompress/);
            return true;
          },
        );
        const after = await readState(ctx);
        assert.deepEqual(
          after.snapshots.map((s) => s.number),
          before.snapshots.map((s) => s.number),
        );
        assert.equal(after.default, before.default);
        // the delta's content store is gone again
        assert.deepEqual(
          existsSync(join(os.sysroot, 'var/cache/tiu/delta'))
            ? await readdir(join(os.sysroot, 'var/cache/tiu/delta'))
            : [],
          [],
        );
      }
    } finally {
      for (const f of await readdir(join(os.sysroot, 'var')))
        if (f === 'fill' || f.startsWith('fill.')) await rm(join(os.sysroot, 'var', f));
      await run('btrfs', ['filesystem', 'sync', os.sysroot]);
    }
    const r = await update(productionDeps, { sysroot: os.sysroot, reference: `oci:${layout}:d1`, config });
    assert.equal(r.status, 'updated');
  });
});
