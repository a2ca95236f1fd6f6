/**
 * The harness for hostile-input tests ("refused cleanly"): a real MicroOS-layout btrfs
 * (createMicroOS), a signature policy that accepts anything (as an admin would for a USB stick,
 * or a compromised signing key would allow), a marker directory OUTSIDE the sysroot that hostile
 * images aim their symlinks at, and the real CLI (`bin/tiu update --sysroot`) as a child process,
 * so the exit code, the `tiu: error: ... [CODE]` line and the `--json` error are what a user sees.
 *
 * `world()` records what must not change: the btrfs default subvolume, the .snapshots listing,
 * a hash of every path below the sysroot (the booted snapshot with its nested /etc, every
 * preserved subvolume mounted there, .snapshots; tiu's own cache under var/cache/tiu excluded)
 * with type, mode, owner, size, content sha256, symlink target and xattrs, the same for the
 * marker directory, and the lines of /proc/self/mountinfo below the test's directory.
 * `expectRefused` and `expectSkipped` run an update and compare.
 *
 * Image builders write plain tar, gzip and zstd layers (any tar header, PAX records included:
 * makeTar) and zstd:chunked layers with a crafted table of contents (chunkedLayer) into an OCI
 * layout; `startHostileRegistry` serves them over http on 127.0.0.1 with faults a real registry
 * would not make (wrong bytes for a digest, a body that drips).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, lstat, mkdir, readdir, readFile, readlink, statfs, symlink, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { constants as zc, createGzip, createZstdCompress, gzipSync, zstdCompressSync } from 'node:zlib';
import { OciLayoutTarget } from '../../src/content/oci-layout.ts';
import { exitStatusOf } from '../../src/error-codes.ts';
import type { ErrorCode } from '../../src/errors.ts';
import { run } from '../../src/host/exec.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import type { Descriptor, Digest } from '../../src/oci/types.ts';
import { chunkedLayer, type CraftedEntry } from './chunked-layer.ts';
import { createMicroOS, shellFiles, v2Files, type MicroOS, type OsFile } from './microos.ts';
import { makeTar, type TarSpec } from './tarball.ts';
import { MOUNT_POINT_DIRS } from './update-deps.ts';

export const TIU = new URL('../../bin/tiu', import.meta.url).pathname;
const sha = (b: Uint8Array | string): Digest => `sha256:${createHash('sha256').update(b).digest('hex')}`;

// ---------------------------------------------------------------------------------------------
// Running the CLI

export interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
  /** Killed by the runner's deadline. */
  timedOut: boolean;
  /** With `sample`: the child's peak RSS (VmHWM, KiB) as last seen, polled every 50 ms. */
  peakRssKiB?: number;
  /** With `sample`: the least free space (bytes) seen on the filesystem of `sample.fs`. */
  minFreeBytes?: number;
}

/** What to watch while the child runs. */
export interface Sample {
  rss?: boolean;
  /** A path on the filesystem whose free space to watch. */
  fs?: string;
}

/** `bin/tiu ARGS` as a child process; killed (SIGKILL) after `timeoutMs`. */
export function runTiu(
  args: string[],
  opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv; sample?: Sample } = {},
): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const p = spawn(TIU, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...opts.env } });
    let out = '';
    let err = '';
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      p.kill('SIGKILL');
    }, opts.timeoutMs ?? 120_000);
    const seen: { peakRssKiB?: number; minFreeBytes?: number } = {};
    const watch = async () => {
      if (opts.sample?.rss) {
        const m = /VmHWM:\s*(\d+)/.exec(await readFile(`/proc/${p.pid}/status`, 'utf8').catch(() => ''));
        if (m) seen.peakRssKiB = Math.max(seen.peakRssKiB ?? 0, Number(m[1]));
      }
      if (opts.sample?.fs) {
        const st = await statfs(opts.sample.fs).catch(() => undefined);
        if (st) seen.minFreeBytes = Math.min(seen.minFreeBytes ?? Infinity, st.bavail * st.bsize);
      }
    };
    const sampler = opts.sample ? setInterval(() => void watch(), 50) : undefined;
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('error', reject);
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      if (sampler) clearInterval(sampler);
      resolve({ code, signal, stdout: out, stderr: err, ms: Date.now() - t0, timedOut, ...seen });
    });
  });
}

