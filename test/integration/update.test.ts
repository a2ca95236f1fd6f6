import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { access, lstat, readFile, readlink, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { requireRoot } from '../helpers/env.ts';
import { baseOs, createMicroOS, v2Files, writeTree, type MicroOS } from '../helpers/microos.ts';
import { buildBundle } from '../../src/bundle/build.ts';
import { buildImage, installPolicy, signInLayout, type BuiltImage } from '../helpers/update-deps.ts';
import { productionDeps } from '../../src/deploy/wiring.ts';
import { OciLayoutTarget } from '../../src/content/oci-layout.ts';
import { isTiuError, type ErrorCode, type TiuError } from '../../src/errors.ts';
import { parseConfig } from '../../src/deploy/config.ts';
import { openContext, readState, snapshotPath } from '../../src/deploy/state.ts';
import { acquireUpdateLock } from '../../src/deploy/lock.ts';
import { rollback } from '../../src/deploy/rollback.ts';
import { cacheTag, ETC_ASIDE, update } from '../../src/deploy/update.ts';
import { isSubvolume } from '../../src/host/btrfs.ts';
import { dataUsed } from '../helpers/btrfs.ts';
import { fetchManifest } from '../../src/content/graph.ts';
import { contentIndexFile, fetchLayerTocs } from '../../src/deploy/delta/index.ts';

describe('tiu update on a MicroOS-layout btrfs (loop device, real snapper)', function () {
  let os: MicroOS;
  let images: string;
  let signingKey: KeyObject;
  const deps = () => productionDeps;
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
    unsigned = await buildImage(images, 'unsigned', [
      ...(await v2Files()),
      { path: 'usr/share/fake/evil', content: 'x' },
    ]);
    const key = (signingKey = await installPolicy(os.sysroot));
    await signInLayout(images, 'v1', key);
    await signInLayout(images, 'v2', key);
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
    assert.deepEqual(
      r.etcConflicts.map((c) => c.path),
      ['hostname'],
    );
    assert.deepEqual(r.addedUsers, ['chrony']);
    const s = await state();
    assert.equal(s.default, 2);
    assert.equal(s.booted, 1);
    assert.equal(s.snapshots.find((x) => x.number === 2)?.digest, v2.manifest.digest);
    assert.equal(s.snapshots.find((x) => x.number === 2)?.image, `oci:${images}:v2`);
    assert.equal(
      s.snapshots.some((x) => x.inProgress),
      false,
    );
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
    // Users: the image's new system account is added, the admin's accounts and passwords stay.
    const passwd = await readFile(join(n, 'etc/passwd'), 'utf8');
    assert.match(passwd, /^chrony:x:498:498:/m);
    assert.match(passwd, /^admin:x:1000:1000:/m);
    assert.match(await readFile(join(n, 'etc/shadow'), 'utf8'), /^admin:\$6\$salt\$adminhash:/m);
    // /etc is still a nested subvolume, and the admin's copy that waited aside is gone.
    assert.equal(await isSubvolume(join(n, 'etc')), true);
    assert.equal(existsSync(join(n, ETC_ASIDE)), false);
    // The running snapshot is unchanged.
    const old = snapshotPath(os.sysroot, 1);
    assert.match(await readFile(join(old, 'usr/lib/os-release'), 'utf8'), /VERSION_ID="1"/);
    assert.equal(await readFile(join(old, 'usr/share/fake/hello'), 'utf8'), 'hello from v1\n');
    // Mount points and .snapshots survive in the new tree.
    for (const d of ['.snapshots', 'var', 'usr/local', 'boot/writable'])
      assert.ok((await lstat(join(n, d))).isDirectory(), d);
  });

  it('the same image again is AlreadyPresent and creates nothing', async () => {
    const r = await update(deps(), { sysroot: os.sysroot, reference: `oci:${images}:v2`, config: noHooks });
    assert.equal(r.status, 'already-present');
    assert.deepEqual(
      (await state()).snapshots.map((x) => x.number),
      [1, 2],
    );
  });

  const corrupt = async (file: string) => {
    const b = await readFile(file);
    b[b.length - 20] = b[b.length - 20]! ^ 0xff;
    await writeFile(file, b);
  };
  const unchanged = async (f: () => Promise<unknown>, code: ErrorCode, more: (e: TiuError) => boolean = () => true) => {
    const before = await state();
    await assert.rejects(f(), (e: unknown) => isTiuError(e, code) && more(e));
    const after = await state();
    assert.deepEqual(
      after.snapshots.map((x) => [x.number, x.inProgress]),
      before.snapshots.map((x) => [x.number, x.inProgress]),
    );
    assert.equal(after.default, before.default);
    assert.equal(existsSync(join(os.sysroot, '.snapshots', String(before.snapshots.at(-1)!.number + 1))), false);
  };

  it('a failing hook aborts: default and snapshot list as they were, no in-progress snapshot', async () => {
    const config = parseConfig(
      'default-hooks = false\n[[hook]]\nname = "fails"\ncommand = ["/bin/sh", "-c", "echo initrd broke >&2; exit 1"]\n',
    );
    await unchanged(
      () => update(deps(), { sysroot: os.sysroot, reference: `oci:${images}:v1`, config }),
      'HOOK_FAILED',
    );
  });

  it('a corrupt layer blob is refused while fetching and leaves nothing behind', async () => {
    const bad = join(os.dir, 'bad');
    const img = await buildImage(bad, 'v1', [
      ...(await baseOs()),
      { path: 'usr/share/fake/only-in-bad', content: 'bad\n' },
    ]);
    await signInLayout(bad, 'v1', signingKey);
    await corrupt(join(bad, 'blobs/sha256', img.layers[0]!.digest.slice(7)));
    await unchanged(
      () => update(deps(), { sysroot: os.sysroot, reference: `oci:${bad}:v1`, config: noHooks }),
      'DIGEST_MISMATCH',
      (e) => e.details.causeCode === 'DIGEST_MISMATCH',
    );
  });

  it('a layer that rots in the cache is caught before a snapshot is made', async () => {
    const d = await update(deps(), {
      sysroot: os.sysroot,
      reference: `oci:${images}:v1`,
      config: noHooks,
      downloadOnly: true,
    });
    assert.equal(d.status, 'downloaded');
    const blob = join(cacheDir(), 'blobs/sha256', v1.layers[0]!.digest.slice(7));
    await corrupt(blob);
    await unchanged(
      () => update(deps(), { sysroot: os.sysroot, reference: `oci:${images}:v1`, config: noHooks, offline: true }),
      'CACHE_DAMAGED',
      (e) => {
        assert.match(e.message, /is damaged .*removed from the cache, so the next update downloads it again/);
        assert.ok(isTiuError(e.cause, 'DIGEST_MISMATCH'));
        return true;
      },
    );
    // Dropped from the cache: offline there is nothing left to use, online it comes again.
    await unchanged(
      () => update(deps(), { sysroot: os.sysroot, reference: `oci:${images}:v1`, config: noHooks, offline: true }),
      'CACHE_BLOB_MISSING',
    );
    const again = await update(deps(), {
      sysroot: os.sysroot,
      reference: `oci:${images}:v1`,
      config: noHooks,
      downloadOnly: true,
    });
    assert.equal(again.status, 'downloaded');
    assert.deepEqual(await readFile(blob), await readFile(join(images, 'blobs/sha256', v1.layers[0]!.digest.slice(7))));
  });

  it('an image the policy refuses is refused before a snapshot exists and before it reaches the cache', async () => {
    await unchanged(
      () => update(deps(), { sysroot: os.sysroot, reference: `oci:${images}:unsigned`, config: noHooks }),
      'SIGNATURE_MISSING',
    );
    const cache = await OciLayoutTarget.open(cacheDir());
    assert.equal(await cache.exists(unsigned.manifest), false);
    assert.equal(await cache.exists(unsigned.layers[0]!), false);
  });

  it('an image signed with another key is refused the same way', async () => {
    const other = join(os.dir, 'other');
    const img = await buildImage(other, 'v9', [...(await v2Files()), { path: 'usr/share/fake/v9', content: '9\n' }]);
    await signInLayout(other, 'v9', generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey);
    await unchanged(
      () => update(deps(), { sysroot: os.sysroot, reference: `oci:${other}:v9`, config: noHooks }),
      'SIGNATURE_INVALID',
    );
    assert.equal(await (await OciLayoutTarget.open(cacheDir())).exists(img.manifest), false);
  });

  it('a concurrent update is refused by the lock', async () => {
    const lock = await acquireUpdateLock(os.sysroot);
    try {
      await unchanged(
        () => update(deps(), { sysroot: os.sysroot, reference: `oci:${images}:v1`, config: noHooks }),
        'UPDATE_IN_PROGRESS',
      );
    } finally {
      await lock.release();
    }
  });

  it('--download-only fills the cache and stops; --offline then updates from the cache alone', async () => {
    const d = await update(deps(), {
      sysroot: os.sysroot,
      reference: `oci:${images}:v1`,
      config: noHooks,
      downloadOnly: true,
    });
    assert.equal(d.status, 'downloaded');
    assert.deepEqual(
      (await state()).snapshots.map((x) => x.number),
      [1, 2],
    );
    // The source is gone (the USB stick was pulled): --offline needs only the cache.
    // A later image downloaded ahead of time stays in the cache when v1 is applied.
    assert.equal(
      (
        await update(deps(), {
          sysroot: os.sysroot,
          reference: `oci:${images}:v2`,
          config: noHooks,
          downloadOnly: true,
        })
      ).status,
      'downloaded',
    );
    const moved = images + '.away';
    await rename(images, moved);
    try {
      const r = await update(deps(), {
        sysroot: os.sysroot,
        reference: `oci:${images}:v1`,
        config: noHooks,
        offline: true,
      });
      assert.equal(r.status, 'updated');
      assert.equal((await state()).default, 3);
      // v1 is in snapshot 3 now: the cache let go of its tag and of the layers only it used.
      const cache = await OciLayoutTarget.open(cacheDir());
      // (v2's cosign signature stays with it.)
      assert.deepEqual(
        await cache.tags(),
        [`sha256-${v2.manifest.digest.slice(7)}.sig`, cacheTag(`oci:${images}:v2`)].sort(),
      );
      const v2Digests = new Set(v2.layers.map((l) => l.digest));
      const onlyV1 = v1.layers.filter((l) => !v2Digests.has(l.digest));
      assert.ok(onlyV1.length > 0);
      for (const l of onlyV1)
        assert.equal(existsSync(cache.blobPath(l.digest)), false, `${l.digest} left in the cache`);
      for (const l of v2.layers) assert.equal(await cache.exists(l), true);
      await assert.rejects(
        update(deps(), { sysroot: os.sysroot, reference: `oci:${images}:unsigned`, config: noHooks, offline: true }),
        (e: unknown) => isTiuError(e, 'CACHE_BLOB_MISSING'),
      );
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

  it('deploying the image the running snapshot already holds writes no file data (btrfs filesystem df)', async () => {
    const before = await dataUsed(os.sysroot);
    const r = await update(deps(), { sysroot: os.sysroot, reference: `oci:${images}:v1`, config: noHooks });
    assert.ok(r.status === 'updated');
    assert.equal(r.from, 1);
    // Only the image's /etc/hostname, over the admin's changed copy (which the merge then keeps).
    assert.equal(r.apply.written.bytes, 'microos\n'.length);
    assert.equal(await readFile(join(snapshotPath(os.sysroot, r.snapshot), 'etc/hostname'), 'utf8'), 'my-host\n');
    const grown = (await dataUsed(os.sysroot)) - before;
    assert.ok(grown < 1024 * 1024, `data grew by ${grown} bytes`);
  });

  it('tiu bundles (tiu build: zstd:chunked layers, /usr/lib/tiu/etc, /var in the factory): deploy; a rebuild is AlreadyPresent; one changed file costs about its size', async () => {
    const tree = join(os.dir, 'tree');
    const files = [
      ...(await v2Files()).filter((f) => !f.path.startsWith('usr/lib/tiu/')),
      { path: 'var/lib/fake/state', content: 'factory\n' },
      { path: 'usr/share/fake/big', content: 'b'.repeat(512 * 1024) },
    ];
    await writeTree(tree, files);
    const layout = join(os.dir, 'bundles');
    const build = async (tag: string) => {
      const dest = await OciLayoutTarget.open(layout, { create: true });
      const b = await buildBundle({ kind: 'directory', path: tree }, dest, tag, {
        sourceDateEpoch: 1767225600,
        layers: 4,
      });
      await signInLayout(layout, tag, signingKey);
      return b;
    };
    const b1 = await build('b1');
    assert.ok(b1.manifest.layers.length > 1);
    const r1 = await update(deps(), { sysroot: os.sysroot, reference: `oci:${layout}:b1`, config: noHooks });
    assert.ok(r1.status === 'updated');
    const n1 = snapshotPath(os.sysroot, r1.snapshot);
    assert.equal(await readFile(join(n1, 'usr/share/factory/var/lib/fake/state'), 'utf8'), 'factory\n');
    assert.equal(await readFile(join(n1, 'usr/lib/tiu/etc/hostname'), 'utf8'), 'microos-v2\n');
    assert.equal(await readFile(join(n1, 'etc/hostname'), 'utf8'), 'my-host\n');
    assert.equal((await readFile(join(n1, 'usr/share/fake/big'))).length, 512 * 1024);

    const again = await build('b1-again');
    assert.equal(again.descriptor.digest, b1.descriptor.digest);
    const r2 = await update(deps(), { sysroot: os.sysroot, reference: `oci:${layout}:b1-again`, config: noHooks });
    assert.equal(r2.status, 'already-present');

    await writeFile(join(tree, 'usr/share/fake/new-in-v2'), 'changed in v3\n');
    await build('b3');
    const before = await dataUsed(os.sysroot);
    const r3 = await update(deps(), { sysroot: os.sysroot, reference: `oci:${layout}:b3`, config: noHooks });
    assert.ok(r3.status === 'updated');
    // From the booted snapshot 1 (v1), v3 differs by the v2 changes, the factory /var and the big file.
    assert.ok(r3.apply.written.bytes < 600 * 1024, `wrote ${r3.apply.written.bytes} bytes`);
    assert.equal(
      await readFile(join(snapshotPath(os.sysroot, r3.snapshot), 'usr/share/fake/new-in-v2'), 'utf8'),
      'changed in v3\n',
    );
    const grown = (await dataUsed(os.sysroot)) - before;
    assert.ok(grown < 2 * 1024 * 1024, `data grew by ${grown} bytes`);

    // Whole layers (--download-only, then --offline): applied from the cached layers the way a
    // delta is. Only the changed file is read, by its frame; a rotten frame is caught before a
    // snapshot exists; the new snapshot's content index is saved for the next update.
    await writeFile(join(tree, 'usr/share/fake/new-in-v2'), 'changed in v4\n');
    await build('b4');
    const d4 = await update(deps(), {
      sysroot: os.sysroot,
      reference: `oci:${layout}:b4`,
      config: noHooks,
      downloadOnly: true,
    });
    assert.equal(d4.status, 'downloaded');
    const cache = await OciLayoutTarget.open(cacheDir());
    const manifest = (await fetchManifest(cache, await cache.resolve(cacheTag(`oci:${layout}:b4`)))).parsed;
    assert.ok(manifest.kind === 'manifest');
    const tocs = await fetchLayerTocs(cache, manifest.manifest);
    assert.ok(tocs.ok);
    const changed = tocs.layers.flat().find((e) => e.path === 'usr/share/fake/new-in-v2')!;
    const blob = join(cacheDir(), 'blobs/sha256', manifest.manifest.layers[changed.source!.layer]!.digest.slice(7));
    const good = await readFile(blob);
    const bad = Buffer.from(good);
    bad[changed.source!.endOffset! - 5]! ^= 0xff;
    await writeFile(blob, bad);
    const snapshotsBefore = (await state()).snapshots.map((x) => x.number);
    await assert.rejects(
      update(deps(), { sysroot: os.sysroot, reference: `oci:${layout}:b4`, config: noHooks, offline: true }),
      (e: TiuError) => {
        assert.equal(e.code, 'CACHE_DAMAGED');
        assert.ok(isTiuError(e.cause, 'DELTA_FILE_MISMATCH'));
        assert.match(e.message, /new-in-v2/);
        return true;
      },
    );
    assert.deepEqual(
      (await state()).snapshots.map((x) => x.number),
      snapshotsBefore,
    );
    assert.equal(existsSync(blob), false, 'the damaged image left the cache');
    assert.equal(
      (
        await update(deps(), {
          sysroot: os.sysroot,
          reference: `oci:${layout}:b4`,
          config: noHooks,
          downloadOnly: true,
        })
      ).status,
      'downloaded',
    );
    assert.deepEqual(await readFile(blob), good);
    const lines: string[] = [];
    const r4 = await update(deps(), {
      sysroot: os.sysroot,
      reference: `oci:${layout}:b4`,
      config: noHooks,
      offline: true,
      onProgress: (l) => lines.push(l),
    });
    assert.ok(r4.status === 'updated');
    assert.equal(
      await readFile(join(snapshotPath(os.sysroot, r4.snapshot), 'usr/share/fake/new-in-v2'), 'utf8'),
      'changed in v4\n',
    );
    assert.ok(r4.apply.written.bytes < 600 * 1024, `wrote ${r4.apply.written.bytes} bytes`);
    assert.ok(
      lines.some((l) => /^read \d+ changed file\(s\) from the cached layers/.test(l)),
      lines.join('\n'),
    );
    await access(contentIndexFile(cacheDir(), r4.snapshot));
  });

  it('hooks: an initrd hook runs (in the chroot, per kernel) only when the image brings a changed kernel without an initrd', async () => {
    const config = parseConfig(
      'default-hooks = false\n' +
        '[[hook]]\nname = "initrd"\nwhen = "initrd-missing"\nif-exists = "/bin/sh"\ncommand = ["/bin/sh", "-c", "echo built > /boot/initrd-{kver}"]\n' +
        '[[hook]]\nname = "bootloader"\nwhen = "kernel-changed"\ncommand = ["/bin/sh", "-c", "echo {kver} > /boot/menu"]\n' +
        '[[hook]]\nname = "absent"\nif-exists = "/usr/sbin/grub2-mkconfig"\ncommand = ["/usr/sbin/grub2-mkconfig"]\n',
    );
    const withKernel = async (tag: string, initrd: boolean) => {
      await buildImage(images, tag, [
        ...(await v2Files()),
        { path: 'usr/lib/modules/6.1.0-tiu/vmlinuz', content: `kernel ${tag}\n` },
        ...(initrd ? [{ path: 'usr/lib/modules/6.1.0-tiu/initrd', content: 'image initrd\n' }] : []),
      ]);
      await signInLayout(images, tag, signingKey);
      const r = await update(deps(), { sysroot: os.sysroot, reference: `oci:${images}:${tag}`, config });
      assert.ok(r.status === 'updated');
      return r;
    };
    const a = await withKernel('k1', false);
    assert.deepEqual(
      a.hooks.map((h) => h.name),
      ['initrd 6.1.0-tiu', 'bootloader'],
    );
    const root = snapshotPath(os.sysroot, a.snapshot);
    assert.equal(await readFile(join(root, 'boot/initrd-6.1.0-tiu'), 'utf8'), 'built\n');
    assert.equal(await readFile(join(root, 'boot/menu'), 'utf8'), '6.1.0-tiu\n');
    const b = await withKernel('k2', true);
    assert.deepEqual(
      b.hooks.map((h) => h.name),
      ['bootloader'],
    );
  });

  it('SELinux: an image without labels for a system that enforces SELinux gets /.autorelabel', async () => {
    const selinux = 'SELINUX=enforcing\nSELINUXTYPE=targeted\n';
    await buildImage(images, 'se', [
      ...(await v2Files()),
      { path: 'etc/selinux/config', content: selinux },
      { path: 'usr/lib/tiu/etc/selinux/config', content: selinux },
    ]);
    await signInLayout(images, 'se', signingKey);
    const r = await update(deps(), { sysroot: os.sysroot, reference: `oci:${images}:se`, config: noHooks });
    assert.ok(r.status === 'updated');
    assert.equal(r.relabel, true);
    assert.ok(existsSync(join(snapshotPath(os.sysroot, r.snapshot), '.autorelabel')));
    // Without SELinux (v2 has no /etc/selinux/config), no relabel.
    await signInLayout(images, 'v2', signingKey);
    const plain = await update(deps(), { sysroot: os.sysroot, reference: `oci:${images}:v2`, config: noHooks });
    assert.ok(plain.status === 'updated');
    assert.equal(plain.relabel, false);
    assert.equal(existsSync(join(snapshotPath(os.sysroot, plain.snapshot), '.autorelabel')), false);
  });
});
