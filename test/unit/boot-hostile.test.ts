/** Hostile image data on the systemd-boot path (src/deploy/boot): names, command lines, sizes. */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, statfs, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isTiuError } from '../../src/errors.ts';
import {
  kernelRel,
  KVER_RE,
  parseEntryName,
  planReconcile,
  sanitizeCmdline,
  selectedEntry,
  type EspEntry,
} from '../../src/deploy/boot/entries.ts';
import { SystemdBoot } from '../../src/deploy/boot/systemd-boot.ts';
import type { Context } from '../../src/deploy/state.ts';

const HASH = 'ab'.repeat(32);

describe('deploy/boot with hostile image data', () => {
  it('kernel versions: no `/`, `..`, control characters, over 128 bytes, or a trailing dot (vfat drops it)', () => {
    for (const ok of ['6.1.0-tiu1', '6.8.0-1-default', '5.10.0+deb11~x', 'a'.repeat(128)])
      assert.ok(KVER_RE.test(ok), ok);
    for (const bad of [
      '6.1.0.',
      '6.1.0-x.',
      '..',
      '.x',
      'a/b',
      '../../EFI',
      'a\nb',
      'a\u0000',
      'a b',
      'a'.repeat(129),
      '',
    ]) {
      assert.ok(!KVER_RE.test(bad), JSON.stringify(bad));
      assert.throws(
        () => kernelRel(bad, 'linux', HASH),
        (e: unknown) => isTiuError(e, 'KERNEL_VERSION_INVALID'),
        JSON.stringify(bad),
      );
    }
    assert.equal(kernelRel('6.1.0', 'linux', HASH), `tiu/6.1.0/linux-${HASH.slice(0, 32)}`);
  });

  it("an image's root=/rootflags= in any spelling the kernel or systemd's initrd reads is dropped", () => {
    // The kernel skips a leading quote ("root=x" sets root); systemd removes all quotes; '-' = '_'.
    const line =
      'quiet "root=/dev/sdb1" ro"ot"=/dev/sdc "rootflags=subvol=@/.snapshots/1/snapshot" initrd=\\evil BOOT-IMAGE=x mount.usr=/dev/sdd mount.usrflags=ro keep=1 rootwait a="root=x"';
    assert.deepEqual(sanitizeCmdline(line, 't'), ['quiet', 'keep=1', 'rootwait', 'a="root=x"']);
  });

  it('reconcile compares ESP paths as vfat does: a kernel named in another case is in use', () => {
    const e = (name: string, files: string[]): EspEntry => ({ ...parseEntryName(name)!, name, files });
    const plan = planReconcile({
      snapshots: [
        { number: 1, inProgress: false },
        { number: 2, inProgress: false },
      ],
      default: 2,
      // Snapshot 2's kernel version differs from 1's only in case: one directory on vfat, listed as created.
      entries: [e('tiu-1.conf', ['tiu/6.1-A/linux-1']), e('tiu-2+3.conf', ['tiu/6.1-a/linux-2'])],
      files: ['tiu/6.1-A/linux-1', 'tiu/6.1-A/linux-2', 'tiu/6.1-A/linux-3'],
      loaderDefault: 'tiu-*',
      tries: 3,
    });
    assert.deepEqual(plan.unusedFiles, ['tiu/6.1-A/linux-3']);
  });

  it('LoaderEntryDefault (bootctl set-default) wins over loader.conf when it matches an entry', () => {
    const names = ['tiu-1.conf', 'tiu-2+3.conf'];
    assert.equal(selectedEntry(names, 'tiu-*', 'tiu-1.conf'), 'tiu-1.conf');
    assert.equal(selectedEntry(names, 'tiu-*', 'TIU-1.CONF'), 'tiu-1.conf', 'case-insensitive');
    assert.equal(selectedEntry(names, 'tiu-*', 'gone.conf'), 'tiu-2+3.conf', 'no match: loader.conf decides');
    assert.equal(selectedEntry(names, 'tiu-*', 'tiu-*'), 'tiu-2+3.conf');
  });

  describe('sizes are bounded before image files are read', () => {
    let dir: string;
    let esp: string;
    let snap: string;
    const ctx = () => ({ sysroot: dir }) as unknown as Context;
    beforeEach(async () => {
      dir = await mkdtemp(join(tmpdir(), 'tiu-boot-hostile-'));
      esp = join(dir, 'esp');
      snap = join(dir, '.snapshots/1/snapshot');
      await mkdir(join(snap, 'usr/lib/modules/6.1.0'), { recursive: true });
      await mkdir(join(snap, 'etc/kernel'), { recursive: true });
      await mkdir(join(esp, 'loader'), { recursive: true });
    });
    afterEach(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    it('a kernel larger than the whole ESP is ESP_FULL before it is hashed', async () => {
      const s = await statfs(esp);
      await writeFile(join(snap, 'usr/lib/modules/6.1.0/vmlinuz'), '');
      await truncate(join(snap, 'usr/lib/modules/6.1.0/vmlinuz'), s.blocks * s.bsize + 1); // sparse
      await assert.rejects(new SystemdBoot(esp).prepare(ctx(), 1, {}), (e: unknown) => isTiuError(e, 'ESP_FULL'));
    });

    it('an over-long /etc/kernel/cmdline is CMDLINE_INVALID without being loaded whole', async () => {
      await writeFile(join(snap, 'usr/lib/modules/6.1.0/vmlinuz'), 'kernel');
      await writeFile(join(snap, 'etc/kernel/cmdline'), '');
      await truncate(join(snap, 'etc/kernel/cmdline'), 4 * 1024 ** 3); // sparse 4 GiB: readFile would throw ERR_FS_FILE_TOO_LARGE
      await assert.rejects(new SystemdBoot(esp).prepare(ctx(), 1, {}), (e: unknown) =>
        isTiuError(e, 'CMDLINE_INVALID'),
      );
    });
  });
});