export interface CliError {
  code: string;
  /** The wrapped error's code: `[CODE <- CAUSE]` (a tiu code, or Node's or zstd's own). */
  causeCode?: string;
  message: string;
  line: string;
}

/**
 * The error a run without --json printed: exactly one `tiu: error: MESSAGE [CODE]` (or
 * `[CODE <- CAUSE]`) line, the last line of stderr (progress lines come before it), and nothing
 * on stdout.
 */
export function cliError(r: Ran): CliError {
  const lines = r.stderr.replace(/\n$/, '').split('\n');
  const errLines = lines.filter((l) => l.startsWith('tiu: error:'));
  assert.equal(errLines.length, 1, `one 'tiu: error:' line on stderr, got:\n${r.stderr}`);
  const line = lines.at(-1)!;
  assert.equal(line, errLines[0], `the error line is the last line of stderr (a one-line message), got:\n${r.stderr}`);
  const m = /^tiu: error: (.+) \[([A-Z][A-Z0-9_]*)(?: <- (\w+))?\]$/.exec(line);
  assert.ok(m, `'tiu: error: MESSAGE [CODE]': ${line}`);
  assert.equal(r.stdout, '', 'nothing on stdout');
  return { message: m[1]!, code: m[2]!, ...(m[3] ? { causeCode: m[3] } : {}), line };
}

/** `{error:{code,message,details,cause?}}` of a --json run. */
export function jsonError(r: Ran): {
  code: string;
  message: string;
  details?: Record<string, unknown>;
  cause?: { code: string };
} {
  let doc: {
    error?: { code: string; message: string; details?: Record<string, unknown>; cause?: { code: string } };
  };
  try {
    doc = JSON.parse(r.stdout) as typeof doc;
  } catch {
    assert.fail(`--json printed no JSON (exit ${r.code}): ${r.stdout}\n${r.stderr}`);
  }
  assert.ok(doc.error, `--json printed no error: ${r.stdout}`);
  return doc.error;
}

// ---------------------------------------------------------------------------------------------
// What must not change

/** path -> "type mode uid:gid size sha link xattrs"; new mounts below the root are recorded, not entered. */
export type TreeHash = Map<string, string>;

/** getfattr's quoting of file names (\\ooo for odd bytes, \\\\ for a backslash) undone, as UTF-8. */
function unescapeGetfattr(s: string): string {
  const parts: Buffer[] = [];
  let last = 0;
  for (const m of s.matchAll(/\\([0-7]{3})|\\\\/g)) {
    parts.push(
      Buffer.from(s.slice(last, m.index), 'utf8'),
      m[1] ? Buffer.from([parseInt(m[1], 8)]) : Buffer.from('\\'),
    );
    last = m.index + m[0].length;
  }
  parts.push(Buffer.from(s.slice(last), 'utf8'));
  return Buffer.concat(parts).toString('utf8');
}

/** xattrs (every namespace, not following symlinks) of `paths`, as name=base64 lists. */
async function xattrsOf(paths: string[]): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (let i = 0; i < paths.length; i += 200) {
    const batch = paths.slice(i, i + 200);
    const r = await run('getfattr', ['-h', '-d', '-m', '-', '-e', 'base64', '--absolute-names', '--', ...batch], {
      okExitCodes: [0, 1],
    });
    let cur: string | undefined;
    const attrs: string[] = [];
    const flush = () => {
      if (cur !== undefined) out.set(cur, [...attrs].sort().join(','));
      attrs.length = 0;
    };
    for (const line of r.stdout.split('\n')) {
      if (line.startsWith('# file: ')) {
        flush();
        cur = unescapeGetfattr(line.slice('# file: '.length));
      } else if (line !== '') attrs.push(line);
    }
    flush();
  }
  return out;
}

/**
 * Hash every path below `root` (names as bytes). Mount points that are not in `known` (a mount
 * that appeared since) are recorded as `newmount` and not walked: an rbind of /proc or /dev
 * over a host directory must show, not be read. `exclude`: paths relative to root, not walked.
 */
