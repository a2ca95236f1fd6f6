/**
 * podman build -> tiu build containers-storage:... -> registry -> tiu update on the MicroOS
 * btrfs harness. podman runs with its own store (vfs driver, a temporary root and run root), so
 * the reference carries a storage specifier and nothing touches the host's podman images.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { rmSync } from 'node:fs';
import { atExit } from '../helpers/at-exit.ts';
import { requireRoot } from '../helpers/env.ts';
import { baseOs, createMicroOS, v2Files, writeTree, type MicroOS } from '../helpers/microos.ts';
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts';
import { installPolicy, MOUNT_POINT_DIRS, signInLayout } from '../helpers/update-deps.ts';

const TIU = new URL('../../bin/tiu', import.meta.url).pathname;

describe('containers-storage: podman build -> tiu build -> registry -> tiu update', function () {
  this.timeout(300_000);
  let os: MicroOS;
  let reg: RunningRegistry;
  let work = '';
  let forgetWork = (): void => undefined;
  let storage = '';
  const podman = (args: string[]) =>
    execa('podman', ['--root', join(work, 'root'), '--runroot', join(work, 'run'), '--storage-driver', 'vfs', ...args]);

  before(async function () {
    requireRoot(this);
    work = await mkdtemp(join(tmpdir(), 'tiu-cstore-'));
    const dir = work;
    forgetWork = atExit(() => rmSync(dir, { recursive: true, force: true }));
    storage = `[vfs@${join(work, 'root')}+${join(work, 'run')}]`;
    const ctx = join(work, 'ctx');
    await writeTree(join(ctx, 'rootfs'), [
      ...(await v2Files()),
      ...MOUNT_POINT_DIRS.map((d) => ({ path: `${d}/.keep`, content: '' })),
    ]);
    await writeFile(join(ctx, 'Containerfile'), 'FROM scratch\nCOPY rootfs/ /\nLABEL org.example.built-by=podman\n');
    await podman(['build', '--quiet', '--tag', 'localhost/tiu-os:v2', ctx]);
    os = await createMicroOS({ files: await baseOs() });
    reg = await startRegistry();
  });
  after(async () => {
    // Each step whatever the one before did: a failing teardown must not keep the others from running.
    const steps = await Promise.allSettled([
      os?.teardown(),
      reg?.stop(),
      (async () => {
        if (!work) return;
        await podman(['system', 'reset', '--force']).catch(() => undefined);
        await rm(work, { recursive: true, force: true });
        forgetWork();
      })(),
    ]);
    for (const s of steps) if (s.status === 'rejected') throw s.reason;
  });

  it('builds a bundle from podman storage, pushes it and updates the device to it', async () => {
    const layout = join(work, 'layout');
    const built = await execa(
      TIU,
      ['build', `containers-storage:${storage}localhost/tiu-os:v2`, '--tag', `oci:${layout}:v2`],
      {
        reject: false,
      },
    );
    assert.equal(built.exitCode, 0, built.stderr);
    // podman's temporary layout is gone.
    assert.deepEqual(
      (await readdir(tmpdir())).filter((n) => n.startsWith('tiu-storage-')),
      [],
    );
    const key = await installPolicy(os.sysroot);
    await signInLayout(layout, 'v2', key);
    const image = `docker://${reg.host}/tiu/os:v2`;
    const pushed = await execa(TIU, ['copy', '--referrers', `oci:${layout}:v2`, image], { reject: false });
    assert.equal(pushed.exitCode, 0, pushed.stderr);
    await writeFile(join(os.sysroot, 'etc/tiu/tiu.conf'), 'default-hooks = false\n');
    const r = await execa(TIU, ['update', image, '--sysroot', os.sysroot, '--json'], { reject: false });
    assert.equal(r.exitCode, 0, r.stdout + r.stderr);
    const st = JSON.parse((await execa(TIU, ['status', '--sysroot', os.sysroot, '--json'])).stdout) as {
      default: number;
    };
    assert.equal(st.default, 2);
    // v2's new file is there, the file v2 removed is not, and podman's label is on the source.
    assert.equal(await readFile(join(os.snapshotPath(2), 'usr/share/fake/new-in-v2'), 'utf8'), 'new\n');
    await assert.rejects(readFile(join(os.snapshotPath(2), 'usr/share/fake/hello')), { code: 'ENOENT' });
    // inspect reads the same storage: podman's label is on the source image.
    const inspected = await execa(TIU, ['inspect', `containers-storage:${storage}localhost/tiu-os:v2`, '--json']);
    assert.match(inspected.stdout, /"org\.example\.built-by": "podman"/);
  });

  it("an unknown image is CONTAINERS_STORAGE_FAILED with podman's reason; a destination is refused", async () => {
    const missing = await execa(TIU, ['inspect', `containers-storage:${storage}localhost/nope:v9`, '--json'], {
      reject: false,
    });
    assert.equal(missing.exitCode, 1);
    const err = (JSON.parse(missing.stdout) as { error: { code: string; message: string } }).error;
    assert.equal(err.code, 'CONTAINERS_STORAGE_FAILED');
    assert.match(err.message, /nope/);
    const dest = await execa(
      TIU,
      ['copy', `containers-storage:${storage}localhost/tiu-os:v2`, 'containers-storage:x', '--json'],
      {
        reject: false,
      },
    );
    assert.equal((JSON.parse(dest.stdout) as { error: { code: string } }).error.code, 'CONTAINERS_STORAGE_UNSUPPORTED');
  });
});
