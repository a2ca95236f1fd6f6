import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes, type KeyObject } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { requireRoot } from '../helpers/env.ts';
import { baseOs, createMicroOS, v2Files, type MicroOS } from '../helpers/microos.ts';
import { buildImage, installPolicy, signInLayout } from '../helpers/update-deps.ts';
import { acquireUpdateLock } from '../../src/deploy/lock.ts';
import { mountInfo } from '../../src/host/mount.ts';
import { ETC_ASIDE } from '../../src/deploy/update/merge.ts';
import { TIU, tiuJson, type Ran } from '../helpers/tiu-cli.ts';

const tiu = tiuJson;

const errorCode = (r: Ran) => (r.json.error as { code?: string } | undefined)?.code;

describe('tiu update / status / rollback (the CLI on a loop-device MicroOS)', function () {
  let os: MicroOS;
  let images: string;
  let key: KeyObject;
  const status = async () =>
    (await tiu(['status', '--sysroot', os.sysroot])).json as {
      booted: number;
      default: number;
      snapshots: { number: number; inProgress: boolean; digest?: string; pendingEtcConflicts: string[] }[];
    };

  before(async function () {
    requireRoot(this);
    os = await createMicroOS();
    images = join(os.dir, 'images');
    await buildImage(images, 'v1', await baseOs());
    await buildImage(images, 'v2', await v2Files(), 'zstd');
    key = await installPolicy(os.sysroot);
    await signInLayout(images, 'v1', key);
    await signInLayout(images, 'v2', key);
    await mkdir(join(os.sysroot, 'etc/tiu'), { recursive: true });
    await writeFile(join(os.sysroot, 'etc/tiu/tiu.conf'), `image = "oci:${images}:v2"\ndefault-hooks = false\n`);
  });
  after(async () => {
    await os?.teardown();
  });

  it('updates to the configured image; status shows it as default with the booted one unchanged', async () => {
    await writeFile(join(os.sysroot, 'etc/hostname'), 'mine\n');
    const r = await tiu(['update', '--sysroot', os.sysroot]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json.status, 'updated');
    assert.equal(r.json.snapshot, 2);
    const s = await status();
    assert.equal(s.default, 2);
    assert.equal(s.booted, 1);
    assert.deepEqual(s.snapshots.find((x) => x.number === 2)?.pendingEtcConflicts, ['/etc/hostname']);
  });

  it('the same image again: already present, exit 0, nothing new', async () => {
    const r = await tiu(['update', '--sysroot', os.sysroot]);
    assert.equal(r.code, 0);
    assert.equal(r.json.status, 'already-present');
    assert.deepEqual(
      (await status()).snapshots.map((x) => x.number),
      [1, 2],
    );
  });

  it('a concurrent update is refused with UPDATE_IN_PROGRESS', async () => {
    const lock = await acquireUpdateLock(os.sysroot);
    try {
      const r = await tiu(['update', `oci:${images}:v1`, '--sysroot', os.sysroot]);
      assert.equal(r.code, 1);
      assert.equal(errorCode(r), 'UPDATE_IN_PROGRESS');
    } finally {
      await lock.release();
    }
  });

  it('rollback makes the running snapshot the default again; rollback N moves it forward', async () => {
    let r = await tiu(['rollback', '--sysroot', os.sysroot]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.json, { from: 2, to: 1, booted: 1 });
    assert.equal((await status()).default, 1);
    r = await tiu(['rollback', '2', '--sysroot', os.sysroot]);
    assert.equal((await status()).default, 2);
    r = await tiu(['rollback', '9', '--sysroot', os.sysroot]);
    assert.equal(errorCode(r), 'SNAPSHOT_NOT_FOUND');
    r = await tiu(['rollback', 'x', '--sysroot', os.sysroot]);
    assert.equal(r.code, 2);
  });

  it('tiu killed with SIGKILL in the middle leaves an unfinished snapshot; the next run deletes it and succeeds', async () => {
    const conf = join(os.sysroot, 'etc/tiu/tiu.conf');
    await writeFile(
      conf,
      `image = "oci:${images}:v1"\ndefault-hooks = false\n[[hook]]\nname = "hang"\ncommand = ["/bin/sh", "-c", "echo $$ > /tiu-hook-started; exec sleep 600"]\n`,
    );
    const marker = () =>
      readdirSync(join(os.sysroot, '.snapshots'))
        .map((d) => join(os.sysroot, '.snapshots', d, 'snapshot/tiu-hook-started'))
        .find((p) => existsSync(p));
    const child = spawn(TIU, ['update', '--sysroot', os.sysroot], { stdio: 'ignore' });
    let hookPid = 0;
    try {
      for (let i = 0; i < 600 && !marker(); i++) await new Promise((r) => setTimeout(r, 100));
      const m = marker();
      assert.ok(m, 'the hook never started');
      hookPid = Number((await readFile(m, 'utf8')).trim());
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    } finally {
      if (hookPid) process.kill(hookPid, 'SIGKILL');
      child.kill('SIGKILL');
    }
    const crashed = await status();
    const left = crashed.snapshots.filter((x) => x.inProgress).map((x) => x.number);
    assert.equal(left.length, 1);
    assert.equal(crashed.default, 2);

    await writeFile(conf, `image = "oci:${images}:v1"\ndefault-hooks = false\n`);
    const r = await tiu(['update', '--sysroot', os.sysroot]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual((r.json.cleanup as { deleted: number[] }).deleted, left);
    const s = await status();
    assert.equal(
      s.snapshots.some((x) => x.inProgress),
      false,
    );
    assert.equal(s.default, r.json.snapshot);
    assert.deepEqual(
      s.snapshots.map((x) => x.number),
      [1, 2, r.json.snapshot],
    );
    assert.equal(
      (await mountInfo()).some((m) => m.mountPoint.startsWith(join(os.sysroot, '.snapshots') + '/')),
      false,
    );
  });

  it('tiu killed with SIGKILL while it writes the image into the snapshot: the next run deletes it and succeeds', async () => {
    // 32 MiB that do not compress, so the apply takes a while; downloaded first so the kill lands in the apply.
    const heavy = Array.from({ length: 8 }, (_, i) => ({
      path: `usr/share/fake/heavy-${i}`,
      content: randomBytes(4 << 20),
    }));
    await buildImage(images, 'heavy', [...(await v2Files()), ...heavy]);
    await signInLayout(images, 'heavy', key);
    await writeFile(join(os.sysroot, 'etc/tiu/tiu.conf'), `image = "oci:${images}:heavy"\ndefault-hooks = false\n`);
    const d = await tiu(['update', '--download-only', '--sysroot', os.sysroot]);
    assert.equal(d.json.status, 'downloaded', d.stderr);
    const before = await status();
    const snaps = join(os.sysroot, '.snapshots');
    const applying = () => readdirSync(snaps).find((n) => existsSync(join(snaps, n, 'snapshot', ETC_ASIDE)));
    const child = spawn(TIU, ['update', '--offline', '--sysroot', os.sysroot], { stdio: 'ignore' });
    const exited = new Promise((r) => child.once('exit', r));
    try {
      for (let i = 0; i < 12000 && !applying() && child.exitCode === null; i++)
        await new Promise((r) => setTimeout(r, 5));
      assert.ok(applying(), 'the update never reached the apply');
      child.kill('SIGKILL');
      await exited;
    } finally {
      child.kill('SIGKILL');
    }
    const crashed = await status();
    assert.equal(crashed.default, before.default);
    const left = crashed.snapshots.filter((x) => x.inProgress).map((x) => x.number);
    assert.equal(left.length, 1);

    const r = await tiu(['update', '--offline', '--sysroot', os.sysroot]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual((r.json.cleanup as { deleted: number[] }).deleted, left);
    const s = await status();
    assert.equal(s.default, r.json.snapshot);
    assert.equal(
      s.snapshots.some((x) => x.inProgress),
      false,
    );
    assert.equal(
      (await readFile(join(os.sysroot, '.snapshots', String(r.json.snapshot), 'snapshot/usr/share/fake/heavy-7')))
        .length,
      4 << 20,
    );
  });

  it('usage errors: --reboot with --sysroot, --offline with --download-only', async () => {
    let r = await tiu(['update', '--sysroot', os.sysroot, '--reboot']);
    assert.equal(r.code, 2);
    r = await tiu(['update', '--sysroot', os.sysroot, '--offline', '--download-only']);
    assert.equal(r.code, 2);
  });
});