export async function hashTree(
  root: string,
  o: { exclude?: readonly string[]; known: ReadonlySet<string> },
): Promise<TreeHash> {
  const out: TreeHash = new Map();
  const exclude = new Set(o.exclude ?? []);
  const mountsNow = new Set(await mountPoints());
  const forXattrs: [string, string][] = [];
  const walk = async (rel: string): Promise<void> => {
    const abs = rel === '' ? root : `${root}/${rel}`;
    const absBuf = Buffer.from(abs, 'latin1');
    const st = await lstat(absBuf);
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
    let desc = `${type} ${(st.mode & 0o7777).toString(8)} ${st.uid}:${st.gid}`;
    if (type === 'reg') desc += ` ${st.size} ${sha(await readFile(absBuf)).slice(7, 23)}`;
    if (type === 'symlink') desc += ` -> ${(await readlink(absBuf, { encoding: 'buffer' })).toString('latin1')}`;
    if (type === 'char' || type === 'block') desc += ` ${st.rdev}`;
    const utf8 = Buffer.from(abs, 'latin1').toString('utf8');
    const mountedHere = rel !== '' && mountsNow.has(utf8) && !o.known.has(utf8);
    if (mountedHere) desc += ' newmount';
    out.set(rel, desc);
    forXattrs.push([rel, utf8]);
    if (type !== 'dir' || mountedHere) return;
    for (const nameBuf of await readdir(absBuf, { encoding: 'buffer' })) {
      const p = rel === '' ? nameBuf.toString('latin1') : `${rel}/${nameBuf.toString('latin1')}`;
      if (!exclude.has(p)) await walk(p);
    }
  };
  await walk('');
  const xs = await xattrsOf(forXattrs.map(([, a]) => a));
  for (const [rel, abs] of forXattrs) {
    const x = xs.get(abs);
    if (x) out.set(rel, `${out.get(rel)} xattrs[${x}]`);
  }
  return out;
}

/** Lines of two tree hashes that differ, readable. */
export function diffHashes(before: TreeHash, after: TreeHash, label: string): string[] {
  const out: string[] = [];
  const show = (p: string) => `${label}/${Buffer.from(p, 'latin1').toString('utf8')}`;
  for (const [p, d] of before) {
    const a = after.get(p);
    if (a === undefined) out.push(`gone: ${show(p)} (${d})`);
    else if (a !== d) out.push(`changed: ${show(p)}: ${d} => ${a}`);
  }
  for (const [p, a] of after) if (!before.has(p)) out.push(`new: ${show(p)} (${a})`);
  return out;
}

function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Every mount point of this mount namespace. */
export async function mountPoints(): Promise<string[]> {
  return (await readFile('/proc/self/mountinfo', 'utf8'))
    .split('\n')
    .filter(Boolean)
    .map((l) => unescapeMount(l.split(' ')[4]!));
}

/** The mountinfo lines whose mount point is `dir` or below it. */
export async function mountsBelow(dir: string): Promise<string[]> {
  return (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').filter((l) => {
    const mp = l ? unescapeMount(l.split(' ')[4]!) : '';
    return mp === dir || mp.startsWith(dir + '/');
  });
}

/** The marker directory outside the sysroot: what hostile images aim at. */
export interface Marker {
  dir: string;
  /** A regular file (with a user.* xattr) a symlink may point at. */
  file: string;
  /** A directory with a file in it, for `usr/lib/tiu -> it` and `proc -> it`. */
  subdir: string;
  /** An /etc-like directory (passwd, shadow). */
  etc: string;
}

