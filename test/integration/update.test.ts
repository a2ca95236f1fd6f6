import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { lstat, readFile, readlink, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { requireRoot } from '../helpers/env.ts';
import { baseOs, createMicroOS, v2Files, type MicroOS } from '../helpers/microos.ts';
import { buildImage, testDeps, type BuiltImage } from '../helpers/update-deps.ts';
import { OciLayoutTarget } from '../../src/content/oci-layout.ts';
import { isTiuError, type TiuError } from '../../src/errors.ts';
import { parseConfig } from '../../src/deploy/config.ts';
import { openContext, readState, snapshotPath } from '../../src/deploy/state.ts';
import { acquireUpdateLock } from '../../src/deploy/lock.ts';
import { rollback } from '../../src/deploy/rollback.ts';
import { update, type UpdateResult } from '../../src/deploy/update.ts';
import { mountInfo } from '../../src/host/mount.ts';

describe('tiu update on a MicroOS-layout btrfs (loop device, real snapper)', function () {
  let os: MicroOS;
  let images: string;
  const trusted = new Set<string>();
  const deps = () => testDeps(trusted);
  const cacheDir = () => join(os.sysroot, 'var/cache/tiu');
  let v1: BuiltImage;
  let v2: BuiltImage;
  let unsigned: BuiltImage;
  const noHooks = parseConfig('default-hooks = false');
  const state = async () => readState(await openContext(os.sysroot));

  before(async function () {
    requireRoot(this);
    os = await createMicroOS();
    images = join(os.dir, 'images');
    v1 = await buildImage(images, 'v1', await baseOs());
    v2 = await buildImage(images, 'v2', await v2Files(), 'zstd');
    unsigned = await buildImage(images, 'unsigned', [...(await v2Files()), { path: 'usr/share/fake/evil', content: 'x' }]);
    trusted.add(v1.manifest.digest).add(v2.manifest.digest);
  });
  after(async () => {
    await os?.teardown();
  });

  it('v1 -> v2: a new snapshot becomes the default, the booted one is untouched, /etc merged', async () => {
    // The admin changed /etc/hostname in the running system; /etc/motd is untouched.
    await writeFile(join(os.sysroot, 'etc/hostname'), 'my-host\n');
    const r = await update(deps(), { sysroot: os.sysroot, reference: `oci:${images}:v2`, config: noHooks });
    assert.equal(r.status, 'updated');
    assert.ok(r.status === 'updated');
    assert.equal(r.snapshot, 2);
    assert.equal(r.from, 1);
    assert.equal(r.digest, v2.manifest.digest);
    assert.deepEqual(r.etcConflicts, ['/etc/hostname']);
    const s = await state();
    assert.equal(s.default, 2);
    assert.equal(s.booted, 1);
    assert.equal(s.snapshots.find((x) => x.number === 2)?.digest, v2.manifest.digest);
    assert.equal(s.snapshots.find((x) => x.number === 2)?.image, `oci:${images}:v2`);
    assert.equal(s.snapshots.some((x) => x.inProgress), false);
    const n = snapshotPath(os.sysroot, 2);
    assert.match(await readFile(join(n, 'usr/lib/os-release'), 'utf8'), /VERSION_ID="2"/);
    assert.equal(existsSync(join(n, 'usr/share/fake/hello')), false);
    assert.equal(await readFile(join(n, 'usr/share/fake/new-in-v2'), 'utf8'), 'new\n');
    assert.equal(await readlink(join(n, 'etc/os-release')), '../usr/lib/os-release');
    // /etc: untouched file takes the new default; the admin's change is kept with the new default beside it.
    assert.equal(await readFile(join(n, 'etc/motd'), 'utf8'), 'welcome to v2\n');
    assert.equal(await readFile(join(n, 'etc/hostname'), 'utf8'), 'my-host\n');
    assert.equal(await readFile(join(n, 'etc/hostname.tiunew'), 'utf8'), 'microos-v2\n');
    assert.equal(await readFile(join(n, 'etc/new-default.conf'), 'utf8'), 'fresh\n');
    // The running snapshot is unchanged.
    const old = snapshotPath(os.sysroot, 1);
    assert.match(await readFile(join(old, 'usr/lib/os-release'), 'utf8'), /VERSION_ID="1"/);
    assert.equal(await readFile(join(old, 'usr/share/fake/hello'), 'utf8'), 'hello from v1\n');
    // Mount points and .snapshots survive in the new tree.
    for (const d of ['.snapshots', 'var', 'usr/local', 'boot/writable']) assert.ok((await lstat(join(n, d))).isDirectory(), d);
  });

  it('the same image again is AlreadyPresent and creates nothing', async () => {
    const r = await update(deps(), { sysroot: os.sysroot, reference: `oci:${images}:v2`, config: noHooks });
    assert.equal(r.status, 'already-present');
    assert.deepEqual((await state()).snapshots.map((x) => x.number), [1, 2]);
  });

  const corrupt = async (file: string) => {
    const b = await readFile(file);
    b[b.length - 20] = b[b.length - 20]! ^ 0xff;
    await writeFile(file, b);
  };
  const unchanged = async (f: () => Promise<unknown>, code: string, more: (e: TiuError) => boolean = () => true) => {
    const before = await state();
    await assert.rejects(f(), (e: unknown) => isTiuError(e, code) && more(e));
    const after = await state();
    assert.deepEqual(after.snapshots.map((x) => [x.number, x.inProgress]), before.snapshots.map((x) => [x.number, x.inProgress]));
    assert.equal(after.default, before.default);
    assert.equal(existsSync(join(os.sysroot, '.snapshots', String(before.snapshots.at(-1)!.number + 1))), false);
  };

  it('a failing hook aborts: default and snapshot list as they were, no in-progress snapshot', async () => {
    const config = parseConfig('default-hooks = false\n[[hook]]\nname = "fails"\ncommand = ["/bin/sh", "-c", "echo initrd broke >&2; exit 1"]\n');
    await unchanged(() => update(deps(), { sysroot: os.sysroot, reference: `oci:${images}:v1`, config }), 'HOOK_FAILED');
  });

  it('a corrupt layer blob is refused while fetching and leaves nothing behind', async () => {
    const bad = join(os.dir, 'bad');
    const img = await buildImage(bad, 'v1', [...(await baseOs()), { path: 'usr/share/fake/only-in-bad', content: 'bad\n' }]);
    await corrupt(join(bad, 'blobs/sha256', img.layers[0]!.digest.slice(7)));
    await unchanged(
      () => update(testDeps(new Set([img.manifest.digest])), { sysroot: os.sysroot, reference: `oci:${bad}:v1`, config: noHooks }),
      'COPY_FAILED',
      (e) => e.details.causeCode === 'DIGEST_MISMATCH',
    );
  });

  it('a layer that rots in the cache is caught while applying: the snapshot is deleted again', async () => {
    const d = await update(deps(), { sysroot: os.sysroot, reference: `oci:${images}:v1`, config: noHooks, downloadOnly: true });
    assert.equal(d.status, 'downloaded');
    const blob = join(cacheDir(), 'blobs/sha256', v1.layers[0]!.digest.slice(7));
    const good = await readFile(blob);
    await corrupt(blob);
    try {
      await unchanged(() => update(deps(), { sysroot: os.sysroot, reference: `oci:${images}:v1`, config: noHooks, offline: true }), 'DIGEST_MISMATCH');
    } finally {
      await writeFile(blob, good);
    }
  });

  it('an image the policy refuses is refused before a snapshot exists and before it reaches the cache', async () => {
    await unchanged(() => update(deps(), { sysroot: os.sysroot, reference: `oci:${images}:unsigned`, config: noHooks }), 'SIGNATURE_REQUIRED');
    const cache = await OciLayoutTarget.open(cacheDir());
    assert.equal(await cache.exists(unsigned.manifest), false);
    assert.equal(await cache.exists(unsigned.layers[0]!), false);
  });

  it('a concurrent update is refused by the lock', async () => {
    const lock = await acquireUpdateLock(os.sysroot);
    try {
      await unchanged(() => update(deps(), { sysroot: os.sysroot, reference: `oci:${images}:v1`, config: noHooks }), 'UPDATE_IN_PROGRESS');
    } finally {
      await lock.release();
    }
  });

  it('--download-only fills the cache and stops; --offline then updates from the cache alone', async () => {
    const d = await update(deps(), { sysroot: os.sysroot, reference: `oci:${images}:v1`, config: noHooks, downloadOnly: true });
    assert.equal(d.status, 'downloaded');
    assert.deepEqual((await state()).snapshots.map((x) => x.number), [1, 2]);
    // The source is gone (the USB stick was pulled): --offline needs only the cache.
    const moved = images + '.away';
    await rename(images, moved);
    try {
      const r = await update(deps(), { sysroot: os.sysroot, reference: `oci:${images}:v1`, config: noHooks, offline: true });
      assert.equal(r.status, 'updated');
      assert.equal((await state()).default, 3);
      await assert.rejects(update(deps(), { sysroot: os.sysroot, reference: `oci:${images}:unsigned`, config: noHooks, offline: true }), (e: unknown) => isTiuError(e, 'NOT_IN_CACHE'));
    } finally {
      await rename(moved, images);
    }
  });

  it('rollback moves the default back', async () => {
    const r = await rollback({ sysroot: os.sysroot });
    assert.equal(r.from, 3);
    assert.equal(r.to, 1);
    assert.equal((await state()).default, 1);
  });

  it('an update killed with SIGKILL mid-way leaves an in-progress snapshot that the next run deletes before succeeding', async function () {
    const marker = () => readdirSync(join(os.sysroot, '.snapshots')).map((d) => join(os.sysroot, '.snapshots', d, 'snapshot/tiu-hook-started')).find((p) => existsSync(p));
    const child = spawn(
      process.execPath,
      [new URL('../helpers/update-child.ts', import.meta.url).pathname, os.sysroot, `oci:${images}:v2`, v2.manifest.digest],
      { stdio: ['ignore', 'inherit', 'inherit'] },
    );
    let hookPid = 0;
    try {
      for (let i = 0; i < 600 && !marker(); i++) await new Promise((r) => setTimeout(r, 100));
      const m = marker();
      assert.ok(m, 'the hook of the child update never started');
      hookPid = Number((await readFile(m, 'utf8')).trim());
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    } finally {
      if (hookPid) process.kill(hookPid, 'SIGKILL');
      child.kill('SIGKILL');
    }
    const crashed = await state();
    const left = crashed.snapshots.filter((x) => x.inProgress);
    assert.equal(left.length, 1);
    assert.equal(crashed.default, 1);
    const r: UpdateResult = await update(deps(), { sysroot: os.sysroot, reference: `oci:${images}:v2`, config: noHooks });
    assert.equal(r.status, 'updated');
    assert.deepEqual(r.cleanup.deleted, [left[0]!.number]);
    const s = await state();
    assert.equal(s.snapshots.some((x) => x.inProgress), false);
    assert.ok(r.status === 'updated');
    assert.equal(s.default, r.snapshot);
    // snapper hands out the freed number again: the list is the finished snapshots plus the new one.
    assert.deepEqual(s.snapshots.map((x) => x.number), [...crashed.snapshots.filter((x) => !x.inProgress).map((x) => x.number), r.snapshot]);
    assert.equal(existsSync(join(snapshotPath(os.sysroot, r.snapshot), 'tiu-hook-started')), false);
    assert.equal((await mountInfo()).some((m) => m.mountPoint.startsWith(join(os.sysroot, '.snapshots') + '/')), false);
  });
});
