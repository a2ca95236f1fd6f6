/**
 * Hostile images against a MicroOS-layout btrfs, through the real CLI (`tiu update --sysroot`),
 * with a policy that accepts any image (so the content checks are what is tested). Every class
 * of issue 13, on the whole-layer (tar) path and on the TOC path, plus OCI layout and hostile
 * registry cases. Each refusal: exit code, one `tiu: error: ... [CODE]` line, the same code with
 * --json, the default subvolume, the snapshots, every hash below the sysroot, the marker
 * directory outside it and the mount table as they were (test/helpers/hostile.ts). Each case that
 * must succeed while skipping reserved paths: a new default snapshot, and nothing changed
 * outside it.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { lstat, mkdir, readdir, readFile, statfs, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { gzipSync, zstdCompressSync } from 'node:zlib';
import { buildBundle } from '../../src/bundle/build.ts';
import { OciLayoutTarget } from '../../src/content/oci-layout.ts';
import { run } from '../../src/host/exec.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import type { CraftedEntry } from '../helpers/chunked-layer.ts';
import { requireRoot } from '../helpers/env.ts';
import {
  createHostileEnv,
  imageFiles,
  imageOf,
  osTarEntries,
  osTocEntries,
  rawLayer,
  startHostileRegistry,
  tarLayer,
  tocLayer,
  writeImage,
  zstdZeros,
  gzipTarWithFill,
  type HostileEnv,
  type HostileRegistry,
} from '../helpers/hostile.ts';
import { writeTree, type OsFile } from '../helpers/microos.ts';
import { makeTar, type TarSpec } from '../helpers/tarball.ts';

const sha = (b: Uint8Array | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const T = 1_767_225_600;

describe('hostile images are refused cleanly or skipped: nothing outside the new snapshot changes (tiu update CLI, MicroOS btrfs)', function () {
  this.timeout(600_000);
  let env: HostileEnv;
  let base: OsFile[];
  let withShell: OsFile[];
  let n = 0;
  const tag = () => `case-${++n}`;

  /** Whole-layer path: one tar layer of the OS plus `extra` entries (later entries win). */
  const tarImage = async (
    extra: TarSpec[],
    o: { compression?: 'none' | 'gzip' | 'zstd'; files?: OsFile[]; omitDirs?: string[] } = {},
  ) => {
    const t = tag();
    await writeImage(env.layout, t, [
      tarLayer([...osTarEntries(o.files ?? base, o), ...extra], o.compression ?? 'gzip'),
    ]);
    return env.ref(t);
  };
  /** TOC path: one zstd:chunked layer of the OS plus `extra` entries. */
  const tocImage = async (extra: CraftedEntry[], o: { files?: OsFile[]; omitDirs?: string[] } = {}) => {
    const t = tag();
    await writeImage(env.layout, t, [tocLayer([...osTocEntries(o.files ?? base, o), ...extra])]);
    return env.ref(t);
  };
  const file = (name: string, content: string, extra: Partial<TarSpec> = {}): TarSpec => ({
    name,
    content,
    mtime: T,
    ...extra,
  });
  const link = (name: string, target: string): TarSpec => ({
    name,
    type: '2',
    linkname: target,
    mode: 0o777,
    mtime: T,
  });
  const dir = (name: string): TarSpec => ({ name, type: '5', mode: 0o755, mtime: T });
  const treg = (name: string, content: string, extra: Partial<CraftedEntry['toc']> = {}): CraftedEntry => ({
    toc: { type: 'reg', name, mode: 0o644, ...extra },
    content: Buffer.from(content),
  });
  const tlink = (name: string, target: string): CraftedEntry => ({
    toc: { type: 'symlink', name, linkName: target, mode: 0o777 },
  });
  const tdir = (name: string): CraftedEntry => ({ toc: { type: 'dir', name, mode: 0o755 } });
  const without = (files: OsFile[], prefix: string) =>
    files.filter((f) => f.path !== prefix && !f.path.startsWith(prefix + '/'));
  const isDir = async (p: string) => (await lstat(p).catch(() => undefined))?.isDirectory() === true;
  const skippedPaths = (json: Record<string, unknown>) =>
    ((json.apply as { skippedPaths?: string[] } | undefined)?.skippedPaths ?? []).join(' ');

  before(async function () {
    requireRoot(this);
    env = await createHostileEnv({ sizeMiB: 400 });
    base = await imageFiles();
    withShell = await imageFiles({ shell: true });
    const s = env.os.sysroot;
    // The admin's own /etc: a changed hostname, and a MicroOS-like fstab with a mount point of
    // the admin's (/data) and boot/grub2/x86_64-efi, which the booted snapshot has as directories.
    await writeFile(join(s, 'etc/hostname'), 'admins-host\n');
    const fstab = [
      '/',
      '/var',
      '/usr/local',
      '/home',
      '/root',
      '/opt',
      '/srv',
      '/boot/writable',
      '/boot/grub2/x86_64-efi',
      '/.snapshots',
      '/data',
    ]
      .map((m) => `UUID=0000-test ${m} btrfs ${m === '/' ? 'ro' : `subvol=/@${m}`} 0 0`)
      .concat(['UUID=EFI /boot/efi vfat defaults 0 2', 'tmpfs /tmp tmpfs defaults 0 0']);
    await writeFile(join(s, 'etc/fstab'), fstab.join('\n') + '\n');
    const snap1 = env.os.snapshotPath(1);
    await run('btrfs', ['property', 'set', '-ts', snap1, 'ro', 'false']);
    await mkdir(join(snap1, 'boot/grub2/x86_64-efi'), { recursive: true });
    await mkdir(join(snap1, 'data'), { recursive: true });
    await run('btrfs', ['property', 'set', '-ts', snap1, 'ro', 'true']);
  });
  after(async () => {
    await env?.teardown();
  });

  it('control: a benign image on each path succeeds and changes nothing outside its snapshot', async () => {
    for (const ref of [await tarImage([]), await tocImage([])]) {
      const r = await env.expectSkipped(ref);
      assert.equal(await readFile(join(r.root, 'etc/hostname'), 'utf8'), 'admins-host\n');
      assert.match(await readFile(join(r.root, 'usr/lib/os-release'), 'utf8'), /VERSION_ID="2"/);
    }
  });

  describe('xattr names that would inject a `# file:` block into a setfattr --restore dump', () => {
    const evil = (target: string) => `user.a\n# file: ${target}\nuser.pwned`;
    it('tar path: PAX SCHILY.xattr name with a newline -> XATTR_INVALID', async () => {
      await env.expectRefused(
        await tarImage([file('usr/share/fake/x', 'x', { xattrs: { [evil(env.marker.file)]: 'owned' } })]),
        'XATTR_INVALID',
      );
    });
    it('tar path (plain tar): security.capability through an injected block -> XATTR_INVALID', async () => {
      const name = `user.b\n# file: ${env.marker.file}\nsecurity.capability`;
      await env.expectRefused(
        await tarImage(
          [
            file('usr/share/fake/y', 'y', {
              xattrs: { [name]: Buffer.from('AQAAAgAgAAAAAAAAAAAAAAAAAAA=', 'base64') },
            }),
          ],
          { compression: 'none' },
        ),
        'XATTR_INVALID',
      );
    });
    it('TOC path: a TOC xattrs name with a newline -> XATTR_INVALID', async () => {
      await env.expectRefused(
        await tocImage([
          treg('usr/share/fake/x', 'x', {
            xattrs: { [evil(env.marker.file)]: Buffer.from('owned').toString('base64') },
          }),
        ]),
        'XATTR_INVALID',
      );
    });
    it('tar and TOC: a name outside the supported namespaces, or longer than 255 bytes -> XATTR_INVALID', async () => {
      await env.expectRefused(
        await tarImage([file('usr/share/fake/z', 'z', { xattrs: { 'evil.ns': 'v' } })], { compression: 'zstd' }),
        'XATTR_INVALID',
      );
      await env.expectRefused(
        await tocImage([treg('usr/share/fake/z', 'z', { xattrs: { [`user.${'n'.repeat(260)}`]: 'dg==' } })]),
        'XATTR_INVALID',
      );
    });
  });

  describe('.autorelabel aimed at a host file with SELinux enabled in the image', () => {
    const selinux: OsFile[] = [
      { path: 'etc/selinux/config', content: 'SELINUX=enforcing\nSELINUXTYPE=targeted\n' },
      { path: 'usr/lib/tiu/etc/selinux/config', content: 'SELINUX=enforcing\nSELINUXTYPE=targeted\n' },
    ];
    const check = async (ref: string) => {
      const r = await env.expectSkippedOrRefused(ref, 'PATH_UNSAFE');
      if (r) {
        // tiu's own marker, a regular empty file, not the image's symlink.
        const st = await lstat(join(r.root, '.autorelabel'));
        assert.ok(st.isFile(), '.autorelabel is a regular file');
        assert.equal(st.size, 0);
        assert.match(skippedPaths(r.json), /autorelabel/);
      }
      assert.equal(await readFile(env.marker.file, 'utf8'), 'marker file: must never change\n');
    };
    it('tar path: `.autorelabel -> <marker>/f` is skipped (tiu writes its own) or PATH_UNSAFE; the marker is untouched', async () => {
      await check(await tarImage([link('.autorelabel', env.marker.file)], { files: [...base, ...selinux] }));
    });
    it('TOC path: the same', async () => {
      await check(await tocImage([tlink('.autorelabel', env.marker.file)], { files: [...base, ...selinux] }));
    });
  });

  describe('symlinks where tiu writes after the apply', () => {
    it('tar path: `usr/lib/tiu -> <marker dir>` -> PATH_UNSAFE', async () => {
      await env.expectRefused(
        await tarImage([link('usr/lib/tiu', env.marker.subdir)], { files: without(base, 'usr/lib/tiu') }),
        'PATH_UNSAFE',
      );
    });
    it('TOC path: `usr/lib/tiu -> <marker dir>` -> PATH_UNSAFE', async () => {
      await env.expectRefused(
        await tocImage([tlink('usr/lib/tiu', env.marker.subdir)], { files: without(base, 'usr/lib/tiu') }),
        'PATH_UNSAFE',
      );
    });
    it('tar path: `usr -> <marker>` -> PATH_UNSAFE or IMAGE_NOT_OS', async () => {
      await env.expectRefused(
        await tarImage([link('usr', env.marker.subdir)], {
          files: without(base, 'usr'),
          omitDirs: ['usr', 'usr/local'],
        }),
        ['PATH_UNSAFE', 'IMAGE_NOT_OS'],
      );
    });
    it('TOC path: `usr -> <marker>` -> PATH_UNSAFE or IMAGE_NOT_OS', async () => {
      await env.expectRefused(
        await tocImage([tlink('usr', env.marker.subdir)], {
          files: without(base, 'usr'),
          omitDirs: ['usr', 'usr/local'],
        }),
        ['PATH_UNSAFE', 'IMAGE_NOT_OS'],
      );
    });
    // /etc is a nested subvolume on MicroOS: tiu deletes the image's copy after the merge, and a
    // subvolume delete that resolved a symlink would take the host's (or the marker) with it.
    it('tar path: `etc -> <marker dir>` and `etc -> /var` -> PATH_UNSAFE', async () => {
      await env.expectRefused(
        await tarImage([link('etc', env.marker.subdir)], { files: without(base, 'etc'), omitDirs: ['etc'] }),
        'PATH_UNSAFE',
      );
      await env.expectRefused(
        await tarImage([link('etc', '/var')], { files: without(base, 'etc'), omitDirs: ['etc'] }),
        'PATH_UNSAFE',
      );
    });
    it('TOC path: `etc -> <marker dir>` and `etc -> /var` -> PATH_UNSAFE', async () => {
      await env.expectRefused(
        await tocImage([tlink('etc', env.marker.subdir)], { files: without(base, 'etc'), omitDirs: ['etc'] }),
        'PATH_UNSAFE',
      );
      await env.expectRefused(
        await tocImage([tlink('etc', '/var')], { files: without(base, 'etc'), omitDirs: ['etc'] }),
        'PATH_UNSAFE',
      );
    });
    it('tar path: an image with no usr at all -> IMAGE_NOT_OS', async () => {
      await env.expectRefused(
        await tarImage([], { files: without(base, 'usr'), omitDirs: ['usr', 'usr/local'] }),
        'IMAGE_NOT_OS',
      );
    });
  });

  describe("tiu's working name .tiu-etc-merge: the admin's /etc is kept", () => {
    const check = async (ref: string) => {
      const r = await env.expectSkipped(ref);
      assert.equal(await readFile(join(r.root, 'etc/hostname'), 'utf8'), 'admins-host\n');
      assert.match(await readFile(join(r.root, 'etc/passwd'), 'utf8'), /^admin:x:1000:1000:/m);
      assert.doesNotMatch(await readFile(join(r.root, 'etc/shadow'), 'utf8'), /pwned/);
      assert.equal(
        await lstat(join(r.root, '.tiu-etc-merge')).catch(() => undefined),
        undefined,
        'no .tiu-etc-merge left',
      );
      assert.match(skippedPaths(r.json), /\.tiu-etc-merge/);
    };
    it('tar path: entries under .tiu-etc-merge/ are skipped', async () => {
      await check(
        await tarImage([
          dir('.tiu-etc-merge'),
          file('.tiu-etc-merge/hostname', 'pwned\n'),
          file('.tiu-etc-merge/shadow', 'root:pwned:1::::::\n'),
        ]),
      );
    });
    it('TOC path: entries under .tiu-etc-merge/ are skipped', async () => {
      await check(
        await tocImage([
          tdir('.tiu-etc-merge'),
          treg('.tiu-etc-merge/hostname', 'pwned\n'),
          treg('.tiu-etc-merge/shadow', 'root:pwned:1::::::\n'),
        ]),
      );
    });
  });

  describe('preserved paths (home, var, opt, root, srv, usr/local, .snapshots, boot/*) are reserved', () => {
    const checkKept = async (ref: string) => {
      const r = await env.expectSkipped(ref);
      for (const d of [
        'var',
        'home',
        'root',
        'opt',
        'srv',
        'usr/local',
        'boot/writable',
        'boot/efi',
        'boot/grub2/x86_64-efi',
        '.snapshots',
        'data',
      ]) {
        assert.ok(await isDir(join(r.root, d)), `${d} is a directory in the new snapshot`);
      }
      for (const d of ['var', 'home', 'opt', 'srv', 'usr/local', '.snapshots'])
        assert.deepEqual(await readdir(join(r.root, d)), [], `${d} in the new snapshot is the empty mount point`);
      assert.notEqual(skippedPaths(r.json), '', 'the report names what was skipped');
      return r;
    };
    const files: TarSpec[] = [
      dir('home/admin'),
      dir('home/admin/.ssh'),
      file('home/admin/.ssh/authorized_keys', 'ssh-ed25519 AAAA evil\n'),
      dir('var/lib'),
      file('var/lib/evil', 'x'),
      file('opt/evil', 'x'),
      file('srv/evil', 'x'),
      dir('root/.ssh'),
      file('root/.ssh/authorized_keys', 'evil'),
      dir('usr/local/bin'),
      file('usr/local/bin/evil', 'x'),
      file('boot/writable/evil', 'x'),
      file('.snapshots/evil', 'x'),
      dir('boot/grub2'),
      dir('boot/grub2/x86_64-efi'),
      file('boot/grub2/x86_64-efi/evil.mod', 'x'),
    ];
    it('tar path: files under home/var/opt/root/srv/usr/local/boot/writable/.snapshots are skipped', async () => {
      await checkKept(await tarImage(files));
    });
    it('TOC path: the same', async () => {
      const toc = files.map((f): CraftedEntry => (f.type === '5' ? tdir(f.name) : treg(f.name, String(f.content))));
      await checkKept(await tocImage(toc));
    });
    it('tar path: `var -> /` and `.snapshots -> /` symlinks are skipped', async () => {
      await checkKept(
        await tarImage([link('var', '/'), link('.snapshots', env.marker.dir)], { omitDirs: ['var', '.snapshots'] }),
      );
    });
    it('TOC path: `var -> /` and `.snapshots -> <marker>` symlinks are skipped', async () => {
      await checkKept(
        await tocImage([tlink('var', '/'), tlink('.snapshots', env.marker.dir)], { omitDirs: ['var', '.snapshots'] }),
      );
    });
    const bootc = (l: (a: string, b: string) => TarSpec | CraftedEntry) => [
      l('home', 'var/home'),
      l('opt', 'var/opt'),
      l('root', 'var/roothome'),
      l('srv', 'var/srv'),
      l('usr/local', '../var/usrlocal'),
      l('mnt', 'var/mnt'),
    ];
    it('tar path: a bootc-style image (home -> var/home, usr/local -> ../var/usrlocal, ...) keeps the host subvolume mount points', async () => {
      await checkKept(
        await tarImage(bootc(link) as TarSpec[], { omitDirs: ['home', 'opt', 'root', 'srv', 'usr/local', 'mnt'] }),
      );
    });
    it('TOC path: the same bootc-style image', async () => {
      await checkKept(
        await tocImage(bootc(tlink) as CraftedEntry[], {
          omitDirs: ['home', 'opt', 'root', 'srv', 'usr/local', 'mnt'],
        }),
      );
    });
  });

  describe('mount points are kept: an image without boot/grub2, proc, sys, tmp, dev, run', () => {
    const omit = ['boot', 'boot/efi', 'boot/writable', 'proc', 'sys', 'tmp', 'dev', 'run', 'mnt'];
    /** Mount the new default as a boot would: its fstab mount points and the API filesystems. */
    const bootFrom = async (root: string) => {
      const mnt = join(env.os.dir, 'boot-check');
      await mkdir(mnt, { recursive: true });
      await run('mount', ['-o', 'ro', env.os.loop, mnt]);
      try {
        assert.equal(
          await readFile(join(mnt, 'usr/lib/os-release'), 'utf8'),
          await readFile(join(root, 'usr/lib/os-release'), 'utf8'),
          'the default subvolume is the new snapshot',
        );
        for (const s of ['var', 'home', 'root', 'opt', 'srv', 'usr/local', 'boot/writable', '.snapshots'])
          await run('mount', ['-o', `ro,subvol=@/${s}`, env.os.loop, join(mnt, s)]);
        for (const t of ['boot/grub2/x86_64-efi', 'boot/efi', 'data', 'tmp', 'run', 'dev'])
          await run('mount', ['-t', 'tmpfs', 'tmpfs', join(mnt, t)]);
        await run('mount', ['-t', 'proc', 'proc', join(mnt, 'proc')]);
        await run('mount', ['-t', 'sysfs', 'sysfs', join(mnt, 'sys')]);
      } finally {
        await run('umount', ['-R', mnt], { okExitCodes: [0, 1, 32] });
      }
    };
    it('tar path: every fstab, preserved and API mount point is a directory; the sysroot remounts from the new default', async () => {
      const r = await env.expectSkipped(await tarImage([], { omitDirs: omit }));
      for (const d of [
        'boot/grub2/x86_64-efi',
        'boot/efi',
        'boot/writable',
        'proc',
        'sys',
        'tmp',
        'dev',
        'run',
        'data',
      ])
        assert.ok(await isDir(join(r.root, d)), `${d} in the new snapshot`);
      await bootFrom(r.root);
    });
    it('TOC path: the same', async () => {
      const r = await env.expectSkipped(await tocImage([], { omitDirs: omit }));
      for (const d of [
        'boot/grub2/x86_64-efi',
        'boot/efi',
        'boot/writable',
        'proc',
        'sys',
        'tmp',
        'dev',
        'run',
        'data',
      ])
        assert.ok(await isDir(join(r.root, d)), `${d} in the new snapshot`);
      await bootFrom(r.root);
    });
  });

  describe('hooks: proc and dev in the image point outside (the chroot bind mounts must not follow them)', () => {
    const withHook = async (fn: () => Promise<void>) => {
      const conf = join(env.os.sysroot, 'etc/tiu/tiu.conf');
      const old = await readFile(conf, 'utf8');
      await writeFile(conf, 'default-hooks = false\n[[hook]]\nname = "nap"\ncommand = ["/usr/bin/sleep", "0"]\n');
      try {
        await fn();
      } finally {
        await writeFile(conf, old);
      }
    };
    const check = async (ref: string) => {
      const r = await env.expectSkippedOrRefused(ref, 'PATH_UNSAFE');
      if (r)
        for (const d of ['proc', 'dev', 'sys']) assert.ok(await isDir(join(r.root, d)), `${d} is a real directory`);
    };
    it('tar path: `proc -> <marker dir>`, `dev -> <marker>`: mount points replaced or PATH_UNSAFE; nothing mounted outside', async () => {
      await withHook(async () =>
        check(
          await tarImage([link('proc', env.marker.subdir), link('dev', env.marker.dir)], {
            files: withShell,
            omitDirs: ['proc', 'dev'],
          }),
        ),
      );
      // Relative: these resolve to the marker on the host, from .snapshots/N/snapshot.
      const up = relative(env.os.snapshotPath(1), env.marker.subdir);
      await withHook(async () =>
        check(
          await tarImage([link('proc', up), link('dev', up), link('sys', up)], {
            files: withShell,
            omitDirs: ['proc', 'dev', 'sys'],
          }),
        ),
      );
    });
    it('TOC path: the same', async () => {
      await withHook(async () =>
        check(
          await tocImage([tlink('proc', env.marker.subdir), tlink('dev', env.marker.dir)], {
            files: withShell,
            omitDirs: ['proc', 'dev'],
          }),
        ),
      );
      const up = relative(env.os.snapshotPath(1), env.marker.subdir);
      await withHook(async () =>
        check(
          await tocImage([tlink('proc', up), tlink('dev', up), tlink('sys', up)], {
            files: withShell,
            omitDirs: ['proc', 'dev', 'sys'],
          }),
        ),
      );
    });
  });

  describe('paths that leave the root, malformed names', () => {
    it('tar path: `../` in a name -> PATH_UNSAFE', async () => {
      await env.expectRefused(await tarImage([file('usr/../../../marker-pwned', 'x')]), 'PATH_UNSAFE');
    });
    it('TOC path: `../` in a name -> PATH_UNSAFE', async () => {
      await env.expectRefused(await tocImage([treg('usr/../../../marker-pwned', 'x')]), 'PATH_UNSAFE');
    });
    it('tar path: a write through a symlinked parent (absolute, and relative up) -> PATH_UNSAFE', async () => {
      await env.expectRefused(
        await tarImage([link('usr/share/esc', env.marker.subdir), file('usr/share/esc/pwned', 'x')]),
        'PATH_UNSAFE',
      );
      await env.expectRefused(
        await tarImage(
          [link('usr/share/up', `../../../../../../../..${env.marker.subdir}`), file('usr/share/up/pwned', 'x')],
          { compression: 'zstd' },
        ),
        'PATH_UNSAFE',
      );
    });
    it('TOC path: a write through a symlinked parent (absolute, and relative up) -> PATH_UNSAFE', async () => {
      await env.expectRefused(
        await tocImage([tlink('usr/share/esc', env.marker.subdir), treg('usr/share/esc/pwned', 'x')]),
        'PATH_UNSAFE',
      );
      await env.expectRefused(
        await tocImage([
          tlink('usr/share/up', `../../../../../../../..${env.marker.subdir}`),
          treg('usr/share/up/pwned', 'x'),
        ]),
        'PATH_UNSAFE',
      );
    });
    it('tar path: a 300-byte name component -> ENTRY_INVALID', async () => {
      await env.expectRefused(await tarImage([file(`usr/share/${'a'.repeat(300)}`, 'x')]), 'ENTRY_INVALID');
    });
    it('TOC path: a 300-byte name component -> ENTRY_INVALID', async () => {
      await env.expectRefused(await tocImage([treg(`usr/share/${'a'.repeat(300)}`, 'x')]), 'ENTRY_INVALID');
    });
  });

  describe('bounded resources', () => {
    const GiB = 2 ** 30;
    let bomb: Buffer;
    before(async () => {
      bomb = await zstdZeros(2 * GiB);
      assert.ok(bomb.length < 1 << 20, `the frame is small (${bomb.length} bytes)`);
    });
    const rssMiB = (r: { ran: { peakRssKiB?: number } }) => Math.round((r.ran.peakRssKiB ?? 0) / 1024);
    it('TOC path: a 64 KiB frame that expands to 2 GiB where its TOC says 4 KiB -> DELTA_FILE_MISMATCH, peak RSS bounded', async () => {
      const content = Buffer.alloc(4096);
      const t = tag();
      await writeImage(env.layout, t, [
        tocLayer([
          ...osTocEntries(base),
          {
            toc: { type: 'reg', name: 'usr/share/fake/bomb', mode: 0o644, size: content.length, digest: sha(content) },
            frame: bomb,
          },
        ]),
      ]);
      const e = await env.expectRefused(env.ref(t), 'DELTA_FILE_MISMATCH', { json: false, sample: { rss: true } });
      assert.ok(rssMiB(e) > 0 && rssMiB(e) < 512, `peak RSS ${rssMiB(e)} MiB`);
    });
    it('TOC path: a 64 KiB frame the TOC declares as 2 GiB on a 400 MiB disk -> DISK_FULL before anything is written (or DELTA_FILE_MISMATCH), peak RSS bounded', async () => {
      const t = tag();
      await writeImage(env.layout, t, [
        tocLayer([
          ...osTocEntries(base),
          {
            toc: {
              type: 'reg',
              name: 'usr/share/fake/bomb',
              mode: 0o644,
              size: 2 * GiB,
              digest: sha('not these bytes'),
            },
            frame: bomb,
          },
        ]),
      ]);
      const e = await env.expectRefused(env.ref(t), ['DISK_FULL', 'DELTA_FILE_MISMATCH'], {
        json: false,
        sample: { rss: true },
      });
      assert.ok(rssMiB(e) > 0 && rssMiB(e) < 512, `peak RSS ${rssMiB(e)} MiB`);
    });
    it('TOC path: a frame declared as 150 MiB (it fits) that expands to 2 GiB, digest of other bytes -> DELTA_FILE_MISMATCH, peak RSS bounded', async () => {
      const t = tag();
      await writeImage(env.layout, t, [
        tocLayer([
          ...osTocEntries(base),
          {
            toc: {
              type: 'reg',
              name: 'usr/share/fake/bomb',
              mode: 0o644,
              size: 150 << 20,
              digest: sha('not these bytes'),
            },
            frame: bomb,
          },
        ]),
      ]);
      const e = await env.expectRefused(env.ref(t), 'DELTA_FILE_MISMATCH', { json: false, sample: { rss: true } });
      assert.ok(rssMiB(e) > 0 && rssMiB(e) < 512, `peak RSS ${rssMiB(e)} MiB`);
    });
    it('tar path: a ~1 MB layer holding a 1 GiB file on a 400 MiB disk -> DISK_FULL while a reserve is still free, no snapshot', async () => {
      const t = tag();
      await writeImage(env.layout, t, [await gzipTarWithFill(osTarEntries(base), 'usr/share/fake/fill', GiB)]);
      let e;
      try {
        e = await env.expectRefused(env.ref(t), 'DISK_FULL', { json: false, sample: { fs: env.os.sysroot } });
      } finally {
        // A deleted subvolume's space comes back when btrfs's cleaner has run: wait for it, so the next cases have room.
        await run('btrfs', ['subvolume', 'sync', env.os.top]);
        await run('btrfs', ['filesystem', 'sync', env.os.top]);
      }
      const total = (await statfs(env.os.sysroot)).blocks * (await statfs(env.os.sysroot)).bsize;
      assert.ok(
        (e.ran.minFreeBytes ?? 0) > total * 0.02,
        `the update stopped before the disk was full: least free ${e.ran.minFreeBytes} of ${total} bytes`,
      );
    });
  });

  describe('layers that do not decode -> LAYER_CORRUPT naming the layer', () => {
    const corrupt = (b: Buffer, at: number) => {
      const c = Buffer.from(b);
      for (let i = at; i < Math.min(c.length - 8, at + 64); i++) c[i] = c[i]! ^ 0xa5;
      return c;
    };
    it('tar path: corrupt gzip, truncated gzip -> LAYER_CORRUPT', async () => {
      const tarBytes = makeTar(osTarEntries(base));
      const gz = gzipSync(tarBytes);
      for (const data of [corrupt(gz, 10), gz.subarray(0, Math.floor(gz.length * 0.7))]) {
        const t = tag();
        const layer = rawLayer(data, MediaType.OciLayerGzip);
        await writeImage(env.layout, t, [layer]);
        await env.expectRefused(env.ref(t), 'LAYER_CORRUPT', {
          message: new RegExp(`layer 1|${layer.desc.digest.slice(7, 19)}`),
        });
      }
    });
    it('tar path: corrupt zstd -> LAYER_CORRUPT', async () => {
      const z = zstdCompressSync(makeTar(osTarEntries(base)));
      const t = tag();
      const layer = rawLayer(corrupt(z, Math.floor(z.length / 2)), MediaType.OciLayerZstd);
      await writeImage(env.layout, t, [layer]);
      await env.expectRefused(env.ref(t), 'LAYER_CORRUPT', {
        message: new RegExp(`layer 1|${layer.desc.digest.slice(7, 19)}`),
      });
    });
    it('tar path: a gzip layer that holds no tar -> LAYER_CORRUPT', async () => {
      const t = tag();
      await writeImage(env.layout, t, [
        rawLayer(gzipSync(Buffer.from('this is not a tar archive\n'.repeat(100))), MediaType.OciLayerGzip),
      ]);
      await env.expectRefused(env.ref(t), 'LAYER_CORRUPT');
    });
    it('TOC path: a file frame that is not zstd -> LAYER_CORRUPT or DELTA_FILE_MISMATCH, naming the layer', async () => {
      const garbage = Buffer.from('garbage, not a zstd frame '.repeat(8));
      const t = tag();
      await writeImage(env.layout, t, [
        tocLayer([
          ...osTocEntries(base),
          {
            toc: { type: 'reg', name: 'usr/share/fake/garbage', mode: 0o644, size: 100, digest: sha('x'.repeat(100)) },
            frame: garbage,
          },
        ]),
      ]);
      await env.expectRefused(env.ref(t), ['LAYER_CORRUPT', 'DELTA_FILE_MISMATCH'], { message: /layer 1|sha256:/ });
    });
  });

  describe('tiu build bundles (zstd:chunked layers as tiu writes them) of hostile trees', () => {
    /** `tiu build` of the tree `files` + `extra` (written on disk: only what a filesystem can hold), into the env's layout. */
    const bundle = async (extra: OsFile[], o: { drop?: string } = {}) => {
      const t = tag();
      const tree = join(env.os.dir, `tree-${t}`);
      await mkdir(tree);
      for (const d of [
        'proc',
        'sys',
        'dev',
        'run',
        'tmp',
        'var',
        'home',
        'root',
        'opt',
        'srv',
        'usr/local',
        'boot/efi',
        'boot/writable',
        '.snapshots',
        'mnt',
      ])
        await mkdir(join(tree, d), { recursive: true });
      await writeTree(tree, [...(o.drop ? without(base, o.drop) : base), ...extra]);
      await buildBundle({ kind: 'directory', path: tree }, await OciLayoutTarget.open(env.layout), t, {
        sourceDateEpoch: T,
        layers: 2,
      });
      return env.ref(t);
    };
    it("a bundle with .tiu-etc-merge/, home/ and usr/local/ content: skipped, the admin's /etc and the subvolumes kept", async () => {
      const r = await env.expectSkipped(
        await bundle([
          { path: '.tiu-etc-merge/hostname', content: 'pwned\n' },
          { path: 'home/admin/.ssh/authorized_keys', content: 'ssh-ed25519 AAAA evil\n' },
          { path: 'usr/local/bin/evil', content: 'x', mode: 0o755 },
        ]),
      );
      assert.equal(await readFile(join(r.root, 'etc/hostname'), 'utf8'), 'admins-host\n');
      for (const d of ['home', 'usr/local'])
        assert.deepEqual(await readdir(join(r.root, d)), [], `${d} is the empty mount point`);
      assert.equal(await lstat(join(r.root, '.tiu-etc-merge')).catch(() => undefined), undefined);
    });
    it('a bundle with SELinux on and `.autorelabel -> <marker>/f`: skipped (tiu writes its own) or PATH_UNSAFE; the marker untouched', async () => {
      // (`usr/lib/tiu -> outside` cannot be bundled: tiu build refuses it itself.)
      const ref = await bundle([
        { path: 'etc/selinux/config', content: 'SELINUX=enforcing\n' },
        { path: '.autorelabel', symlink: env.marker.file },
      ]);
      const r = await env.expectSkippedOrRefused(ref, 'PATH_UNSAFE');
      if (r) assert.ok((await lstat(join(r.root, '.autorelabel'))).isFile(), '.autorelabel is a regular file');
    });
  });

  describe('OCI layouts', () => {
    it('a manifest without layers -> IMAGE_LAYERS_MISSING', async () => {
      const t = tag();
      await writeImage(env.layout, t, []);
      await env.expectRefused(env.ref(t), 'IMAGE_LAYERS_MISSING');
    });
    it('a layer blob in the layout whose bytes do not match its digest -> DIGEST_MISMATCH', async () => {
      const layout = join(env.os.dir, 'rotten');
      const img = await writeImage(layout, 'v', [tarLayer(osTarEntries(base))]);
      const blob = join(layout, 'blobs/sha256', img.layers[0]!.desc.digest.slice(7));
      const b = await readFile(blob);
      await writeFile(blob, corruptCopy(b));
      await env.expectRefused(`oci:${layout}:v`, 'DIGEST_MISMATCH');
    });
  });

  describe('a hostile registry on 127.0.0.1', () => {
    let reg: HostileRegistry;
    before(async () => {
      reg = await startHostileRegistry();
    });
    after(async () => {
      await reg?.stop();
    });
    it('a blob whose bytes differ from its digest -> DIGEST_MISMATCH, no snapshot', async () => {
      const img = imageOf([tarLayer(osTarEntries(base))]);
      reg.put('hostile/os', 'wrong', img);
      reg.faults.set(img.layers[0]!.desc.digest, { kind: 'wrong-bytes' });
      await env.expectRefused(`docker://${reg.host}/hostile/os:wrong`, 'DIGEST_MISMATCH');
    });
    it('a manifest without layers -> IMAGE_LAYERS_MISSING', async () => {
      reg.put('hostile/os', 'empty', imageOf([]));
      await env.expectRefused(`docker://${reg.host}/hostile/os:empty`, 'IMAGE_LAYERS_MISSING');
    });
    it('a body that drips one byte a second -> REGISTRY_TOO_SLOW (speed-time = 5 in tiu.conf; the default is 60 s), naming the registry', async () => {
      const img = imageOf([tarLayer(osTarEntries(base))]);
      reg.put('hostile/os', 'drip', img);
      reg.faults.set(img.layers[0]!.desc.digest, { kind: 'drip', everyMs: 1000 });
      const conf = join(env.os.sysroot, 'etc/tiu/tiu.conf');
      const old = await readFile(conf, 'utf8');
      await writeFile(conf, `${old}speed-time = 5\n`);
      try {
        const e = await env.expectRefused(`docker://${reg.host}/hostile/os:drip`, 'REGISTRY_TOO_SLOW', {
          json: false,
          timeoutMs: 45_000,
        });
        assert.match(e.message, new RegExp(reg.host.replace(/\./g, '\\.')), 'the message names the registry');
        assert.ok(e.ran.ms < 30_000, `ended after ${e.ran.ms} ms`);
      } finally {
        await writeFile(conf, old);
      }
    });
  });
});

function corruptCopy(b: Buffer): Buffer {
  const c = Buffer.from(b);
  c[Math.floor(c.length / 2)] = c[Math.floor(c.length / 2)]! ^ 0xff;
  return c;
}