async function makeMarker(dir: string): Promise<Marker> {
  const m: Marker = { dir, file: join(dir, 'f'), subdir: join(dir, 'dir'), etc: join(dir, 'etc') };
  await mkdir(m.subdir, { recursive: true });
  await mkdir(m.etc, { recursive: true });
  await writeFile(m.file, 'marker file: must never change\n');
  await run('setfattr', ['-n', 'user.marker', '-v', 'untouched', m.file]);
  await writeFile(join(m.subdir, 'inner'), 'inner\n');
  await writeFile(join(m.etc, 'passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  await writeFile(join(m.etc, 'shadow'), 'root:!:19000::::::\n');
  await chmod(join(m.etc, 'shadow'), 0o600);
  await symlink('f', join(dir, 'link'));
  return m;
}

export interface World {
  defaultId: string;
  snapshots: string[];
  tree: TreeHash;
  marker: TreeHash;
  mounts: string[];
}

/** A successful update: its --json report, the new snapshot and its root. */
export interface Skipped {
  json: Record<string, unknown>;
  snapshot: number;
  root: string;
}

export interface HostileEnv {
  os: MicroOS;
  marker: Marker;
  /** An OCI layout for this env's images (outside the sysroot). */
  layout: string;
  /** `oci:LAYOUT:TAG` */
  ref(tag: string): string;
  world(): Promise<World>;
  /** Differences from `before` outside a new snapshot (`allowSnapshot`: that .snapshots/N may be new). */
  compare(before: World, after: World, o?: { allowSnapshot?: number }): string[];
  /** `tiu update REF --sysroot S [--json] EXTRA...` */
  update(
    ref: string,
    o?: { json?: boolean; extra?: string[]; timeoutMs?: number; env?: NodeJS.ProcessEnv; sample?: Sample },
  ): Promise<Ran>;
  /**
   * The update is refused: exit != 0, one `tiu: error: ... [CODE]` line with CODE in `codes`,
   * (`json`, default true: a --json run first, same code), and nothing changed: default, snapshots,
   * every hash, the marker, the mount table.
   */
  expectRefused(
    ref: string,
    codes: string | readonly string[],
    o?: { json?: boolean; timeoutMs?: number; message?: RegExp; sample?: Sample },
  ): Promise<CliError & { ran: Ran }>;
  /**
   * The update succeeds (skipping what it must): exit 0, a new default snapshot, and nothing changed
   * outside it: the booted snapshot, the preserved subvolumes, the marker, the mount table.
   */
  expectSkipped(ref: string, o?: { timeoutMs?: number }): Promise<Skipped>;
  /**
   * Where either outcome defeats the attack: the update succeeds as expectSkipped checks it
   * (returned), or it is refused with `code` and nothing changed (undefined).
   */
  expectSkippedOrRefused(ref: string, code: string): Promise<Skipped | undefined>;
  teardown(): Promise<void>;
}

/** The sysroot's default subvolume id (what boots next). */
export async function defaultSubvolume(sysroot: string): Promise<string> {
  const r = await run('btrfs', ['subvolume', 'get-default', sysroot]);
  return /^ID (\d+)/.exec(r.stdout)?.[1] ?? r.stdout.trim();
}

/** .snapshots/N directory names, sorted numerically. */
export async function snapshotDirs(sysroot: string): Promise<string[]> {
  return (await readdir(join(sysroot, '.snapshots'))).sort((a, b) => Number(a) - Number(b) || a.localeCompare(b));
}

/** A policy that accepts any image, and a tiu.conf without hooks. */
export async function acceptAnything(sysroot: string, conf = 'default-hooks = false\n'): Promise<void> {
  await mkdir(join(sysroot, 'etc/tiu'), { recursive: true });
  await writeFile(
    join(sysroot, 'etc/tiu/policy.json'),
    JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }),
  );
  await writeFile(join(sysroot, 'etc/tiu/tiu.conf'), conf);
}

