import assert from 'node:assert/strict';
import {
  chmod,
  lstat,
  mkdir,
  mkdtemp,
  readFile,
  readlink,
  readdir,
  rm,
  stat,
  symlink,
  utimes,
  writeFile,
  link,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isTiuError } from '../../src/errors.ts';
import { RootedDir } from '../../src/deploy/rooted.ts';
import { checkXattrName, xattrNameProblem } from '../../src/host/xattr-names.ts';
import { removeXattr, setXattrs } from '../../src/host/xattr.ts';

const unsafe = (path?: string) => (e: unknown) =>
  isTiuError(e, 'PATH_UNSAFE') && (path === undefined || (e.details.path as string).includes(path));

describe('deploy/rooted: RootedDir', () => {
  let dir: string;
  let root: string;
  let outside: string;
  let rd: RootedDir;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tiu-rooted-'));
    root = join(dir, 'root');
    outside = join(dir, 'outside');
    await mkdir(join(root, 'usr/lib'), { recursive: true });
    await mkdir(join(outside, 'etc'), { recursive: true });
    await writeFile(join(outside, 'file'), 'outside\n');
    await writeFile(join(root, 'usr/lib/os-release'), 'ID=x\n');
    rd = await RootedDir.open(root);
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('opens only a real directory given by an absolute path', async () => {
    await symlink(root, join(dir, 'link'));
    await assert.rejects(RootedDir.open(join(dir, 'link')), (e: unknown) => isTiuError(e, 'APPLY_ROOT_INVALID'));
    await assert.rejects(RootedDir.open(join(outside, 'file')), (e: unknown) => isTiuError(e, 'APPLY_ROOT_INVALID'));
    await assert.rejects(RootedDir.open('relative/root'), unsafe());
  });

  it("lstatInRoot follows the tree's own symlinks as a chroot would, never out of the root", async () => {
    await mkdir(join(root, 'usr/bin'), { recursive: true });
    await writeFile(join(root, 'usr/bin/sh'), '#!\n');
    await symlink('usr/bin', join(root, 'bin')); // merged /usr, relative
    await symlink('/usr/bin', join(root, 'abs')); // absolute: the root's /usr/bin, not the host's
    await symlink('../../../../../usr/lib', join(root, 'usr/up')); // `..` stops at the root
    await symlink(join(outside, 'file'), join(root, 'out')); // the host's file: not in the tree
    await symlink('loop2', join(root, 'loop1'));
    await symlink('loop1', join(root, 'loop2'));
    assert.ok((await rd.lstatInRoot('/bin/sh'))?.isFile());
    assert.ok((await rd.lstatInRoot('abs/sh'))?.isFile());
    assert.ok((await rd.lstatInRoot('/usr/up/os-release'))?.isFile());
    assert.equal(await rd.lstatInRoot('/out'), undefined);
    assert.equal(await rd.lstatInRoot('/bin/sh/x'), undefined);
    assert.equal(await rd.lstatInRoot('/etc/passwd'), undefined);
    await assert.rejects(rd.lstatInRoot('/loop1'), unsafe());
  });

  it('refuses absolute paths and `..` components; `.` and empty components are dropped', async () => {
    await assert.rejects(rd.readFile('/etc/passwd'), unsafe());
    await assert.rejects(rd.readFile('usr/../../outside/file'), unsafe());
    await assert.rejects(rd.writeFileAtomic('../outside/file', 'x'), unsafe());
    await assert.rejects(rd.mkdir('usr/..'), unsafe());
    assert.equal((await rd.readFile('./usr//lib/./os-release')).toString(), 'ID=x\n');
    assert.equal(await readFile(join(outside, 'file'), 'utf8'), 'outside\n');
  });

  it('a symlink component is PATH_UNSAFE naming the path, for reads and writes, even when it points inside', async () => {
    await symlink(join(outside), join(root, 'usr/lib/tiu'));
    await symlink('lib', join(root, 'usr/inner'));
    for (const p of ['usr/lib/tiu/etc', 'usr/inner/os-release']) {
      await assert.rejects(rd.isDir(p), unsafe(p));
      await assert.rejects(rd.lstat(p), unsafe(p));
      await assert.rejects(rd.readFile(p), unsafe(p));
      await assert.rejects(rd.writeFileAtomic(p, 'x'), unsafe(p));
      await assert.rejects(rd.mkdir(p), unsafe(p));
      await assert.rejects(rd.readdir(p), unsafe(p));
    }
    await assert.rejects(rd.copyTree(rd, 'usr/lib', 'usr/lib/tiu/etc'), unsafe('usr/lib/tiu/etc'));
    assert.deepEqual(await readdir(join(outside, 'etc')), []);
    assert.deepEqual((await readdir(outside)).sort(), ['etc', 'file']);
  });

  it('a file where a directory must be is PATH_UNSAFE; a missing parent is just missing', async () => {
    await assert.rejects(rd.mkdir('usr/lib/os-release/x'), unsafe('usr/lib/os-release/x'));
    assert.equal(await rd.lstat('no/such/file'), undefined);
    assert.equal(await rd.isDir('no/such'), false);
    assert.equal(await rd.readFileIfExists('no/such/file'), undefined);
  });

  it('last components: reads refuse a symlink, writes replace it (never writing through), touchDir refuses it', async () => {
    await symlink(join(outside, 'file'), join(root, '.autorelabel'));
    await symlink(outside, join(root, 'sys'));
    await assert.rejects(rd.readFile('.autorelabel'), unsafe('.autorelabel'));
    assert.ok((await rd.lstat('.autorelabel'))?.isSymbolicLink());
    await rd.writeFileAtomic('.autorelabel', '', { mode: 0o644 });
    assert.ok((await lstat(join(root, '.autorelabel'))).isFile());
    assert.equal(await readFile(join(outside, 'file'), 'utf8'), 'outside\n');
    const before = (await stat(outside)).mtimeMs;
    await assert.rejects(rd.touchDir('sys'), unsafe('sys'));
    await assert.rejects(rd.touchDir('usr/lib/os-release'), unsafe());
    await assert.rejects(rd.touchDir('missing'), unsafe('missing'));
    assert.equal((await stat(outside)).mtimeMs, before);
    await assert.rejects(rd.writeFileAtomic('usr', 'x'), unsafe('usr'));
    // no temporary names left behind by the refused or finished writes
    assert.deepEqual(
      (await readdir(root)).filter((n) => n.startsWith('.tiu-tmp-')),
      [],
    );
  });

  it('writeFileAtomic sets mode and owner; mkdir -p makes real directories; touchDir sets times', async () => {
    await rd.mkdir('a/b/c', 0o750);
    assert.ok((await lstat(join(root, 'a/b/c'))).isDirectory());
    await rd.writeFileAtomic('a/b/c/f', 'data', { mode: 0o640, uid: process.getuid!(), gid: process.getgid!() });
    const st = await lstat(join(root, 'a/b/c/f'));
    assert.equal(st.mode & 0o7777, 0o640);
    assert.equal(await readFile(join(root, 'a/b/c/f'), 'utf8'), 'data');
    const t = new Date('2030-01-02T03:04:05Z');
    await rd.touchDir('usr', t);
    assert.equal((await stat(join(root, 'usr'))).mtimeMs, t.getTime());
  });

  it('copyTree keeps types, modes, times, hardlinks and symlinks (not followed), and refuses to copy over something', async () => {
    const src = join(root, 'etc');
    await mkdir(join(src, 'sub'), { recursive: true });
    await writeFile(join(src, 'a.conf'), 'A\n');
    await chmod(join(src, 'a.conf'), 0o600);
    await link(join(src, 'a.conf'), join(src, 'sub/a-link'));
    await symlink(join(outside, 'file'), join(src, 'abs-link'));
    await symlink('../usr/lib/os-release', join(src, 'os-release'));
    const t = new Date('2020-05-06T07:08:09Z');
    await utimes(join(src, 'a.conf'), t, t);
    await utimes(join(src, 'sub'), t, t);
    await rd.mkdir('usr/lib/tiu');
    const r = await rd.copyTree(rd, 'etc', 'usr/lib/tiu/etc');
    const dst = join(root, 'usr/lib/tiu/etc');
    assert.equal(r.entries, 6);
    assert.equal(await readFile(join(dst, 'a.conf'), 'utf8'), 'A\n');
    const a = await lstat(join(dst, 'a.conf'));
    assert.equal(a.mode & 0o7777, 0o600);
    assert.equal(a.mtimeMs, t.getTime());
    assert.equal((await lstat(join(dst, 'sub/a-link'))).ino, a.ino);
    assert.equal((await lstat(join(dst, 'sub'))).mtimeMs, t.getTime());
    assert.equal(await readlink(join(dst, 'abs-link')), join(outside, 'file'));
    assert.equal(await readlink(join(dst, 'os-release')), '../usr/lib/os-release');
    await assert.rejects(rd.copyTree(rd, 'etc', 'usr/lib/tiu/etc'), unsafe('usr/lib/tiu/etc'));
    await symlink(outside, join(root, 'etc-link'));
    await assert.rejects(rd.copyTree(rd, 'etc-link', 'copy'), unsafe('etc-link'));
    assert.equal(await rd.lstat('copy'), undefined);
  });
});

