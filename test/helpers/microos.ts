/**
 * A real btrfs on a loop device, laid out like openSUSE MicroOS and mounted as a sysroot:
 *
 *   @                              top-level of the root filesystem
 *   @/.snapshots                   snapper's subvolume, mounted at DIR/.snapshots
 *   @/.snapshots/1/snapshot        the root, read-only, the default subvolume, mounted at DIR
 *   @/.snapshots/1/snapshot/etc    /etc as a nested subvolume (transactional-update >= 5.0)
 *   @/var @/home @/root @/opt @/srv @/usr/local @/boot/writable   mounted under DIR
 *
 * with a snapper config in DIR/etc/snapper/configs/root, snapper's info.xml for snapshot 1, and
 * a small OS tree: os-release, passwd/group/shadow, a static-enough /bin/sh (the host's dash
 * and its libraries) so hooks can run in a chroot, and the pristine /etc copy in
 * /usr/lib/tiu/etc. teardown() unmounts and detaches whatever happened.
 */
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile, chmod, lutimes, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { run } from '../../src/host/exec.ts';
import { spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { atExit } from './at-exit.ts';

export const MICROOS_SUBVOLUMES = ['var', 'home', 'root', 'opt', 'srv', 'usr/local', 'boot/writable'] as const;

export interface MicroOS {
  dir: string;
  image: string;
  loop: string;
  /** The top-level subvolume (id 5) mounted here, for inspection. */
  top: string;
  /** The mounted system (the default subvolume), what `--sysroot` gets. */
  sysroot: string;
  snapshotPath(n: number): string;
  teardown(): Promise<void>;
}

/** Files of the fake OS (paths relative to the root). Directories are created as needed. */
export interface OsFile {
  path: string;
  content?: string | Uint8Array;
  mode?: number;
  symlink?: string;
}

export const BASE_OS_RELEASE = 'NAME="Fake MicroOS"\nID="fake-microos"\nVERSION_ID="1"\n';

export function baseEtc(): OsFile[] {
  return [
    {
      path: 'etc/passwd',
      content:
        'root:x:0:0:root:/root:/bin/sh\nmessagebus:x:499:499:User for D-Bus:/run/dbus:/usr/sbin/nologin\nadmin:x:1000:1000:Admin:/home/admin:/bin/sh\n',
    },
    { path: 'etc/group', content: 'root:x:0:\nmessagebus:x:499:\nadmin:x:1000:\n' },
    {
      path: 'etc/shadow',
      content: 'root:$6$salt$hash:19000::::::\nmessagebus:!:19000::::::\nadmin:$6$salt$adminhash:19000:0:99999:7:::\n',
      mode: 0o640,
    },
    { path: 'etc/hostname', content: 'microos\n' },
    { path: 'etc/motd', content: 'welcome to v1\n' },
    { path: 'etc/os-release', symlink: '../usr/lib/os-release' },
  ];
}

/** The host's dash, sleep and the libraries it needs, at the same paths, so `chroot ROOT /bin/sh` works. */
export async function shellFiles(): Promise<OsFile[]> {
  const out: OsFile[] = [
    { path: 'bin', symlink: 'usr/bin' },
    { path: 'sbin', symlink: 'usr/sbin' },
    { path: 'lib', symlink: 'usr/lib' },
    { path: 'lib64', symlink: 'usr/lib64' },
    { path: 'usr/bin/sh', symlink: 'dash' },
    { path: 'usr/bin/dash', content: await readFile('/usr/bin/dash'), mode: 0o755 },
    { path: 'usr/bin/sleep', content: await readFile('/usr/bin/sleep'), mode: 0o755 },
  ];
  const ldd = (await run('ldd', ['/usr/bin/dash'])).stdout + (await run('ldd', ['/usr/bin/sleep'])).stdout;
  for (const m of ldd.matchAll(/(\/\S+\.so[.\d]*)/g)) {
    const lib = m[1]!;
    const rel = lib.replace(/^\/(usr\/)?/, 'usr/');
    if (!out.some((f) => f.path === rel)) out.push({ path: rel, content: await readFile(lib), mode: 0o755 });
  }
  return out;
}

/** The v1 OS tree of the fake MicroOS. */
export async function baseOs(): Promise<OsFile[]> {
  return [
    ...(await shellFiles()),
    { path: 'usr/lib/os-release', content: BASE_OS_RELEASE },
    { path: 'usr/share/fake/hello', content: 'hello from v1\n' },
    { path: 'usr/share/fake/unchanged', content: 'x'.repeat(64 * 1024) },
    ...baseEtc(),
    // The pristine /etc the next three-way merge starts from.
    ...baseEtc().map((f) => ({ ...f, path: f.path.replace(/^etc\//, 'usr/lib/tiu/etc/') })),
  ];
}

/** v2 of the fake OS: a changed file, a new file, a removed file, a new /etc default. */
export async function v2Files(): Promise<OsFile[]> {
  const v1 = await baseOs();
  return [
    ...v1
      .filter((f) => f.path !== 'usr/share/fake/hello')
      .map((f) =>
        f.path === 'usr/lib/os-release'
          ? { ...f, content: 'NAME="Fake MicroOS"\nID="fake-microos"\nVERSION_ID="2"\n' }
          : f,
      )
      .map((f) => (f.path.endsWith('etc/motd') ? { ...f, content: 'welcome to v2\n' } : f))
      .map((f) => (f.path.endsWith('etc/hostname') ? { ...f, content: 'microos-v2\n' } : f))
      .map((f) =>
        f.path.endsWith('etc/passwd')
          ? { ...f, content: `${String(f.content)}chrony:x:498:498:Chrony Daemon:/var/lib/chrony:/usr/sbin/nologin\n` }
          : f,
      )
      .map((f) => (f.path.endsWith('etc/group') ? { ...f, content: `${String(f.content)}chrony:x:498:\n` } : f))
      .map((f) =>
        f.path.endsWith('etc/shadow') ? { ...f, content: `${String(f.content)}chrony:!:19000::::::\n` } : f,
      ),
    { path: 'usr/share/fake/new-in-v2', content: 'new\n' },
    { path: 'etc/new-default.conf', content: 'fresh\n' },
    { path: 'usr/lib/tiu/etc/new-default.conf', content: 'fresh\n' },
  ];
}

/**
 * Write `files` below `root`, every one with the same mtime (the whole second the write began):
 * a tree written across a second boundary would otherwise give /etc/X and its copy in
 * /usr/lib/tiu/etc different mtimes, and the build's copy of /etc (which carries /etc's) would
 * then differ from the tree by a second (update-sources failed so once in CI).
 */
export async function writeTree(root: string, files: OsFile[]): Promise<void> {
  const at = Math.floor(Date.now() / 1000);
  for (const f of files) {
    const p = join(root, f.path);
    await mkdir(dirname(p), { recursive: true });
    if (f.symlink !== undefined) {
      await symlink(f.symlink, p);
      await lutimes(p, at, at);
    } else {
      await writeFile(p, f.content ?? '');
      await chmod(p, f.mode ?? 0o644);
      await utimes(p, at, at);
    }
  }
}

function infoXml(num: number, description: string): string {
  return `<?xml version="1.0"?>\n<snapshot>\n  <type>single</type>\n  <num>${num}</num>\n  <date>2026-01-01 00:00:00</date>\n  <description>${description}</description>\n</snapshot>\n`;
}

export const SNAPPER_CONFIG_TEMPLATE = '/usr/share/snapper/config-templates/default';

/** snapper's `root` config for the MicroOS layout (the files to write below the root). */
export async function snapperConfigFiles(): Promise<OsFile[]> {
  const template = await readFile(SNAPPER_CONFIG_TEMPLATE, 'utf8');
  return [
    {
      path: 'etc/snapper/configs/root',
      content: template
        .replace(/^SUBVOLUME=.*$/m, 'SUBVOLUME="/"')
        .replace(/^TIMELINE_CREATE=.*$/m, 'TIMELINE_CREATE="no"'),
    },
    { path: 'etc/default/snapper', content: 'SNAPPER_CONFIGS="root"\n' },
  ];
}

/** `snapper: false`: no snapper config (tiu then works with plain btrfs). */
export async function createMicroOS(
  opts: { sizeMiB?: number; files?: OsFile[]; snapper?: boolean } = {},
): Promise<MicroOS> {
  const dir = await mkdtemp(join(tmpdir(), 'tiu-microos-'));
  const image = join(dir, 'disk.img');
  const top = join(dir, 'top');
  const sysroot = join(dir, 'sysroot');
  let loop = '';
  const mounted: string[] = [];
  const env: MicroOS = {
    dir,
    image,
    get loop() {
      return loop;
    },
    top,
    sysroot,
    snapshotPath: (n) => join(sysroot, '.snapshots', String(n), 'snapshot'),
    async teardown() {
      // Whatever is still mounted under the sysroot (hook chroots left by a killed process too).
      for (const m of [sysroot, top]) await run('umount', ['-R', m], { okExitCodes: [0, 1, 32] });
      for (const m of [sysroot, top]) await run('umount', ['-R', '-l', m], { okExitCodes: [0, 1, 32] });
      if (loop) await run('losetup', ['-d', loop], { okExitCodes: [0, 1] });
      await rm(dir, { recursive: true, force: true });
      forget();
    },
  };
  // The same, synchronously, if the process ends before teardown() ran (a throwing after hook,
  // SIGTERM): lazy unmounts first, so the removal never walks into the test filesystem.
  const forget = atExit(() => {
    const quiet = { stdio: 'ignore' } as const;
    for (const m of [sysroot, top]) spawnSync('umount', ['-R', '-l', m], quiet);
    if (loop) spawnSync('losetup', ['-d', loop], quiet);
    rmSync(dir, { recursive: true, force: true });
  });
  try {
    await run('truncate', ['-s', `${opts.sizeMiB ?? 300}M`, image]);
    loop = (await run('losetup', ['-f', '--show', image])).stdout.trim();
    await run('mkfs.btrfs', ['-q', loop]);
    await mkdir(top);
    await mkdir(sysroot);
    await run('mount', [loop, top]);
    mounted.push(top);
    const at = join(top, '@');
    await run('btrfs', ['-q', 'subvolume', 'create', at]);
    await run('btrfs', ['-q', 'subvolume', 'create', join(at, '.snapshots')]);
    await mkdir(join(at, '.snapshots/1'));
    await mkdir(join(at, 'usr'));
    await mkdir(join(at, 'boot'));
    for (const s of MICROOS_SUBVOLUMES) await run('btrfs', ['-q', 'subvolume', 'create', join(at, s)]);
    const snap = join(at, '.snapshots/1/snapshot');
    await run('btrfs', ['-q', 'subvolume', 'create', snap]);
    await run('btrfs', ['-q', 'subvolume', 'create', join(snap, 'etc')]);
    for (const d of [...MICROOS_SUBVOLUMES, '.snapshots', 'boot/efi', 'dev', 'proc', 'sys', 'run', 'tmp', 'mnt']) {
      await mkdir(join(snap, d), { recursive: true });
    }
    await writeTree(snap, opts.files ?? (await baseOs()));
    if (opts.snapper !== false) await writeTree(snap, await snapperConfigFiles());
    await writeFile(join(at, '.snapshots/1/info.xml'), infoXml(1, 'first root filesystem'));
    await run('btrfs', ['property', 'set', '-ts', snap, 'ro', 'true']);
    const show = await run('btrfs', ['subvolume', 'show', snap]);
    const id = /Subvolume ID:\s*(\d+)/.exec(show.stdout)![1]!;
    await run('btrfs', ['subvolume', 'set-default', id, top]);
    await run('mount', [loop, sysroot]);
    mounted.push(sysroot);
    await run('mount', ['-o', 'subvol=@/.snapshots', loop, join(sysroot, '.snapshots')]);
    for (const s of MICROOS_SUBVOLUMES) await run('mount', ['-o', `subvol=@/${s}`, loop, join(sysroot, s)]);
    return env;
  } catch (e) {
    await env.teardown();
    throw e;
  }
}