export async function createHostileEnv(
  opts: { sizeMiB?: number; files?: OsFile[]; conf?: string } = {},
): Promise<HostileEnv> {
  const os = await createMicroOS({ sizeMiB: opts.sizeMiB ?? 400, ...(opts.files ? { files: opts.files } : {}) });
  const marker = await makeMarker(join(os.dir, 'marker'));
  const layout = join(os.dir, 'images');
  await OciLayoutTarget.open(layout, { create: true });
  await acceptAnything(os.sysroot, opts.conf);
  // tiu's cache (excluded from the hashes, as tiu's own) exists before: its parent stays the same.
  await mkdir(join(os.sysroot, 'var/cache/tiu'), { recursive: true });
  const known = new Set(await mountPoints());
  const cacheRel = 'var/cache/tiu';
  const env: HostileEnv = {
    os,
    marker,
    layout,
    ref: (tag) => `oci:${layout}:${tag}`,
    async world() {
      const snapshots = await snapshotDirs(os.sysroot);
      return {
        defaultId: await defaultSubvolume(os.sysroot),
        snapshots,
        // .snapshots/1/snapshot is the sysroot itself (hashed at the top).
        tree: await hashTree(os.sysroot, { exclude: [cacheRel, '.snapshots/1/snapshot'], known }),
        marker: await hashTree(marker.dir, { known }),
        mounts: await mountsBelow(os.dir),
      };
    },
    compare(before, after, o = {}) {
      const out: string[] = [];
      const allowed = o.allowSnapshot === undefined ? undefined : String(o.allowSnapshot);
      const newSnaps = after.snapshots.filter((s) => !before.snapshots.includes(s) && s !== allowed);
      if (newSnaps.length) out.push(`snapshot dir(s) left in .snapshots: ${newSnaps.join(', ')}`);
      const gone = before.snapshots.filter((s) => !after.snapshots.includes(s));
      if (gone.length) out.push(`snapshot dir(s) removed from .snapshots: ${gone.join(', ')}`);
      if (allowed === undefined && after.defaultId !== before.defaultId)
        out.push(`default subvolume ${before.defaultId} -> ${after.defaultId}`);
      const inNew = (p: string) =>
        allowed !== undefined && (p === `.snapshots/${allowed}` || p.startsWith(`.snapshots/${allowed}/`));
      const tb = new Map([...before.tree].filter(([p]) => !inNew(p)));
      const ta = new Map([...after.tree].filter(([p]) => !inNew(p)));
      out.push(...diffHashes(tb, ta, 'SYSROOT'));
      out.push(...diffHashes(before.marker, after.marker, 'MARKER'));
      const mb = new Set(before.mounts);
      const ma = new Set(after.mounts);
      for (const m of before.mounts) if (!ma.has(m)) out.push(`mount gone: ${m}`);
      for (const m of after.mounts) if (!mb.has(m)) out.push(`mount new: ${m}`);
      return out;
    },
    update(ref, o = {}) {
      return runTiu(['update', ref, '--sysroot', os.sysroot, ...(o.json ? ['--json'] : []), ...(o.extra ?? [])], {
        timeoutMs: o.timeoutMs ?? 120_000,
        ...(o.env ? { env: o.env } : {}),
        ...(o.sample ? { sample: o.sample } : {}),
      });
    },
    async expectRefused(ref, codes, o = {}) {
      const want = typeof codes === 'string' ? [codes] : codes;
      const before = await env.world();
      let jerr: ReturnType<typeof jsonError> | undefined;
      if (o.json !== false) {
        const j = await env.update(ref, { json: true, timeoutMs: o.timeoutMs });
        assert.equal(j.timedOut, false, `tiu update --json did not end within ${o.timeoutMs ?? 120_000} ms`);
        assert.notEqual(
          j.code,
          0,
          `tiu update --json exit code (expected a refusal with ${want.join('|')}): ${j.stdout}`,
        );
        jerr = jsonError(j);
        assert.ok(
          want.includes(jerr.code),
          `--json error code ${jerr.code} (${jerr.message}), expected ${want.join(' or ')}`,
        );
        assert.ok(!jerr.message.includes('\n'), `one-line message: ${JSON.stringify(jerr.message)}`);
      }
      const r = await env.update(ref, { timeoutMs: o.timeoutMs, ...(o.sample ? { sample: o.sample } : {}) });
      assert.equal(r.timedOut, false, `tiu update did not end within ${o.timeoutMs ?? 120_000} ms`);
      assert.notEqual(r.code, 0, `exit code (expected a refusal): ${r.stderr}`);
      const e = cliError(r);
      assert.ok(want.includes(e.code), `error code ${e.code} (${e.line}), expected ${want.join(' or ')}`);
      if (jerr) assert.equal(e.code, jerr.code, 'the same code with and without --json');
      if (jerr) assert.equal(e.causeCode, jerr.cause?.code, 'the same cause code with and without --json');
      assert.equal(r.code, exitStatusOf(e.code as ErrorCode), `the exit status of ${e.code}`);
      if (o.message) assert.match(e.message, o.message);
      const after = await env.world();
      assert.deepEqual(env.compare(before, after), [], `the refused update changed things (${e.line})`);
      return { ...e, ran: r };
    },
    async expectSkipped(ref, o = {}) {
      const before = await env.world();
      return checkSkipped(before, await env.update(ref, { json: true, timeoutMs: o.timeoutMs }));
    },
    async expectSkippedOrRefused(ref, code) {
      const before = await env.world();
      const r = await env.update(ref, { json: true });
      if (r.code === 0) return checkSkipped(before, r);
      assert.equal(jsonError(r).code, code, r.stdout);
      assert.deepEqual(env.compare(before, await env.world()), [], 'the refused update changed things');
      return undefined;
    },
    async teardown() {
      // Anything a hostile image got mounted below the test directory (over the marker too)
      // goes first, deepest first and lazily: teardown's rm -rf must never walk into /dev or /proc.
      const below = (await mountsBelow(os.dir)).map((l) => unescapeMount(l.split(' ')[4]!));
      const stray = below
        .filter((m) => !m.startsWith(os.sysroot) && !m.startsWith(os.top))
        .sort((a, b) => b.length - a.length);
      for (const m of stray) await run('umount', ['-R', '-l', m], { okExitCodes: [0, 1, 32] });
      await os.teardown();
    },
  };

  /** The checks of a successful update `r` against the world `before` it. */
  async function checkSkipped(before: World, r: Ran): Promise<Skipped> {
    assert.equal(r.timedOut, false, 'tiu update did not end');
    let json: Record<string, unknown>;
    try {
      json = JSON.parse(r.stdout) as Record<string, unknown>;
    } catch {
      assert.fail(`--json printed no JSON (exit ${r.code}): ${r.stdout}\n${r.stderr}`);
    }
    assert.equal(r.code, 0, `the update should succeed: ${r.stdout}`);
    assert.equal(json.status, 'updated', r.stdout);
    const snapshot = json.snapshot as number;
    const after = await env.world();
    assert.ok(
      !before.snapshots.includes(String(snapshot)) && after.snapshots.includes(String(snapshot)),
      `a new .snapshots/${snapshot}`,
    );
    const root = join(os.sysroot, '.snapshots', String(snapshot), 'snapshot');
    const show = await run('btrfs', ['subvolume', 'show', root]);
    assert.equal(after.defaultId, /Subvolume ID:\s*(\d+)/.exec(show.stdout)?.[1], 'the new snapshot is the default');
    assert.deepEqual(
      env.compare(before, after, { allowSnapshot: snapshot }),
      [],
      'nothing changed outside the new snapshot',
    );
    return { json, snapshot, root };
  }
  return env;
}

