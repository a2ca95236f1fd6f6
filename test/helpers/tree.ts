/**
 * Test trees: a small but nasty OS-like tree (needs root: devices, owners), and a snapshot of
 * any tree (lstat + xattrs + content hash, names as bytes) to compare two trees.
 */
import { createHash } from 'node:crypto';
import {
  chmod,
  chown,
  link,
  lstat,
  mkdir,
  readdir,
  readFile,
  readlink,
  symlink,
  truncate,
  utimes,
  writeFile,
  open,
  lutimes,
} from 'node:fs/promises';
import { join } from 'node:path';
import { run } from '../../src/host/exec.ts';
import { readTreeXattrs } from '../../src/host/xattr.ts';

export interface NodeInfo {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtimeNs: bigint;
  link?: string;
  rdev?: string;
  sha?: string;
  xattrs: string;
  ino: string;
}

/** path (binary string, relative) -> info. */
export async function snapshotTree(root: string): Promise<Map<string, NodeInfo>> {
  const out = new Map<string, NodeInfo>();
  const xattrs = await readTreeXattrs(root);
  const rootBuf = Buffer.from(root, 'utf8');
  const walk = async (rel: string) => {
    const dir = rel === '' ? rootBuf : Buffer.concat([rootBuf, Buffer.from('/'), Buffer.from(rel, 'latin1')]);
    for (const nameBuf of await readdir(dir, { encoding: 'buffer' })) {
      const name = nameBuf.toString('latin1');
      const p = rel === '' ? name : `${rel}/${name}`;
      const abs = Buffer.concat([rootBuf, Buffer.from('/'), Buffer.from(p, 'latin1')]);
      const st = await lstat(abs, { bigint: true });
      const type = st.isFile()
        ? 'reg'
        : st.isDirectory()
          ? 'dir'
          : st.isSymbolicLink()
            ? 'symlink'
            : st.isCharacterDevice()
              ? 'char'
              : st.isBlockDevice()
                ? 'block'
                : st.isFIFO()
                  ? 'fifo'
                  : 'other';
      const info: NodeInfo = {
        type,
        mode: Number(st.mode & 0o7777n),
        uid: Number(st.uid),
        gid: Number(st.gid),
        size: type === 'reg' ? Number(st.size) : 0,
        mtimeNs: st.mtimeNs,
        xattrs: (xattrs.get(p) ?? []).map(([k, v]) => `${k}=${v.toString('base64')}`).join(','),
        ino: `${st.dev}:${st.ino}`,
      };
      if (type === 'symlink') info.link = (await readlink(abs, { encoding: 'buffer' })).toString('latin1');
      if (type === 'char' || type === 'block') info.rdev = String(st.rdev);
      if (type === 'reg')
        info.sha = createHash('sha256')
          .update(await readFile(abs))
          .digest('hex');
      out.set(p, info);
      if (type === 'dir') await walk(p);
    }
  };
  await walk('');
  return out;
}

/** Hardlink groups as sorted path lists joined by '|', keyed by path. */
export function linkGroups(
  tree: Map<string, NodeInfo>,
  mapPath: (p: string) => string = (p) => p,
): Map<string, string> {
  const byIno = new Map<string, string[]>();
  for (const [p, i] of tree) if (i.type === 'reg') byIno.set(i.ino, [...(byIno.get(i.ino) ?? []), mapPath(p)]);
  const out = new Map<string, string>();
  for (const paths of byIno.values())
    if (paths.length > 1) for (const p of paths) out.set(p, [...paths].sort().join('|'));
  return out;
}

export interface CompareOptions {
  /** Skip comparing mtimes of symlinks (some extractors don't set them). */
  ignoreSymlinkMtime?: boolean;
  /** Compare mtimes at whole seconds only. */
  secondsOnly?: boolean;
  /** Ignore directory mtimes. */
  ignoreDirMtime?: boolean;
  /** Leave these xattrs out of the comparison. */
  ignoreXattrs?: string[];
  /**
   * Allow an mtime with a fraction of a second to differ by less than this many nanoseconds
   * (whole-second mtimes must still be equal): Node's utimes takes seconds as a double, which
   * holds about 240 ns at today's dates (docs/bundle-format.md, "Times").
   */
  subsecondToleranceNs?: bigint;
}

