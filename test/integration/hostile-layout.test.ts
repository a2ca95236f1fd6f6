/**
 * Images whose layout fights the host's: no boot/grub2, proc, sys or tmp; bootc-style symlinks
 * where MicroOS mounts subvolumes; entries under tiu's working names; hostile tar entries on the
 * whole-layer path. On a MicroOS-layout btrfs with a MicroOS-like /etc/fstab; after an update
 * the sysroot is mounted again from the new default subvolume the way a boot would.
 */
import assert from 'node:assert/strict';
import { createHash, type KeyObject } from 'node:crypto';
import { existsSync } from 'node:fs';
import { lstat, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { requireRoot } from '../helpers/env.ts';
import { baseOs, createMicroOS, v2Files, writeTree, type MicroOS, type OsFile } from '../helpers/microos.ts';
import { installPolicy, signInLayout } from '../helpers/update-deps.ts';
import { makeTar, type TarSpec } from '../helpers/tarball.ts';
import { buildBundle } from '../../src/bundle/build.ts';
import { OciLayoutTarget } from '../../src/content/oci-layout.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import type { Descriptor, Digest } from '../../src/oci/types.ts';
import { productionDeps } from '../../src/deploy/wiring.ts';
import { update, type UpdateResult } from '../../src/deploy/update.ts';
import { parseConfig } from '../../src/deploy/config.ts';
import { openContext, readState, snapshotPath } from '../../src/deploy/state.ts';
import { parseFstab } from '../../src/deploy/apply/reserved.ts';
import { run } from '../../src/host/exec.ts';
import { isTiuError } from '../../src/errors.ts';

const UUID = '0b4c1f2e-0000-4000-8000-000000000001';
/** Like MicroOS's: every subvolume by subvol=, the ESP, a tmpfs /tmp, swap; plus a custom mount point with a space. */
const FSTAB = [
  `UUID=${UUID} / btrfs ro 0 0`,
  `UUID=${UUID} /var btrfs subvol=/@/var,x-initrd.mount 0 0`,
  `UUID=${UUID} /usr/local btrfs subvol=/@/usr/local 0 0`,
  `UUID=${UUID} /srv btrfs subvol=/@/srv 0 0`,
  `UUID=${UUID} /root btrfs subvol=/@/root 0 0`,
  `UUID=${UUID} /opt btrfs subvol=/@/opt 0 0`,
  `UUID=${UUID} /home btrfs subvol=/@/home 0 0`,
  `UUID=${UUID} /boot/writable btrfs subvol=/@/boot/writable 0 0`,
  `UUID=${UUID} /boot/grub2/x86_64-efi btrfs subvol=/@/boot/grub2/x86_64-efi 0 0`,
  `UUID=${UUID} /.snapshots btrfs subvol=/@/.snapshots 0 0`,
  `UUID=${UUID} /data\\040dir btrfs subvol=/@/data\\040dir 0 0`,
  'UUID=ABCD-1234 /boot/efi vfat utf8 0 2',
  'tmpfs /tmp tmpfs defaults 0 0',
  '/dev/disk/by-label/swap none swap defaults 0 0',
  '',
].join('\n');
const EXTRA_SUBVOLUMES = ['boot/grub2/x86_64-efi', 'data dir'];
const MOUNT_POINTS = [
  'var',
  'usr/local',
  'srv',
  'root',
  'opt',
  'home',
  'boot/writable',
  'boot/grub2/x86_64-efi',
  '.snapshots',
  'data dir',
  'boot/efi',
  'tmp',
  'proc',
  'sys',
  'dev',
  'run',
];

const sha = (b: Uint8Array): Digest => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** OsFile[] -> tar entries (directories implicit, as many tars have them). */
function tarOf(files: OsFile[]): TarSpec[] {
  return files.map((f) =>
    f.symlink !== undefined
      ? { name: f.path, type: '2', linkname: f.symlink }
      : { name: f.path, content: Buffer.from(f.content ?? ''), mode: f.mode ?? 0o644 },
  );
}

/** gzip tar layers (no tables of contents: the whole-layer path) into an OCI layout, signed. */
async function tarImage(layout: string, tag: string, layers: TarSpec[][], key: KeyObject): Promise<void> {
  const target = await OciLayoutTarget.open(layout, { create: true });
  const put = async (mediaType: string, data: Buffer): Promise<Descriptor> => {
    const d: Descriptor = { mediaType, digest: sha(data), size: data.length };
    await target.push(d, Readable.from([data]));
    return d;
  };
  const tars = layers.map((l) => makeTar(l));
  const descs: Descriptor[] = [];
  for (const t of tars) descs.push(await put(MediaType.OciLayerGzip, gzipSync(t)));
  const config = await put(
    MediaType.OciConfig,
    Buffer.from(
      JSON.stringify({
        architecture: 'amd64',
        os: 'linux',
        rootfs: { type: 'layers', diff_ids: tars.map((t) => sha(t)) },
      }),
    ),
  );
  const manifest = await put(
    MediaType.OciManifest,
    Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciManifest, config, layers: descs })),
  );
  await target.tag(manifest, tag);
  await signInLayout(layout, tag, key);
}