// ---------------------------------------------------------------------------------------------
// Images

export interface Blob {
  desc: Descriptor;
  data: Buffer;
}

/** The image's OS: v2 of the fake MicroOS without the shell (small), or with it (`shell`). */
export async function imageFiles(o: { shell?: boolean } = {}): Promise<OsFile[]> {
  const v2 = await v2Files();
  if (o.shell) return v2;
  const shell = new Set((await shellFiles()).map((f) => f.path));
  return v2.filter((f) => !shell.has(f.path));
}

const T = 1_767_225_600;

function dirsOf(files: readonly OsFile[], omit: readonly string[]): string[] {
  const dirs = new Set<string>(MOUNT_POINT_DIRS.filter((d) => !omit.includes(d)));
  const add = (p: string) => {
    const parts = p.split('/');
    for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join('/'));
  };
  for (const d of [...dirs]) add(d);
  for (const f of files) add(f.path);
  for (const o of omit) dirs.delete(o);
  const named = new Set(files.map((f) => f.path));
  return [...dirs].filter((d) => !named.has(d)).sort();
}

/** OsFile[] -> tar entries: parents first (with the mount point dirs, minus `omitDirs`), then the files. */
export function osTarEntries(files: readonly OsFile[], o: { omitDirs?: readonly string[] } = {}): TarSpec[] {
  const out: TarSpec[] = dirsOf(files, o.omitDirs ?? []).map((d) => ({
    name: d,
    type: '5',
    mode: d === 'tmp' ? 0o1777 : 0o755,
    mtime: T,
  }));
  for (const f of [...files].sort((a, b) => a.path.localeCompare(b.path))) {
    if (f.symlink !== undefined) out.push({ name: f.path, type: '2', linkname: f.symlink, mode: 0o777, mtime: T });
    else out.push({ name: f.path, type: '0', content: Buffer.from(f.content ?? ''), mode: f.mode ?? 0o644, mtime: T });
  }
  return out;
}

/** OsFile[] -> TOC entries (one frame per file with content). */
export function osTocEntries(files: readonly OsFile[], o: { omitDirs?: readonly string[] } = {}): CraftedEntry[] {
  const modtime = new Date(T * 1000).toISOString();
  const out: CraftedEntry[] = dirsOf(files, o.omitDirs ?? []).map((d) => ({
    toc: { type: 'dir', name: d, mode: d === 'tmp' ? 0o1777 : 0o755, uid: 0, gid: 0, modtime },
  }));
  for (const f of [...files].sort((a, b) => a.path.localeCompare(b.path))) {
    if (f.symlink !== undefined)
      out.push({ toc: { type: 'symlink', name: f.path, linkName: f.symlink, mode: 0o777, uid: 0, gid: 0, modtime } });
    else {
      const content = Buffer.from(f.content ?? '');
      out.push({
        toc: {
          type: 'reg',
          name: f.path,
          mode: f.mode ?? 0o644,
          uid: 0,
          gid: 0,
          modtime,
          ...(content.length ? {} : { size: 0 }),
        },
        ...(content.length ? { content } : {}),
      });
    }
  }
  return out;
}