/** Differences between `expected` and `actual` (same keys), as readable lines. */
export function diffTrees(
  expected: Map<string, NodeInfo>,
  actual: Map<string, NodeInfo>,
  opts: CompareOptions = {},
): string[] {
  const out: string[] = [];
  const show = (p: string) => JSON.stringify(Buffer.from(p, 'latin1').toString('utf8'));
  for (const [p, e] of expected) {
    const a = actual.get(p);
    if (!a) {
      out.push(`missing ${show(p)}`);
      continue;
    }
    const drop = (x: string) =>
      x
        .split(',')
        .filter((kv) => kv !== '' && !opts.ignoreXattrs?.includes(kv.slice(0, kv.indexOf('='))))
        .join(',');
    for (const k of ['type', 'mode', 'uid', 'gid', 'size', 'link', 'rdev', 'sha', 'xattrs'] as const) {
      if (k === 'xattrs' ? drop(e.xattrs) !== drop(a.xattrs) : e[k] !== a[k])
        out.push(`${show(p)}: ${k} ${String(e[k])} != ${String(a[k])}`);
    }
    const skipTime = (e.type === 'symlink' && opts.ignoreSymlinkMtime) || (e.type === 'dir' && opts.ignoreDirMtime);
    if (!skipTime) {
      const et = opts.secondsOnly ? e.mtimeNs / 1_000_000_000n : e.mtimeNs;
      const at = opts.secondsOnly ? a.mtimeNs / 1_000_000_000n : a.mtimeNs;
      const d = et > at ? et - at : at - et;
      const tolerated =
        opts.subsecondToleranceNs !== undefined && e.mtimeNs % 1_000_000_000n !== 0n && d < opts.subsecondToleranceNs;
      if (d !== 0n && !tolerated) out.push(`${show(p)}: mtime ${e.mtimeNs} != ${a.mtimeNs}`);
    }
  }
  for (const p of actual.keys()) if (!expected.has(p)) out.push(`unexpected ${show(p)}`);
  return out;
}

const T0 = 1_700_000_000;

async function setTime(p: string | Buffer, sec: number, nsec = 0, isLink = false): Promise<void> {
  const t = sec + nsec / 1e9;
  if (isLink) await lutimes(p, t, t);
  else await utimes(p, t, t);
}

/**
 * A MicroOS-like tree with every awkward thing tiu must keep. Needs root.
 */
