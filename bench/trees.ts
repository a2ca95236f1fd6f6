/**
 * The two Debian bookworm trees the benchmark updates between, built with debootstrap and
 * cached outside the repository (TIU_BENCH_CACHE, default /var/cache/tiu-bench), keyed by the
 * inputs that make them:
 *   base     = minbase + systemd + linux-image-amd64, bookworm (release) packages only;
 *   upgraded = base after `apt-get upgrade` with bookworm-updates and bookworm-security;
 * and a larger pair (`ensureTrees('large')`, about twice the bytes and three times the files:
 * compilers, kernel headers, Python, Perl, all locales) made the same way, for the figures that
 * must not grow with the image (peak RSS).
 * tree.json next to them records what was built: mirrors, the suites' Release dates, the
 * package sets (name=version), the packages the upgrade changed, debootstrap/upgrade wall
 * times, and the file-level difference between the trees.
 * Run alone: `node bench/trees.ts [large]` builds (or finds) them and prints tree.json.
 */
import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { lstat, mkdir, readdir, readFile, readlink, rm, writeFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { sh } from './lib/proc.ts';

export interface TreeDiff {
  files: { base: number; upgraded: number };
  added: number;
  removed: number;
  /** Entries present in both whose content, type, target, mode or owner differ. */
  changed: number;
  /** Bytes of regular-file content in added + changed files of the upgraded tree. */
  changedBytes: number;
}

export interface TreeInfo {
  key: string;
  dir: string;
  base: string;
  upgraded: string;
  inputs: TreeInputs;
  builtAt: string;
  release: Record<string, string>;
  /** Wall seconds of the debootstrap run and of the upgrade (cold: they downloaded). */
  debootstrapSeconds: number;
  upgradeSeconds: number;
  packages: { base: string[]; upgraded: string[] };
  upgradedPackages: string[];
  diff: TreeDiff;
  /** Bytes of each tree (sum of regular file sizes). */
  bytes: { base: number; upgraded: number };
}

export interface TreeInputs {
  recipe: number;
  suite: string;
  arch: string;
  variant: string;
  include: string[];
  mirror: string;
  securityMirror: string;
}

/** The mirrors this machine's apt uses (deb822 .sources or one-line .list), else deb.debian.org. */
export async function aptMirrors(): Promise<{ mirror: string; securityMirror: string }> {
  const files = ['/etc/apt/sources.list'];
  if (existsSync('/etc/apt/sources.list.d')) {
    for (const f of await readdir('/etc/apt/sources.list.d')) files.push(join('/etc/apt/sources.list.d', f));
  }
  const uris: string[] = [];
  for (const f of files) {
    let text: string;
    try {
      text = await readFile(f, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n')) {
      const m = /^\s*URIs:\s*(\S+)/.exec(line) ?? /^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)/.exec(line);
      if (m?.[1]) uris.push(m[1].replace(/\/$/, ''));
    }
  }
  const security = uris.find((u) => /\/debian-security$/.test(u));
  const main = uris.find((u) => /\/debian$/.test(u));
  return {
    mirror: process.env.TIU_BENCH_MIRROR ?? main ?? 'http://deb.debian.org/debian',
    securityMirror: process.env.TIU_BENCH_SECURITY_MIRROR ?? security ?? 'http://deb.debian.org/debian-security',
  };
}

export const cacheRoot = process.env.TIU_BENCH_CACHE ?? '/var/cache/tiu-bench';

/** The bench's image sizes: `base` is what every comparison uses, `large` the growth check. */
export type TreeSize = 'base' | 'large';

/** Packages the larger trees add: many files (headers, Perl and Python modules) and big ones. */
const LARGE_EXTRA = ['build-essential', 'linux-headers-amd64', 'python3', 'perl', 'git', 'locales-all'];

async function inputs(size: TreeSize): Promise<TreeInputs> {
  const include = ['systemd', 'systemd-sysv', 'linux-image-amd64'];
  return {
    recipe: 1,
    suite: 'bookworm',
    arch: 'amd64',
    variant: 'minbase',
    include: size === 'large' ? [...include, ...LARGE_EXTRA] : include,
    ...(await aptMirrors()),
  };
}

function log(msg: string): void {
  process.stderr.write(`bench: ${msg}\n`);
}

async function dpkgSet(root: string): Promise<string[]> {
  const r = await sh('chroot', [root, 'dpkg-query', '-W', '-f', '${Package}=${Version}\\n']);
  return r.stdout.split('\n').filter(Boolean).sort();
}

/** Suite -> "Version Date" from the InRelease files apt left in the tree. */
async function releaseInfo(root: string): Promise<Record<string, string>> {
  const dir = join(root, 'var/lib/apt/lists');
  const out: Record<string, string> = {};
  if (!existsSync(dir)) return out;
  for (const f of await readdir(dir)) {
    if (!/_(In)?Release$/.test(f)) continue;
    const text = await readFile(join(dir, f), 'utf8');
    const field = (n: string): string => new RegExp(`^${n}: (.*)$`, 'm').exec(text)?.[1] ?? '';
    out[field('Codename') + ' ' + field('Suite')] = `${field('Version')} ${field('Date')}`.trim();
  }
  return out;
}

/** What a built image would not carry: apt's downloaded lists and package caches. */
async function cleanApt(root: string): Promise<void> {
  await sh('chroot', [root, 'apt-get', 'clean']);
  for (const sub of ['var/lib/apt/lists', 'var/cache/apt']) {
    const d = join(root, sub);
    if (!existsSync(d)) continue;
    for (const f of await readdir(d)) {
      const p = join(d, f);
      if ((await lstat(p)).isFile()) await rm(p, { force: true });
    }
  }
}

async function withChrootMounts<T>(root: string, fn: () => Promise<T>): Promise<T> {
  const mounted: string[] = [];
  try {
    await sh('mount', ['-t', 'proc', 'proc', join(root, 'proc')]);
    mounted.push(join(root, 'proc'));
    await sh('mount', ['-t', 'sysfs', 'sysfs', join(root, 'sys')]);
    mounted.push(join(root, 'sys'));
    await sh('mount', ['--bind', '/dev', join(root, 'dev')]);
    mounted.push(join(root, 'dev'));
    await sh('mount', ['--bind', '/dev/pts', join(root, 'dev/pts')]);
    mounted.push(join(root, 'dev/pts'));
    return await fn();
  } finally {
    for (const m of mounted.reverse()) await sh('umount', [m]).catch(() => sh('umount', ['-l', m]));
  }
}

interface Entry {
  kind: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  target?: string;
}

async function walk(root: string): Promise<Map<string, Entry>> {
  const out = new Map<string, Entry>();
  const visit = async (rel: string): Promise<void> => {
    const names = await readdir(join(root, rel));
    for (const n of names) {
      const r = rel ? `${rel}/${n}` : n;
      const p = join(root, r);
      const st = await lstat(p);
      const kind = st.isFile() ? 'f' : st.isDirectory() ? 'd' : st.isSymbolicLink() ? 'l' : 'o';
      const e: Entry = { kind, mode: st.mode, uid: st.uid, gid: st.gid, size: kind === 'f' ? st.size : 0 };
      if (kind === 'l') e.target = await readlink(p);
      if (kind === 'o') e.target = String(st.rdev);
      out.set(r, e);
      if (kind === 'd') await visit(r);
    }
  };
  await visit('');
  return out;
}

async function fileHash(p: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(p)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** File-level difference of two trees (content by sha256 where sizes agree). */
export async function diffTrees(a: string, b: string): Promise<TreeDiff & { bytesA: number; bytesB: number }> {
  const [ea, eb] = await Promise.all([walk(a), walk(b)]);
  let added = 0,
    removed = 0,
    changed = 0,
    changedBytes = 0,
    bytesA = 0,
    bytesB = 0;
  for (const e of ea.values()) bytesA += e.size;
  for (const e of eb.values()) bytesB += e.size;
  for (const k of ea.keys()) if (!eb.has(k)) removed++;
  for (const [k, y] of eb) {
    const x = ea.get(k);
    if (!x) {
      added++;
      changedBytes += y.size;
      continue;
    }
    let differs =
      x.kind !== y.kind ||
      x.mode !== y.mode ||
      x.uid !== y.uid ||
      x.gid !== y.gid ||
      x.target !== y.target ||
      x.size !== y.size;
    if (!differs && y.kind === 'f') differs = (await fileHash(join(a, k))) !== (await fileHash(join(b, k)));
    if (differs) {
      changed++;
      changedBytes += y.size;
    }
  }
  return { files: { base: ea.size, upgraded: eb.size }, added, removed, changed, changedBytes, bytesA, bytesB };
}

/** Build (or find in the cache) both trees of one size. */
export async function ensureTrees(size: TreeSize = 'base'): Promise<TreeInfo> {
  const inp = await inputs(size);
  const key = createHash('sha256').update(JSON.stringify(inp)).digest('hex').slice(0, 12);
  const dir = join(cacheRoot, `bookworm-${key}`);
  const infoFile = join(dir, 'tree.json');
  if (existsSync(infoFile)) return JSON.parse(await readFile(infoFile, 'utf8')) as TreeInfo;

  await rm(dir, { recursive: true, force: true });
  await mkdir(join(cacheRoot, 'debs'), { recursive: true });
  const base = join(dir, 'base');
  const upgraded = join(dir, 'upgraded');
  await mkdir(dir, { recursive: true });

  log(`debootstrap ${inp.suite} (${inp.variant} + ${inp.include.join(',')}) from ${inp.mirror} into ${base}`);
  let t0 = Date.now();
  await sh('debootstrap', [
    `--variant=${inp.variant}`,
    `--arch=${inp.arch}`,
    `--include=${inp.include.join(',')}`,
    `--cache-dir=${join(cacheRoot, 'debs')}`,
    inp.suite,
    base,
    inp.mirror,
  ]);
  const debootstrapSeconds = (Date.now() - t0) / 1000;
  log(`debootstrap took ${debootstrapSeconds.toFixed(0)} s`);
  const release: Record<string, string> = await releaseInfo(base);
  const basePackages = await dpkgSet(base);
  await cleanApt(base);

  log(`copying base to upgraded and running apt-get upgrade (bookworm-updates, bookworm-security)`);
  await sh('cp', ['-a', '--reflink=auto', base, upgraded]);
  const sources = [
    `deb ${inp.mirror} ${inp.suite} main`,
    `deb ${inp.mirror} ${inp.suite}-updates main`,
    `deb ${inp.securityMirror} ${inp.suite}-security main`,
    '',
  ].join('\n');
  await writeFile(join(upgraded, 'etc/apt/sources.list'), sources);
  const policy = join(upgraded, 'usr/sbin/policy-rc.d');
  await writeFile(policy, '#!/bin/sh\nexit 101\n', { mode: 0o755 });
  t0 = Date.now();
  const env = { DEBIAN_FRONTEND: 'noninteractive', LC_ALL: 'C.UTF-8' };
  await withChrootMounts(upgraded, async () => {
    await sh('chroot', [upgraded, 'apt-get', 'update', '-q'], { env });
    Object.assign(release, await releaseInfo(upgraded));
    await sh('chroot', [upgraded, 'apt-get', '-y', '-q', '-o', 'Dpkg::Options::=--force-confold', 'upgrade'], { env });
  });
  const upgradeSeconds = (Date.now() - t0) / 1000;
  await rm(policy, { force: true });
  const upgradedPackagesSet = await dpkgSet(upgraded);
  await cleanApt(upgraded);
  log(`apt-get upgrade took ${upgradeSeconds.toFixed(0)} s; comparing the trees`);

  const baseSet = new Set(basePackages);
  const upgradedPackages = upgradedPackagesSet.filter((p) => !baseSet.has(p));
  const d = await diffTrees(base, upgraded);
  const info: TreeInfo = {
    key,
    dir,
    base,
    upgraded,
    inputs: inp,
    builtAt: new Date().toISOString(),
    release,
    debootstrapSeconds,
    upgradeSeconds,
    packages: { base: basePackages, upgraded: upgradedPackagesSet },
    upgradedPackages,
    diff: { files: d.files, added: d.added, removed: d.removed, changed: d.changed, changedBytes: d.changedBytes },
    bytes: { base: d.bytesA, upgraded: d.bytesB },
  };
  await writeFile(infoFile + '.tmp', JSON.stringify(info, null, 2) + '\n');
  await rename(infoFile + '.tmp', infoFile);
  return info;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const info = await ensureTrees(process.argv[2] === 'large' ? 'large' : 'base');
  const { packages: _p, ...rest } = info;
  console.log(JSON.stringify(rest, null, 2));
}