export type Compression = 'none' | 'gzip' | 'zstd';

/** A tar layer blob of exactly these entries. */
export function tarLayer(entries: readonly TarSpec[], compression: Compression = 'gzip'): Blob & { tar: Buffer } {
  const tarBytes = makeTar(entries);
  const data =
    compression === 'gzip' ? gzipSync(tarBytes) : compression === 'zstd' ? zstdCompressSync(tarBytes) : tarBytes;
  const mediaType =
    compression === 'gzip'
      ? MediaType.OciLayerGzip
      : compression === 'zstd'
        ? MediaType.OciLayerZstd
        : MediaType.OciLayerTar;
  return { desc: { mediaType, digest: sha(data), size: data.length }, data, tar: tarBytes };
}

/** A layer blob of any bytes (a corrupt one: its digest is of the bytes as they are). */
export function rawLayer(data: Buffer, mediaType: string): Blob {
  return { desc: { mediaType, digest: sha(data), size: data.length }, data };
}

/** A TOC entry with its content (compressed into a frame), or a `frame` of raw bytes as given. */
export type TocSpec = CraftedEntry;

/** A zstd:chunked layer (frames, TOC, footer; no tar headers: only the TOC path reads it). */
export function tocLayer(entries: readonly TocSpec[]): Blob {
  return chunkedLayer(entries);
}

export interface WrittenImage {
  manifest: Descriptor;
  config: Blob;
  layers: Blob[];
  manifestBytes: Buffer;
}

/** The config, manifest and layers of an image (no target yet). */
export function imageOf(
  layers: readonly Blob[],
  o: { diffIds?: string[]; manifestExtra?: Record<string, unknown> } = {},
): WrittenImage {
  const configBytes = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      rootfs: { type: 'layers', diff_ids: o.diffIds ?? layers.map((l) => l.desc.digest) },
    }),
  );
  const config = rawLayer(configBytes, MediaType.OciConfig);
  const manifestBytes = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaType.OciManifest,
      config: config.desc,
      layers: layers.map((l) => l.desc),
      ...o.manifestExtra,
    }),
  );
  return {
    manifest: { mediaType: MediaType.OciManifest, digest: sha(manifestBytes), size: manifestBytes.length },
    config,
    layers: [...layers],
    manifestBytes,
  };
}

/** Write an image of `layers` into the OCI layout at `layout`, tagged `tag`. */
export async function writeImage(
  layout: string,
  tag: string,
  layers: readonly Blob[],
  o: { diffIds?: string[] } = {},
): Promise<WrittenImage> {
  const img = imageOf(layers, o);
  const t = await OciLayoutTarget.open(layout, { create: true });
  for (const b of [...img.layers, img.config])
    if (!(await t.exists(b.desc))) await t.push(b.desc, Readable.from([b.data]));
  if (!(await t.exists(img.manifest))) await t.push(img.manifest, Readable.from([img.manifestBytes]));
  await t.tag(img.manifest, tag);
  return img;
}

// ---------------------------------------------------------------------------------------------
// A hostile registry

export type BlobFault =
  /** Serve other bytes of the same length under the blob's digest. */
  | { kind: 'wrong-bytes' }
  /** Send the headers, then `bytes` bytes every `everyMs` (a body that never finishes in time). */
  | { kind: 'drip'; everyMs: number; bytes?: number };

export interface HostileRegistry {
  host: string;
  /** Put an image under REPO:TAG. */
  put(repo: string, tag: string, img: WrittenImage): void;
  faults: Map<string, BlobFault>;
  log: string[];
  stop(): Promise<void>;
}