export async function makeNastyTree(root: string): Promise<void> {
  const d = async (p: string, mode = 0o755, uid = 0, gid = 0) => {
    await mkdir(join(root, p), { recursive: true });
    await chmod(join(root, p), mode);
    await chown(join(root, p), uid, gid);
  };
  const f = async (p: string | Buffer, content: string | Buffer, mode = 0o644, uid = 0, gid = 0) => {
    const abs = typeof p === 'string' ? join(root, p) : Buffer.concat([Buffer.from(root + '/'), p]);
    await writeFile(abs, content);
    await chown(abs, uid, gid);
    await chmod(abs, mode);
  };
  for (const dir of [
    'etc/ssh',
    'usr/bin',
    'usr/sbin',
    'usr/lib/devs',
    'usr/lib/modules/6.1.0/kernel',
    'usr/share/doc/pkg',
    'usr/share/odd',
    'usr/local/bin',
    'var/lib/foo',
    'var/log',
    'var/cache',
    'run/user',
    'tmp',
    'proc',
    'sys',
    'dev',
    'home/user',
    'root',
    'opt/x',
    'srv',
    '.snapshots/1',
    'boot/grub2/x86_64-efi',
    'boot/writable',
  ])
    await d(dir);
  await chmod(join(root, 'tmp'), 0o1777);
  await chmod(join(root, 'root'), 0o700);
  await f(
    'usr/lib/os-release',
    'NAME="openSUSE MicroOS"\nID="opensuse-microos"\nID_LIKE="suse opensuse opensuse-tumbleweed"\nVERSION_ID="20261126"\nPRETTY_NAME="openSUSE MicroOS"\nIMAGE_VERSION="20261126.1"\n',
  );
  await symlink('../usr/lib/os-release', join(root, 'etc/os-release'));
  await f('etc/hostname', 'microos\n');
  await f('etc/ssh/sshd_config', 'PermitRootLogin no\n', 0o600);
  await f('etc/shadow', 'root:!:19000::::::\n', 0o640, 0, 15);
  await f('usr/bin/ping', Buffer.from('\x7fELF ping binary'), 0o755);
  await run('setfattr', [
    '-n',
    'security.capability',
    '-v',
    '0sAQAAAgAgAAAAAAAAAAAAAAAAAAA=',
    join(root, 'usr/bin/ping'),
  ]);
  await run('setfattr', [
    '-n',
    'security.selinux',
    '-v',
    'system_u:object_r:ping_exec_t:s0',
    join(root, 'usr/bin/ping'),
  ]);
  await f('usr/bin/su', 'su binary', 0o4755);
  await f('usr/sbin/grpprog', 'sgid binary', 0o2711, 0, 5);
  await run('setfattr', ['-n', 'user.comment', '-v', '0x00ff01fe', join(root, 'usr/sbin')]);
  await f('usr/lib/libfoo.so.1', 'library v1');
  await symlink('libfoo.so.1', join(root, 'usr/lib/libfoo.so'));
  await symlink('/nonexistent/target', join(root, 'usr/lib/dangling'));
  await symlink('x'.repeat(120) + '/' + 'y'.repeat(60), join(root, 'usr/lib/longlink'));
  await f('usr/lib/modules/6.1.0/kernel/big.ko', Buffer.alloc(5 * 1024 * 1024 + 7, 'kernel module bytes '));
  // Sparse: 6 MiB, data at 1 MiB and at the end.
  const sparse = join(root, 'usr/lib/sparse.img');
  const fh = await open(sparse, 'w');
  await fh.write(Buffer.from('island'), 0, 6, 1024 * 1024);
  await fh.close();
  await truncate(sparse, 6 * 1024 * 1024);
  // Hardlinks across groups and inside one.
  await f('usr/lib/hl-a', 'hardlinked content');
  await link(join(root, 'usr/lib/hl-a'), join(root, 'usr/share/doc/hl-b'));
  await link(join(root, 'usr/lib/hl-a'), join(root, 'usr/bin/hl-c'));
  await run('mknod', [join(root, 'usr/lib/devs/null'), 'c', '1', '3']);
  await run('mknod', [join(root, 'usr/lib/devs/loop0'), 'b', '7', '0']);
  await run('mknod', [join(root, 'usr/lib/devs/bigminor'), 'c', '240', '300000']);
  await run('mkfifo', [join(root, 'usr/lib/devs/fifo')]);
  await chown(join(root, 'usr/lib/devs/null'), 0, 5);
  await chmod(join(root, 'usr/lib/devs/null'), 0o666);
  // Names: non-UTF-8, newline, spaces, UTF-8, very long.
  await f(Buffer.from('usr/share/odd/latin1-\xe9\xff-name', 'latin1'), 'odd bytes');
  await f(Buffer.from('usr/share/odd/new\nline', 'latin1'), 'newline');
  await f('usr/share/odd/with space', 'space');
  await f('usr/share/odd/ünïcödé', 'unicode');
  const deep = 'usr/share/odd/' + 'd'.repeat(90) + '/' + 'e'.repeat(90);
  await d(deep);
  await f(deep + '/' + 'f'.repeat(150), 'long name');
  // Owners nobody has in /etc/passwd, and one beyond the 7-octal-digit ustar field.
  await f('usr/share/doc/pkg/owned', 'owned', 0o640, 12345, 54321);
  await f('usr/share/doc/pkg/bigowner', 'big uid', 0o644, 3000000, 3000001);
  await f('usr/share/doc/pkg/empty', '');
  await d('usr/share/doc/pkg/emptydir', 0o750, 7, 8);
  await d('usr/share/sticky', 0o1777);
  // /var content moves to the factory; runtime dirs are left out.
  await f('var/lib/foo/state', 'factory state');
  await symlink('../run', join(root, 'var/run'));
  await f('run/user/pid', '1');
  await f('tmp/junk', 'junk');
  await f('home/user/.bashrc', 'bashrc');
  await f('root/.profile', 'profile');
  await f('opt/x/y', 'opt');
  await f('usr/local/bin/z', 'local');
  await f('boot/grub2/x86_64-efi/normal.mod', 'mod');
  await f('boot/grub2/grub.cfg', 'grub config');
  await run('mknod', [join(root, 'dev/null'), 'c', '1', '3']);
  await f('.snapshots/1/info.xml', 'x');
  // Times: old, sub-second, and future-ish; directories last (writing changes them).
  const all = await snapshotTree(root);
  let i = 0;
  for (const [p, info] of [...all].reverse()) {
    const abs = Buffer.concat([Buffer.from(root + '/'), Buffer.from(p, 'latin1')]);
    const sec = p.endsWith('su') ? 315532800 : T0 + (i++ % 50) * 3600;
    await setTime(abs, sec, i % 3 === 0 ? 123456789 : 0, info.type === 'symlink');
  }
  await setTime(root, T0);
}
