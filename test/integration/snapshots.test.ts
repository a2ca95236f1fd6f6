import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, readdir, mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { requireRoot } from '../helpers/env.ts';
import { createMicroOS, type MicroOS } from '../helpers/microos.ts';
import { isTiuError } from '../../src/errors.ts';
import { run } from '../../src/host/exec.ts';
import { isSubvolume } from '../../src/host/btrfs.ts';
import { getReadOnly } from '../helpers/btrfs.ts';
import { mountInfo } from '../../src/host/mount.ts';
import { openContext, readState, snapshotPath, type Context } from '../../src/deploy/state.ts';
import {
  cleanupInProgress,
  commitSnapshot,
  createInProgress,
  deleteSnapshot,
  setDefaultSnapshot,
} from '../../src/deploy/snapshot.ts';
import { rollback } from '../../src/deploy/rollback.ts';
import { readCreating, readDeleting, recordCreating, recordDeleting } from '../../src/deploy/snapshot-intent.ts';
import { acquireUpdateLock } from '../../src/deploy/lock.ts';
import { runHooks } from '../../src/deploy/hooks.ts';

describe('deploy: snapshots on a MicroOS-layout btrfs (loop device, real snapper)', function () {
  let os: MicroOS;
  let ctx: Context;
  before(async function () {
    requireRoot(this);
    os = await createMicroOS();
    ctx = await openContext(os.sysroot);
  });
  after(async () => {
    await os?.teardown();
  });

  it('reads the fresh layout: snapshot 1 booted and default, nothing staged', async () => {
    const s = await readState(ctx);
    assert.deepEqual(
      s.snapshots.map((x) => x.number),
      [1],
    );
    assert.equal(s.booted, 1);
    assert.equal(s.default, 1);
    assert.equal(s.staged, undefined);
    assert.equal(s.rollback, undefined);
  });

  it("snapper 0.10.4 as DESIGN.md §5 says: --from leaves the nested /etc empty, and there is no 'modify --default'", async () => {
    const sn = ['--no-dbus', '--root', os.sysroot, '-c', 'root'];
    const n = Number(
      (await run('snapper', [...sn, 'create', '--from', '1', '--read-write', '--print-number'])).stdout.trim(),
    );
    try {
      const etc = join(snapshotPath(os.sysroot, n), 'etc');
      assert.deepEqual(await readdir(etc), []);
      assert.equal(await isSubvolume(etc), false);
      const r = await run('snapper', [...sn, 'modify', '--default', String(n)], {
        okExitCodes: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 64],
      });
      assert.notEqual(r.exitCode, 0);
    } finally {
      await deleteSnapshot(ctx, n);
    }
    assert.deepEqual(
      (await readState(ctx)).snapshots.map((x) => x.number),
      [1],
    );
  });

  it('creates an in-progress snapshot with /etc carried as a subvolume, commits it as the default', async () => {
    const n = await createInProgress(ctx, { from: 1, description: 'test', image: 'oci:/x:1' });
    assert.equal(n, 2);
    const root = snapshotPath(os.sysroot, n);
    assert.equal(await isSubvolume(join(root, 'etc')), true);
    assert.equal(await readFile(join(root, 'etc/hostname'), 'utf8'), 'microos\n');
    let s = await readState(ctx);
    assert.equal(s.snapshots.find((x) => x.number === n)?.inProgress, true);
    assert.equal(s.default, 1);

    await commitSnapshot(ctx, n, { image: 'oci:/x:1', digest: 'sha256:' + 'a'.repeat(64), etcConflicts: 2 });
    s = await readState(ctx);
    const snap = s.snapshots.find((x) => x.number === n)!;
    assert.equal(snap.inProgress, false);
    assert.equal(snap.image, 'oci:/x:1');
    assert.equal(snap.digest, 'sha256:' + 'a'.repeat(64));
    assert.equal(snap.etcConflicts, 2);
    assert.equal(s.default, 2);
    assert.equal(s.booted, 1);
    assert.equal(s.staged, 2);
    assert.equal(s.rollback, 1);
    assert.equal(await getReadOnly(root), true);
    // The running system is untouched: what is mounted at the sysroot is still snapshot 1.
    assert.equal(await getReadOnly(snapshotPath(os.sysroot, 1)), true);
  });

  it('refuses to delete the default or the booted snapshot', async () => {
    await assert.rejects(deleteSnapshot(ctx, 2), (e: unknown) => isTiuError(e, 'SNAPSHOT_IN_USE'));
    await assert.rejects(deleteSnapshot(ctx, 1), (e: unknown) => isTiuError(e, 'SNAPSHOT_IN_USE'));
  });

  it('rollback moves the default back to the running snapshot, and forward again by number', async () => {
    const r = await rollback({ sysroot: os.sysroot });
    assert.deepEqual(r, { from: 2, to: 1, booted: 1 });
    assert.equal((await readState(ctx)).default, 1);
    await rollback({ sysroot: os.sysroot, snapshot: 2 });
    assert.equal((await readState(ctx)).default, 2);
    await assert.rejects(rollback({ sysroot: os.sysroot, snapshot: 42 }), (e: unknown) =>
      isTiuError(e, 'SNAPSHOT_NOT_FOUND'),
    );
  });

  it('the next run deletes a snapshot left in progress (even read-only, with its /etc subvolume and mounts inside)', async () => {
    const n = await createInProgress(ctx, { from: 1, description: 'crashed', image: 'oci:/x:2' });
    const root = snapshotPath(os.sysroot, n);
    await mkdir(join(root, 'proc'), { recursive: true });
    await run('mount', ['-t', 'proc', 'proc', join(root, 'proc')]);
    await run('btrfs', ['property', 'set', '-ts', root, 'ro', 'true']);
    const r = await cleanupInProgress(ctx);
    assert.deepEqual(r, { deleted: [n], orphans: [], finished: [] });
    assert.equal(existsSync(join(os.sysroot, '.snapshots', String(n))), false);
    assert.equal(
      (await mountInfo()).some((m) => m.mountPoint.startsWith(root)),
      false,
    );
    const s = await readState(ctx);
    assert.deepEqual(
      s.snapshots.map((x) => x.number),
      [1, 2],
    );
    assert.equal(s.default, 2);
  });

  it("a snapshot directory snapper never finished (no info.xml) is removed as an orphan when tiu's create record claims it", async () => {
    // What a kill inside createInProgress's `snapper create` leaves: the record, then the directory.
    await recordCreating(os.sysroot);
    const dir = join(os.sysroot, '.snapshots', '40');
    await mkdir(dir);
    await run('btrfs', ['-q', 'subvolume', 'snapshot', snapshotPath(os.sysroot, 1), join(dir, 'snapshot')]);
    const r = await cleanupInProgress(ctx);
    assert.deepEqual(r.orphans, [40]);
    assert.equal(existsSync(dir), false);
    assert.equal(await readCreating(os.sysroot), undefined, 'the record is consumed');
  });

  it("the directory a cut-off delete left (info.xml removed, the rest not) is removed when tiu's delete record names it", async () => {
    const n = await createInProgress(ctx, { from: 1, description: 'killed delete', image: 'oci:/x:5' });
    const dir = join(os.sysroot, '.snapshots', String(n));
    // snapper's delete killed after removing info.xml: the subvolume (and tiu's /etc in it) stay.
    await recordDeleting(os.sysroot, n);
    await rm(join(dir, 'info.xml'));
    const r = await cleanupInProgress(ctx);
    assert.deepEqual(r.orphans, [n]);
    assert.equal(existsSync(dir), false);
    assert.equal(await readDeleting(os.sysroot), undefined, 'the record is consumed');
  });

  it('an unfinished snapshot directory tiu has no create record for (snapper creating one right now) is left alone', async () => {
    const dir = join(os.sysroot, '.snapshots', '41');
    await mkdir(dir);
    try {
      await run('btrfs', ['-q', 'subvolume', 'snapshot', '-r', snapshotPath(os.sysroot, 1), join(dir, 'snapshot')]);
      const r = await cleanupInProgress(ctx);
      assert.deepEqual(r.orphans, []);
      assert.ok(existsSync(join(dir, 'snapshot')));
      // A record from before it (its number is not above the record's) does not claim it either.
      await recordCreating(os.sysroot);
      assert.deepEqual((await cleanupInProgress(ctx)).orphans, []);
      assert.ok(existsSync(join(dir, 'snapshot')));
    } finally {
      await run('btrfs', ['-q', 'subvolume', 'delete', join(dir, 'snapshot')]).catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("snapper's delete leaves the directory when a killed info.xml rewrite left its temporary file: deleteSnapshot removes it", async () => {
    const n = await createInProgress(ctx, { from: 1, description: 'killed modify', image: 'oci:/x:4' });
    const dir = join(os.sysroot, '.snapshots', String(n));
    await writeFile(join(dir, 'info.xml.tmp-Ab12Cd'), '<?xml version="1.0"?>\n');
    const r = await cleanupInProgress(ctx);
    assert.deepEqual(r.deleted, [n]);
    assert.equal(existsSync(dir), false);
  });

  it('a crash after the default moved only clears the mark', async () => {
    const n = await createInProgress(ctx, { from: 1, description: 'late crash', image: 'oci:/x:3' });
    await assert.rejects(rollback({ sysroot: os.sysroot, snapshot: n }), (e: unknown) =>
      isTiuError(e, 'SNAPSHOT_UNFINISHED'),
    );
    // The crash came right after the commit point: the default moved, the mark is still there.
    await setDefaultSnapshot(ctx, n);
    const r = await cleanupInProgress(ctx);
    assert.deepEqual(r, { deleted: [], orphans: [], finished: [n] });
    const s = await readState(ctx);
    assert.equal(s.default, n);
    assert.equal(s.snapshots.find((x) => x.number === n)?.inProgress, false);
    await setDefaultSnapshot(ctx, 2);
    await deleteSnapshot(ctx, n);
  });

  it('lock: a second update is refused while one holds it, and a SIGKILLed holder leaves no stale lock', async function () {
    const lock = await acquireUpdateLock(os.sysroot);
    await assert.rejects(
      acquireUpdateLock(os.sysroot),
      (e: unknown) => isTiuError(e, 'UPDATE_IN_PROGRESS') && e.details.holder === String(process.pid),
    );
    await lock.release();
    const script = `import { acquireUpdateLock } from ${JSON.stringify(new URL('../../src/deploy/lock.ts', import.meta.url).href)};
await acquireUpdateLock(${JSON.stringify(os.sysroot)}); process.stdout.write('locked\\n'); setInterval(() => {}, 1000);`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    try {
      await new Promise<void>((resolve, reject) => {
        child.stdout.on('data', (d: Buffer) => d.toString().includes('locked') && resolve());
        child.on('exit', (c) => reject(new Error(`lock holder exited with ${c}`)));
      });
      await assert.rejects(acquireUpdateLock(os.sysroot), (e: unknown) => isTiuError(e, 'UPDATE_IN_PROGRESS'));
    } finally {
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    }
    const again = await acquireUpdateLock(os.sysroot);
    await again.release();
  });

  it('hooks run in a chroot of the snapshot with /proc bound, a failing one throws HOOK_FAILED, and nothing stays mounted', async () => {
    const n = await createInProgress(ctx, { from: 1, description: 'hooks', image: 'oci:/x:4' });
    const root = snapshotPath(os.sysroot, n);
    try {
      const ran = await runHooks(
        root,
        [{ name: 'probe', argv: ['/bin/sh', '-c', 'test -r /proc/self/status && echo ok > /hook-ran'] }],
        { sysroot: os.sysroot },
      );
      assert.equal(ran.length, 1);
      assert.equal(await readFile(join(root, 'hook-ran'), 'utf8'), 'ok\n');
      await assert.rejects(
        runHooks(root, [{ name: 'broken', argv: ['/bin/sh', '-c', 'echo nope >&2; exit 3'] }], { sysroot: os.sysroot }),
        (e: unknown) => isTiuError(e, 'HOOK_FAILED') && e.message.includes('nope'),
      );
      assert.equal(
        (await mountInfo()).some((m) => m.mountPoint.startsWith(root + '/')),
        false,
      );
    } finally {
      await rm(join(root, 'hook-ran'), { force: true });
      await deleteSnapshot(ctx, n);
    }
  });
});