/** A minimal read-only registry (API v2 over http on 127.0.0.1, no Range support) with blob faults. */
export async function startHostileRegistry(): Promise<HostileRegistry> {
  const blobs = new Map<string, Buffer>();
  const manifests = new Map<string, { bytes: Buffer; digest: string }>();
  const faults = new Map<string, BlobFault>();
  const log: string[] = [];
  const timers = new Set<NodeJS.Timeout>();
  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const url = req.url ?? '/';
    log.push(`${req.method} ${url}`);
    if (url === '/v2/' || url === '/v2') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
      return;
    }
    const m = /^\/v2\/(.+?)\/(manifests|blobs)\/([^/?]+)$/.exec(url);
    const notFound = () => {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          errors: [{ code: m?.[2] === 'blobs' ? 'BLOB_UNKNOWN' : 'MANIFEST_UNKNOWN', message: 'unknown' }],
        }),
      );
    };
    if (!m) return notFound();
    const [, repo, kind, ref] = m as unknown as [string, string, string, string];
    if (kind === 'manifests') {
      const man = manifests.get(`${repo}:${ref}`) ?? manifests.get(`${repo}@${ref}`);
      if (!man) return notFound();
      res.writeHead(200, {
        'content-type': MediaType.OciManifest,
        'content-length': String(man.bytes.length),
        'docker-content-digest': man.digest,
      });
      res.end(req.method === 'HEAD' ? undefined : man.bytes);
      return;
    }
    const data = blobs.get(ref);
    if (!data) return notFound();
    const fault = faults.get(ref);
    res.writeHead(200, {
      'content-type': 'application/octet-stream',
      'content-length': String(data.length),
      'docker-content-digest': ref,
    });
    if (req.method === 'HEAD') return void res.end();
    if (fault?.kind === 'wrong-bytes') {
      const other = Buffer.from(data);
      for (let i = 0; i < other.length; i += 97) other[i] = other[i]! ^ 0x5a;
      res.end(other);
      return;
    }
    if (fault?.kind === 'drip') {
      let at = 0;
      const step = fault.bytes ?? 1;
      const tick = () => {
        if (res.destroyed || at >= data.length) return void res.end();
        res.write(data.subarray(at, at + step));
        at += step;
        const t = setTimeout(() => {
          timers.delete(t);
          tick();
        }, fault.everyMs);
        timers.add(t);
      };
      tick();
      return;
    }
    res.end(data);
  };
  const server: Server = createServer(handle);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    host: `127.0.0.1:${port}`,
    faults,
    log,
    put(repo, tag, img) {
      for (const b of [...img.layers, img.config]) blobs.set(b.desc.digest, b.data);
      const man = { bytes: img.manifestBytes, digest: img.manifest.digest };
      manifests.set(`${repo}:${tag}`, man);
      manifests.set(`${repo}@${img.manifest.digest}`, man);
    },
    stop: () =>
      new Promise<void>((r) => {
        for (const t of timers) clearTimeout(t);
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

/** One zstd frame of `size` zero bytes, compressed as a stream (no buffer of `size` bytes). */
export async function zstdZeros(size: number, level = 1): Promise<Buffer> {
  const chunk = Buffer.alloc(1 << 20);
  const src = Readable.from(
    (function* () {
      for (let left = size; left > 0; left -= chunk.length)
        yield left >= chunk.length ? chunk : chunk.subarray(0, left);
    })(),
  );
  return buffer(src.pipe(createZstdCompress({ params: { [zc.ZSTD_c_compressionLevel]: level } })));
}

/**
 * A gzip tar layer: `entries`, then one file `name` of `size` bytes of `block` repeated (not
 * zeros by default: those could become holes), streamed, with a header written by hand so
 * `size` may exceed what makeTar would buffer.
 */
export async function gzipTarWithFill(
  entries: TarSpec[],
  name: string,
  size: number,
  o: { block?: Buffer; level?: number; mtime?: number } = {},
): Promise<Blob> {
  const block = o.block ?? Buffer.alloc(1 << 20, 'x');
  const head = makeTar(entries).subarray(0, -1024);
  const hdr = Buffer.from(makeTar([{ name, content: '', mtime: o.mtime ?? 1_767_225_600 }]).subarray(0, 512));
  hdr.write(size.toString(8).padStart(11, '0') + '\0', 124);
  hdr.write('        ', 148);
  let sum = 0;
  for (const b of hdr) sum += b;
  hdr.write(sum.toString(8).padStart(6, '0') + '\0 ', 148);
  const src = Readable.from(
    (function* () {
      yield head;
      yield hdr;
      for (let left = size; left > 0; left -= block.length)
        yield left >= block.length ? block : block.subarray(0, left);
      yield Buffer.alloc((512 - (size % 512)) % 512);
      yield Buffer.alloc(1024);
    })(),
  );
  return rawLayer(await buffer(src.pipe(createGzip({ level: o.level ?? 1 }))), MediaType.OciLayerGzip);
}
