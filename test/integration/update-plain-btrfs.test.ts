import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { requireRoot } from '../helpers/env.ts';
import { createMicroOS, snapperConfigFiles, v2Files, writeTree, type MicroOS } from '../helpers/microos.ts';
import { buildImage, installPolicy, signInLayout } from '../helpers/update-deps.ts';
import { run } from '../../src/host/exec.ts';
import { isSubvolume } from '../../src/host/btrfs.ts';
import { parseConfig } from '../../src/deploy/config.ts';
import { openContext, readState, snapshotPath } from '../../src/deploy/state.ts';
import { cleanupInProgress, createInProgress } from '../../src/deploy/snapshot.ts';
import { rollback } from '../../src/deploy/rollback.ts';
import { update } from '../../src/deploy/update/index.ts';
import { productionDeps } from '../../src/deploy/wiring.ts';
import { parseInfoXml, formatInfoXml } from '../../src/deploy/plain-snapshots.ts';

describe('tiu update where snapper is absent (plain btrfs, snapper-compatible info.xml)', function () {
  let os: MicroOS;
  before(async function () {
    requireRoot(this);
    os = await createMicroOS({ snapper: false });
  });
  after(async () => {
    await os?.teardown();
  });

  it('info.xml round-trips, escapes included', () => {
    const i = {
      type: 'single',
      num: 7,
      date: '2026-01-01 00:00:00',
      description: 'a <b> & "c"',
      cleanup: 'number',
      userdata: { 'tiu-image': 'docker://r/x:1', k: 'a&b' },
    };
    assert.deepEqual(parseInfoXml(formatInfoXml(i)), i);
  });

  it('updates, crash-cleans and rolls back with btrfs alone; snapper later reads the same snapshots and userdata', async () => {
    const ctx = await openContext(os.sysroot);
    assert.equal(ctx.backend, 'btrfs');
    const images = join(os.dir, 'images');
    const v2 = await buildImage(images, 'v2', await v2Files());
    await signInLayout(images, 'v2', await installPolicy(os.sysroot));
    const config = parseConfig('default-hooks = false');

    const crashed = await createInProgress(ctx, { from: 1, description: 'crashed', image: 'x' });
    assert.equal(await isSubvolume(join(snapshotPath(os.sysroot, crashed), 'etc')), true);
    const r = await update(productionDeps, { sysroot: os.sysroot, reference: `oci:${images}:v2`, config });
    assert.ok(r.status === 'updated');
    assert.deepEqual(r.cleanup.deleted, [crashed]);
    let s = await readState(ctx);
    assert.equal(s.default, r.snapshot);
    assert.equal(s.booted, 1);
    assert.equal(s.snapshots.find((x) => x.number === r.snapshot)?.digest, v2.manifest.digest);
    assert.match(
      await readFile(join(snapshotPath(os.sysroot, r.snapshot), 'usr/lib/os-release'), 'utf8'),
      /VERSION_ID="2"/,
    );
    assert.deepEqual((await cleanupInProgress(ctx)).deleted, []);

    await rollback({ sysroot: os.sysroot });
    s = await readState(ctx);
    assert.equal(s.default, 1);

    // Install snapper's config: snapper sees tiu's snapshot with its userdata.
    await writeTree(os.sysroot, await snapperConfigFiles());
    const list = JSON.parse(
      (
        await run('snapper', [
          '--no-dbus',
          '--jsonout',
          '--root',
          os.sysroot,
          '-c',
          'root',
          'list',
          '--columns',
          'number,default,userdata',
        ])
      ).stdout,
    ) as {
      root: { number: number; default: boolean; userdata: Record<string, string> | null }[];
    };
    const mine = list.root.find((x) => x.number === r.snapshot);
    assert.equal(mine?.userdata?.['tiu-digest'], v2.manifest.digest);
    assert.equal(list.root.find((x) => x.number === 1)?.default, true);
    assert.equal(existsSync(join(os.sysroot, '.snapshots', String(crashed), 'snapshot')), crashed === r.snapshot);
  });
});