/** The OS tree of a v2 image with no boot, proc, sys, tmp, dev or run at all. */
async function bareOs(): Promise<OsFile[]> {
  return (await v2Files()).filter((f) => !/^(boot|proc|sys|tmp|dev|run)\//.test(f.path));
}

describe('hostile and foreign image layouts on a MicroOS-layout btrfs', function () {
  let os: MicroOS;
  let images: string;
  let key: KeyObject;
  const noHooks = parseConfig('default-hooks = false');
  const state = async () => readState(await openContext(os.sysroot));
  const doUpdate = async (ref: string, lines: string[] = []): Promise<Extract<UpdateResult, { status: 'updated' }>> => {
    const r = await update(productionDeps, {
      sysroot: os.sysroot,
      reference: ref,
      config: noHooks,
      onProgress: (l) => lines.push(l),
    });
    assert.ok(r.status === 'updated', r.status);
    return r;
  };

  /** A new subvolume's id: btrfs never reuses one, so two probes one apart mean nothing was created in between. */
  const probeId = async (): Promise<number> => {
    const p = join(os.top, `probe-${Date.now()}-${Math.random().toString(16).slice(2)}`);
    await run('btrfs', ['-q', 'subvolume', 'create', p]);
    const id = Number(/Subvolume ID:\s*(\d+)/.exec((await run('btrfs', ['subvolume', 'show', p])).stdout)![1]);
    await run('btrfs', ['-q', 'subvolume', 'delete', p]);
    return id;
  };

  /** Every mount point is a real directory in snapshot n. */
  const assertMountPoints = async (n: number): Promise<void> => {
    const root = snapshotPath(os.sysroot, n);
    for (const d of MOUNT_POINTS) {
      const st = await lstat(join(root, d)).catch(() => undefined);
      assert.ok(st?.isDirectory(), `/${d} is not a directory in snapshot ${n}`);
    }
  };

  /**
   * Mount the sysroot again as a boot would: the default subvolume read-only at a fresh
   * directory, then every fstab entry at its mount point inside it (btrfs subvolumes, a tmpfs),
   * and the API filesystems. Nothing can be created on the read-only root: a missing mount
   * point fails here.
   */
  const bootMount = async (n: number): Promise<void> => {
    const mnt = await mkdtemp(join(os.dir, 'boot-'));
    try {
      await run('mount', ['-o', 'ro', os.loop, mnt]);
      assert.equal(
        await readFile(join(mnt, 'usr/lib/os-release'), 'utf8'),
        await readFile(join(snapshotPath(os.sysroot, n), 'usr/lib/os-release'), 'utf8'),
      );
      const fstab = parseFstab(await readFile(join(mnt, 'etc/fstab'), 'utf8'));
      assert.ok(fstab.length > 10);
      for (const e of fstab) {
        if (e.file === '/' || e.vfstype === 'swap') continue;
        const at = join(mnt, e.file);
        assert.ok((await lstat(at)).isDirectory(), `mount point ${e.file} of snapshot ${n}`);
        if (e.vfstype === 'btrfs')
          await run('mount', [
            '-o',
            e.options
              .split(',')
              .filter((o) => !o.startsWith('x-'))
              .join(','),
            os.loop,
            at,
          ]);
        else if (e.vfstype === 'tmpfs') await run('mount', ['-t', 'tmpfs', 'tmpfs', at]);
      }
      await run('mount', ['-t', 'proc', 'proc', join(mnt, 'proc')]);
      await run('mount', ['-t', 'sysfs', 'sysfs', join(mnt, 'sys')]);
      await run('mount', ['-t', 'tmpfs', 'tmpfs', join(mnt, 'run')]);
      // The subvolumes are the host's: the marker written into the running /home is there.
      assert.equal(await readFile(join(mnt, 'home/admin-marker'), 'utf8'), 'mine\n');
      assert.ok(existsSync(join(mnt, 'data dir/keep')));
      assert.ok(existsSync(join(mnt, 'proc/self/status')));
    } finally {
      await run('umount', ['-R', mnt], { okExitCodes: [0, 1, 32] });
      await rm(mnt, { recursive: true, force: true });
    }
  };

  before(async function () {
    requireRoot(this);
    os = await createMicroOS({
      files: [
        ...(await baseOs()),
        { path: 'etc/fstab', content: FSTAB },
        { path: 'boot/grub2/grub.cfg', content: 'set timeout=1\n' },
      ],
    });
    // MicroOS's boot/grub2/x86_64-efi subvolume and a custom one, mounted on the running system.
    const snap1 = snapshotPath(os.sysroot, 1);
    await run('btrfs', ['property', 'set', '-ts', snap1, 'ro', 'false']);
    for (const s of EXTRA_SUBVOLUMES) {
      await mkdir(join(snap1, s), { recursive: true });
      await mkdir(join(os.top, '@', s, '..'), { recursive: true });
      await run('btrfs', ['-q', 'subvolume', 'create', join(os.top, '@', s)]);
    }
    await run('btrfs', ['property', 'set', '-ts', snap1, 'ro', 'true']);
    for (const s of EXTRA_SUBVOLUMES) await run('mount', ['-o', `subvol=@/${s}`, os.loop, join(os.sysroot, s)]);
    await writeFile(join(os.sysroot, 'home/admin-marker'), 'mine\n');
    await writeFile(join(os.sysroot, 'data dir/keep'), 'data\n');
    images = join(os.dir, 'images');
    key = await installPolicy(os.sysroot);
  });
  after(async () => {
    await os?.teardown();
  });

  it('a hostile tar entry on the whole-layer path is refused before any snapshot exists', async () => {
    const usr = tarOf(await bareOs());
    const cases: [string, TarSpec[][]][] = [
      [
        'symlink-parent',
        [[...usr, { name: 'x', type: '2', linkname: os.dir }, { name: 'x/evil', content: 'pwned\n' }]],
      ],
      [
        'symlink-parent-2-layers',
        [usr, [{ name: 'y', type: '2', linkname: '/' }], [{ name: 'y/tmp/evil', content: 'pwned\n' }]],
      ],
      ['dotdot', [[...usr, { name: 'usr/../../evil', content: 'pwned\n' }]]],
      ['bad-hardlink', [[...usr, { name: 'usr/h', type: '1', linkname: 'usr/not-there' }]]],
    ];
    for (const [tag, layers] of cases) {
      await tarImage(images, tag, layers, key);
      const before = await state();
      const id0 = await probeId();
      const lines: string[] = [];
      await assert.rejects(
        update(productionDeps, {
          sysroot: os.sysroot,
          reference: `oci:${images}:${tag}`,
          config: noHooks,
          onProgress: (l) => lines.push(l),
        }),
        (e: unknown) => {
          assert.ok(isTiuError(e, 'PATH_UNSAFE') || isTiuError(e, 'HARDLINK_INVALID'), `${tag}: ${String(e)}`);
          return true;
        },
      );
      // No subvolume (so no snapshot, in progress or not) was created in between.
      assert.equal(await probeId(), id0 + 1, `${tag}: a subvolume was created`);
      assert.ok(!lines.some((l) => /creating snapshot/.test(l)), `${tag}: ${lines.join('\n')}`);
      const after = await state();
      assert.deepEqual(
        after.snapshots.map((s) => [s.number, s.inProgress]),
        before.snapshots.map((s) => [s.number, s.inProgress]),
      );
      assert.equal(after.default, before.default);
      assert.equal(existsSync(join(os.dir, 'evil')), false);
      assert.equal(existsSync('/evil'), false);
      assert.equal(existsSync('/tmp/evil'), false);
    }
  });

  it('tar path: an image without boot/grub2, proc, sys or tmp keeps every mount point; the sysroot mounts from the new default', async () => {
    await tarImage(images, 'bare', [tarOf(await bareOs())], key);
    const lines: string[] = [];
    const r = await doUpdate(`oci:${images}:bare`, lines);
    await assertMountPoints(r.snapshot);
    const n = snapshotPath(os.sysroot, r.snapshot);
    // boot/grub2 stays for its preserved x86_64-efi; its other content, which the image lacks, went.
    assert.equal(existsSync(join(n, 'boot/grub2/grub.cfg')), false);
    assert.ok(
      lines.some((l) => /created mount point\(s\) the image lacks: .*\/proc/.test(l)),
      lines.join('\n'),
    );
    assert.equal((await state()).default, r.snapshot);
    await bootMount(r.snapshot);
  });

  it('TOC path (tiu build): an image without boot/grub2, proc, sys or tmp keeps every mount point; the sysroot mounts from the new default', async () => {
    const tree = join(os.dir, 'bare-tree');
    await writeTree(tree, [
      ...(await bareOs()).filter((f) => !f.path.startsWith('usr/lib/tiu/')),
      { path: 'usr/share/fake/toc', content: 'toc\n' },
    ]);
    const layout = join(os.dir, 'bundles');
    await buildBundle({ kind: 'directory', path: tree }, await OciLayoutTarget.open(layout, { create: true }), 'bare', {
      sourceDateEpoch: 1767225600,
      layers: 2,
    });
    await signInLayout(layout, 'bare', key);
    const r = await doUpdate(`oci:${layout}:bare`);
    assert.equal(r.transfer?.path, 'delta');
    const n = snapshotPath(os.sysroot, r.snapshot);
    assert.equal(await readFile(join(n, 'usr/share/fake/toc'), 'utf8'), 'toc\n');
    for (const d of ['proc', 'sys', 'tmp', 'boot']) assert.ok(!existsSync(join(tree, d)));
    await assertMountPoints(r.snapshot);
    await bootMount(r.snapshot);
  });

  it('a bootc-style image (home -> var/home and friends, var/ and .snapshots content) keeps the host subvolume mount points and reports what it skipped', async () => {
    const bootc: TarSpec[] = [
      ...tarOf(await bareOs()),
      { name: 'home', type: '2', linkname: 'var/home' },
      { name: 'opt', type: '2', linkname: 'var/opt' },
      { name: 'root', type: '2', linkname: 'var/roothome' },
      { name: 'srv', type: '2', linkname: 'var/srv' },
      { name: 'usr/local', type: '2', linkname: '../var/usrlocal' },
      { name: 'var/', type: '5' },
      { name: 'var/home/', type: '5' },
      { name: 'var/lib/bootc/state', content: 'x\n' },
      { name: '.snapshots/', type: '5' },
      { name: '.snapshots/evil', content: 'x\n' },
    ];
    // A second layer replaces var itself with a symlink.
    await tarImage(images, 'bootc', [bootc, [{ name: 'var', type: '2', linkname: 'sysroot/ostree/var' }]], key);
    const r = await doUpdate(`oci:${images}:bootc`);
    const n = snapshotPath(os.sysroot, r.snapshot);
    for (const d of ['home', 'opt', 'root', 'srv', 'usr/local', 'var', '.snapshots'])
      assert.ok((await lstat(join(n, d))).isDirectory(), `/${d}`);
    assert.equal(existsSync(join(n, 'var/lib/bootc')), false);
    assert.equal(existsSync(join(n, '.snapshots/evil')), false);
    assert.deepEqual(r.apply.skippedPaths, ['.snapshots', 'home', 'opt', 'root', 'srv', 'usr/local', 'var']);
    // 5 symlinks, var/home, var/lib/bootc/state, .snapshots/evil, the var symlink (var/ and .snapshots/ as directories are not counted)
    assert.equal(r.apply.skipped.count, 9);
    assert.equal(await readFile(join(os.sysroot, 'home/admin-marker'), 'utf8'), 'mine\n');
    await assertMountPoints(r.snapshot);
    await bootMount(r.snapshot);
  });

  it("entries under .tiu-etc-merge/etc in the image do not reach the admin's /etc", async () => {
    await writeFile(join(os.sysroot, 'etc/hostname'), 'admin-host\n');
    const evil: TarSpec[] = [
      ...tarOf(await bareOs()),
      { name: '.tiu-etc-merge/etc/hostname', content: 'evil\n' },
      { name: '.tiu-etc-merge/etc/passwd', content: 'root::0:0::/:/bin/sh\n' },
      { name: '.tiu-etc-merge/etc/evil.conf', content: 'evil\n' },
      { name: '.autorelabel', type: '2', linkname: os.dir + '/victim' },
      { name: '.tiu-staging-x/1', content: 'x' },
    ];
    await tarImage(images, 'etc-merge', [evil], key);
    const r = await doUpdate(`oci:${images}:etc-merge`);
    const n = snapshotPath(os.sysroot, r.snapshot);
    assert.equal(await readFile(join(n, 'etc/hostname'), 'utf8'), 'admin-host\n');
    assert.equal(await readFile(join(n, 'etc/hostname.tiunew'), 'utf8'), 'microos-v2\n');
    assert.match(await readFile(join(n, 'etc/passwd'), 'utf8'), /^root:x:0:0:/m);
    assert.equal(existsSync(join(n, 'etc/evil.conf')), false);
    assert.equal(existsSync(join(n, '.tiu-etc-merge')), false);
    assert.equal(existsSync(join(n, '.tiu-staging-x')), false);
    assert.equal((await lstat(join(n, '.autorelabel')).catch(() => undefined))?.isSymbolicLink() ?? false, false);
    assert.deepEqual(r.apply.skippedPaths, ['.autorelabel', '.tiu-etc-merge', '.tiu-staging-x']);
  });
});