describe('xattr names (no text-format injection)', () => {
  it('accepts the namespaces tiu sets', () => {
    for (const n of [
      'user.x',
      'trusted.overlay.opaque',
      'security.selinux',
      'security.capability',
      'system.posix_acl_access',
      'system.posix_acl_default',
    ])
      assert.equal(xattrNameProblem(n), undefined, n);
  });
  it('refuses other namespaces, control characters, whitespace, = and long names with XATTR_INVALID naming file and attribute', () => {
    for (const n of [
      '',
      'user.',
      'system.nfs4_acl',
      'btrfs.compression',
      'foo',
      'user.a\n# file: /x',
      'user.a b',
      'user.a=b',
      'user.\u00e9',
      'user.a\tb',
      'user.' + 'a'.repeat(251),
    ]) {
      assert.throws(
        () => checkXattrName('usr/bin/x', n),
        (e: unknown) =>
          isTiuError(e, 'XATTR_INVALID') && e.details.path === 'usr/bin/x' && e.details.name === n.slice(0, 300),
        JSON.stringify(n),
      );
    }
    assert.equal(xattrNameProblem('user.' + 'a'.repeat(250)), undefined);
    assert.equal(xattrNameProblem('btrfs.compression', { anyNamespace: true }), undefined);
  });
  it('setXattrs refuses a name with a newline and `# file: /x` before running setfattr, and a value over 64 KiB', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'tiu-xattr-'));
    try {
      const victim = join(dir, 'victim');
      await writeFile(victim, 'v');
      const evil = `user.a\n# file: ${victim}\nuser.evil`;
      await assert.rejects(
        setXattrs([{ path: join(dir, 'f'), set: { [evil]: Buffer.from('x') } }]),
        (e: unknown) => isTiuError(e, 'XATTR_INVALID') && e.details.name === evil && e.details.path === join(dir, 'f'),
      );
      await assert.rejects(
        setXattrs([{ path: join(dir, 'f'), set: { 'user.big': Buffer.alloc(64 * 1024 + 1) } }]),
        (e: unknown) => isTiuError(e, 'XATTR_INVALID'),
      );
      await assert.rejects(removeXattr(victim, 'user.a\n-x'), (e: unknown) => isTiuError(e, 'XATTR_INVALID'));
      assert.equal(await readFile(victim, 'utf8'), 'v');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
