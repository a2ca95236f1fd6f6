/**
 * `npm run bench`: tiu side by side with the tools a user would otherwise run (skopeo, umoci,
 * rsync as transactional-update's apply-oci does it, casync, OSTree: bench/ostree.ts), on two
 * real Debian bookworm trees (bench/trees.ts), in one run on this machine. Writes bench/results.md, bench/results.json and
 * the README's excerpt; the report compares its ratios with those of the results.json it
 * replaces (what a reviewer re-running the bench checks).
 *
 * Environment: TIU_BENCH_RUNS (samples per figure, default 5: with 3, a re-run of the same
 * code left 4 of 47 ratios outside the ranges the first run reported), TIU_BENCH_CACHE (tree
 * cache, default /var/cache/tiu-bench), TIU_BENCH_WORK (scratch, default /var/tmp),
 * TIU_BENCH_ONLY (comma list of sections: build,registry,update,ostree; update-tiu or update-peers
 * for one side of the updates; build runs whenever a section other than ostree does, they need its
 * images; ostree runs with update and update-peers too), TIU_BENCH_VERBOSE=1.
 * With TIU_BENCH_RUNS or TIU_BENCH_ONLY set the run is partial and writes
 * bench/results.partial.{md,json} instead. Runs as root (loop devices, btrfs, mounts).
 */
import { existsSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { cpus, loadavg, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureTrees, type TreeInfo } from './trees.ts';
import { measured, sh } from './lib/proc.ts';
import { startCountingProxy, type CountingProxy } from '../test/helpers/counting-proxy.ts';
import { imageSize } from './lib/oci.ts';
import { formatRange, formatRatio, formatSummary, summarize, type Figure, type Unit } from './lib/stats.ts';
import { compare, recheck, type Comparison } from './lib/report.ts';
import { startRegistry, type RunningRegistry } from '../test/helpers/registry.ts';
import { APPLY_OCI, CASYNC, CHECK, IDEAL, STATUS, TIU_ARTIFACT, TIU_WHOLE, UPDATE, updateSection } from './update.ts';
import { MAKE_DELTA, OSTREE, OSTREE_FILE, OSTREE_GENERATE, ostreePeer } from './ostree.ts';
import { TIU_DELTA } from './tiu-delta.ts';
import { layOutPackage, tiuForm, versionRss } from './lib/tiu-package.ts';

const repo = dirname(dirname(fileURLToPath(import.meta.url)));
/** This checkout's bin/tiu (src/ through type stripping). */
export const checkoutTiuBin = join(repo, 'bin/tiu');
/**
 * The tiu every figure measures: the package laid out from this checkout (bench/lib/tiu-package.ts),
 * set by main() before any section runs; the checkout's with TIU_BENCH_TIU=checkout.
 */
export let tiuBin = checkoutTiuBin;
export const RUNS = Math.max(1, Number(process.env.TIU_BENCH_RUNS ?? 5));
const ONLY = (process.env.TIU_BENCH_ONLY ?? 'build,registry,update,ostree,large').split(',');
/**
 * A full run (no TIU_BENCH_ONLY, no TIU_BENCH_RUNS) writes bench/results.{md,json} and the
 * README's rows; a partial one writes bench/results.partial.{md,json} and leaves those alone.
 */
const FULL = process.env.TIU_BENCH_ONLY === undefined && process.env.TIU_BENCH_RUNS === undefined;
const RESULTS = FULL ? 'bench/results' : 'bench/results.partial';

export interface Ctx {
  work: string;
  trees: TreeInfo;
  /**
   * The pass: `base` measures everything on the base trees; `large` measures tiu and its main
   * peers again on the larger trees (bench/trees.ts) so that growth with the image shows. Figures
   * of the large pass carry LARGE_SUFFIX in their scenario names.
   */
  pass: 'base' | 'large';
  /** The larger trees, once the large pass has run. */
  largeTrees?: TreeInfo;
  figures: Figure[];
  /** What could not be measured, and why. */
  missing: string[];
  notes: string[];
  /** Wall seconds per section, for the budget. */
  sectionSeconds: Record<string, number>;
  /** umoci-built images of both trees (tags base, upgraded), for the peers. */
  umociLayout?: string;
  /** tiu bundles of both trees (tags base, upgraded). */
  tiuLayout?: string;
  proxy: CountingProxy;
  registry: RunningRegistry;
}

/** Appended to the scenario of every figure the larger trees give. */
export const LARGE_SUFFIX = ' [larger tree]';

export function log(msg: string): void {
  process.stderr.write(`bench: ${msg}\n`);
}

export function record(
  ctx: Ctx,
  scenario: string,
  metric: string,
  unit: Unit,
  tool: string,
  samples: number[],
  how?: string,
): void {
  if (ctx.pass === 'large') scenario += LARGE_SUFFIX;
  let f = ctx.figures.find((x) => x.scenario === scenario && x.metric === metric && x.tool === tool);
  if (!f) {
    f = { scenario, metric, unit, tool, samples: [], ...(how ? { how } : {}) };
    ctx.figures.push(f);
  }
  f.samples.push(...samples);
}

const available = new Map<string, boolean>();
/** Whether this checkout's tiu has the command (the pieces land one by one). */
export async function tiuHas(command: string): Promise<boolean> {
  if (!available.has(command)) {
    const r = await sh(tiuBin, [command, '--help'], { okCodes: [0, 1, 2] });
    available.set(command, r.code === 0);
  }
  return available.get(command)!;
}

export async function dirBytes(dir: string): Promise<number> {
  const r = await sh('du', ['-s', '--apparent-size', '--block-size=1', dir]);
  return Number(r.stdout.split(/\s/)[0]);
}

/** A fresh registry behind the proxy (an empty store, so pushes upload everything). */
export async function freshRegistry(ctx: Ctx): Promise<void> {
  await ctx.registry.stop();
  ctx.registry = await startRegistry();
  ctx.proxy.setUpstream('127.0.0.1', ctx.registry.port);
}

// ---------------------------------------------------------------------------------------------
// build: tiu build vs umoci repack (and casync make) of the base tree

async function umociBundle(
  ctx: Ctx,
  tree: string,
  name: string,
): Promise<{ layout0: string; bundle: string; meta: string }> {
  const layout0 = join(ctx.work, `umoci-empty-${name}`);
  const bundle = join(ctx.work, `umoci-bundle-${name}`);
  const meta = join(ctx.work, `umoci-bundle-${name}.meta`);
  await sh('umoci', ['init', '--layout', layout0]);
  await sh('umoci', ['new', '--image', `${layout0}:empty`]);
  await sh('umoci', ['unpack', '--image', `${layout0}:empty`, bundle]);
  // The tree itself, read-only, instead of a 600 MB copy: repack only reads rootfs.
  await sh('mount', ['--bind', tree, join(bundle, 'rootfs')]);
  await sh('mount', ['-o', 'remount,bind,ro', join(bundle, 'rootfs')]);
  await mkdir(meta);
  for (const f of await readdir(bundle))
    if (f !== 'rootfs') await cp(join(bundle, f), join(meta, f), { recursive: true });
  return { layout0, bundle, meta };
}

/** Put the bundle back into its just-unpacked state so the next repack diffs against empty again. */
async function resetBundle(b: { bundle: string; meta: string }): Promise<void> {
  for (const f of await readdir(b.bundle))
    if (f !== 'rootfs') await rm(join(b.bundle, f), { recursive: true, force: true });
  for (const f of await readdir(b.meta)) await cp(join(b.meta, f), join(b.bundle, f), { recursive: true });
}

async function buildSection(ctx: Ctx): Promise<void> {
  const scenario = 'build (base tree → OCI image)';
  const trees = { base: ctx.trees.base, upgraded: ctx.trees.upgraded };
  // umoci: every tree into one layout, tags base and upgraded; the base build is the measured one.
  const umociLayout = join(ctx.work, 'umoci-images');
  for (const [name, tree] of Object.entries(trees)) {
    const b = await umociBundle(ctx, tree, name);
    try {
      const runs = name === 'base' ? RUNS : 1;
      for (let i = 0; i < runs; i++) {
        const layout = join(ctx.work, `umoci-run-${name}`);
        await rm(layout, { recursive: true, force: true });
        await cp(b.layout0, layout, { recursive: true });
        await resetBundle(b);
        log(`umoci repack ${name} (${i + 1}/${runs})`);
        const m = await measured('umoci', ['repack', '--image', `${layout}:${name}`, b.bundle]);
        if (name === 'base') {
          const size = (await imageSize(layout, name)).total;
          record(
            ctx,
            scenario,
            'time',
            's',
            'umoci repack',
            [m.wall],
            'umoci repack of an umoci-unpacked bundle (gzip, one layer)',
          );
          record(ctx, scenario, 'output size', 'B', 'umoci repack', [size]);
          record(ctx, scenario, 'peak RSS', 'B', 'umoci repack', [m.rss]);
        }
        if (i === runs - 1) {
          if (!existsSync(umociLayout)) await cp(layout, umociLayout, { recursive: true });
          else await sh('skopeo', ['copy', '-q', `oci:${layout}:${name}`, `oci:${umociLayout}:${name}`]);
        }
        await rm(layout, { recursive: true, force: true });
      }
    } finally {
      await sh('umount', [join(b.bundle, 'rootfs')]);
      await rm(b.bundle, { recursive: true, force: true });
      await rm(b.meta, { recursive: true, force: true });
      await rm(b.layout0, { recursive: true, force: true });
    }
  }
  ctx.umociLayout = umociLayout;

  // tiu build
  if (await tiuHas('build')) {
    const tiuLayout = join(ctx.work, 'tiu-images');
    for (const [name, tree] of Object.entries(trees)) {
      const runs = name === 'base' ? RUNS : 1;
      for (let i = 0; i < runs; i++) {
        const layout = join(ctx.work, `tiu-run-${name}`);
        await rm(layout, { recursive: true, force: true });
        log(`tiu build ${name} (${i + 1}/${runs})`);
        const m = await measured(tiuBin, ['build', tree, '--tag', `oci:${layout}:${name}`]);
        if (name === 'base') {
          const size = (await imageSize(layout, name)).total;
          record(
            ctx,
            scenario,
            'time',
            's',
            'tiu',
            [m.wall],
            'tiu build DIR --tag oci:LAYOUT:TAG (zstd:chunked layers)',
          );
          record(ctx, scenario, 'output size', 'B', 'tiu', [size]);
          record(ctx, scenario, 'peak RSS', 'B', 'tiu', [m.rss]);
        }
        if (i === runs - 1) {
          if (!existsSync(tiuLayout)) await cp(layout, tiuLayout, { recursive: true });
          else await sh('skopeo', ['copy', '-q', `oci:${layout}:${name}`, `oci:${tiuLayout}:${name}`]);
        }
        await rm(layout, { recursive: true, force: true });
      }
    }
    ctx.tiuLayout = tiuLayout;
  } else {
    ctx.missing.push('tiu build: `tiu build` is not in this checkout yet');
  }

  // casync make: the chunk store + index a casync user builds instead of an image.
  for (let i = 0; i < (ctx.pass === 'base' ? RUNS : 0); i++) {
    const store = join(ctx.work, 'casync-build');
    await rm(store, { recursive: true, force: true });
    await mkdir(store);
    log(`casync make base (${i + 1}/${RUNS})`);
    const m = await measured('casync', [
      'make',
      `--store=${join(store, 'store')}`,
      join(store, 'base.caidx'),
      ctx.trees.base,
    ]);
    record(ctx, scenario, 'time', 's', 'casync make', [m.wall], 'casync make --store=DIR INDEX.caidx TREE');
    record(ctx, scenario, 'output size', 'B', 'casync make', [await dirBytes(store)]);
    record(ctx, scenario, 'peak RSS', 'B', 'casync make', [m.rss]);
    await rm(store, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// push and pull through the counting proxy: tiu copy vs skopeo copy, the umoci-built base image

async function registrySection(ctx: Ctx): Promise<void> {
  if (!ctx.umociLayout) throw new Error('the registry section needs the build section (umoci images)');
  const src = `${ctx.umociLayout}:base`;
  const imgBytes = (await imageSize(ctx.umociLayout, 'base')).total;
  ctx.notes.push(
    `push/pull move the umoci-built base image (${(imgBytes / 2 ** 20).toFixed(1)} MiB, one gzip layer) so both tools carry the same bytes.`,
  );
  const tools: CopyTool[] = [
    {
      tool: 'skopeo',
      push: (dst) => ['skopeo', ['copy', '-q', '--dest-tls-verify=false', `oci:${src}`, `docker://${dst}`]],
      pull: (s, dst) => ['skopeo', ['copy', '-q', '--src-tls-verify=false', `docker://${s}`, `oci:${dst}`]],
      how: 'skopeo copy oci:… docker://… (and back)',
    },
  ];
  if (await tiuHas('copy')) {
    tools.push({
      tool: 'tiu',
      push: (dst) => [tiuBin, ['copy', `oci:${src}`, `docker://${dst}`]],
      pull: (s, dst) => [tiuBin, ['copy', `docker://${s}`, `oci:${dst}`]],
      how: 'tiu copy oci:… docker://… (and back)',
    });
  } else {
    ctx.missing.push('push/pull: `tiu copy` is not in this checkout yet');
  }
  for (let i = 0; i < RUNS; i++) {
    for (const t of [...tools]) {
      try {
        await pushPull(ctx, t, i);
      } catch (e) {
        if (t.tool !== 'tiu') throw e;
        ctx.missing.push(`push/pull with tiu copy failed: ${firstLine(e)}`);
        tools.splice(tools.indexOf(t), 1);
      }
    }
  }
}

export function firstLine(e: unknown): string {
  const m = e instanceof Error ? e.message : String(e);
  const tiu = /tiu: error: (.*)/.exec(m);
  return (tiu?.[1] ?? m).split('\n')[0]!.slice(0, 300);
}

interface CopyTool {
  tool: string;
  push: (dst: string) => [string, string[]];
  pull: (src: string, dst: string) => [string, string[]];
  how: string;
}

async function pushPull(ctx: Ctx, t: CopyTool, i: number): Promise<void> {
  await freshRegistry(ctx);
  ctx.proxy.reset();
  log(`push with ${t.tool} (${i + 1}/${RUNS})`);
  const [cmd, args] = t.push(`${ctx.proxy.host}/bench/os:base`);
  const m = await measured(cmd, args);
  const c = ctx.proxy.reset();
  // Pull what was just pushed into an empty layout.
  const dst = join(ctx.work, 'pulled');
  await rm(dst, { recursive: true, force: true });
  log(`pull with ${t.tool} (${i + 1}/${RUNS})`);
  const [pc, pa] = t.pull(`${ctx.proxy.host}/bench/os:base`, `${dst}:base`);
  const p = await measured(pc, pa);
  const d = ctx.proxy.reset();
  await rm(dst, { recursive: true, force: true });
  record(ctx, 'push (OCI layout → registry)', 'time', 's', t.tool, [m.wall], t.how);
  record(ctx, 'push (OCI layout → registry)', 'bytes uploaded', 'B', t.tool, [c.up]);
  record(ctx, 'push (OCI layout → registry)', 'peak RSS', 'B', t.tool, [m.rss]);
  record(ctx, 'pull (registry → OCI layout)', 'time', 's', t.tool, [p.wall]);
  record(ctx, 'pull (registry → OCI layout)', 'bytes downloaded', 'B', t.tool, [d.down]);
  record(ctx, 'pull (registry → OCI layout)', 'peak RSS', 'B', t.tool, [p.rss]);
}

// ---------------------------------------------------------------------------------------------
// report

async function versionOf(cmd: string, args: string[], re: RegExp = /(\S*\d+\.\d+\S*)/): Promise<string> {
  try {
    const r = await sh(cmd, args, { okCodes: [0, 1] });
    const m = re.exec(r.stdout + r.stderr);
    return m?.[1] ?? (r.stdout + r.stderr).trim().split('\n')[0]!;
  } catch {
    return 'not installed';
  }
}

const loadAtStart = loadavg();
const fmtLoad = (l: number[]): string => l.map((x) => x.toFixed(1)).join(' ');

async function machine(): Promise<Record<string, string>> {
  const cpu = cpus()[0]?.model ?? 'unknown';
  const kernel = (await sh('uname', ['-r'])).stdout.trim();
  let commit = 'unknown';
  let code = 'unknown';
  try {
    commit = (await sh('git', ['-C', repo, 'rev-parse', '--short', 'HEAD'])).stdout.trim();
    if ((await sh('git', ['-C', repo, 'status', '--porcelain', '--untracked-files=no'])).stdout.trim())
      commit += '+dirty';
    // What tiu runs (src, bin, the lock file), apart from commits that only touch results or docs.
    const trees = (await sh('git', ['-C', repo, 'rev-parse', 'HEAD:src', 'HEAD:bin', 'HEAD:package-lock.json'])).stdout
      .trim()
      .split('\n')
      .map((h) => h.slice(0, 8))
      .join('-');
    const dirty =
      (
        await sh('git', [
          '-C',
          repo,
          'status',
          '--porcelain',
          '--untracked-files=no',
          '--',
          'src',
          'bin',
          'package-lock.json',
        ])
      ).stdout.trim() !== '';
    code = trees + (dirty ? '+dirty' : '');
  } catch {
    /* not a checkout */
  }
  return {
    date: new Date().toISOString(),
    nproc: String(cpus().length),
    memory: `${(totalmem() / 2 ** 30).toFixed(1)} GiB`,
    kernel,
    cpu,
    'load average (1/5/15 min) at start': fmtLoad(loadAtStart),
    'load average (1/5/15 min) at end': fmtLoad(loadavg()),
    tiu: commit,
    'tiu code (src, bin, lock file)': code,
    node: process.version,
    skopeo: await versionOf('skopeo', ['--version'], /version (\S+)/),
    umoci: await versionOf('umoci', ['--version'], /version (\S+)/),
    rsync: await versionOf('rsync', ['--version'], /version\s+(\S+)/),
    casync: await versionOf('casync', ['--version'], /casync (\S+)/),
    ostree: await versionOf('ostree', ['--version'], /Version: '([^']+)'/),
    curl: await versionOf('curl', ['--version'], /curl (\S+)/),
    'btrfs-progs': await versionOf('btrfs', ['--version'], /(v\S+)/),
    snapper: await versionOf('snapper', ['--version'], /snapper (\S+)/),
    'docker-registry': await versionOf('docker-registry', ['--version'], /(\d+\.\d+\.\d+\S*)/),
  };
}

const TABLE_HEAD = [
  '| Scenario | Metric | tiu | Figure | Peer | Peer figure | tiu ÷ peer | range |',
  '|---|---|---|---|---|---|---|---|',
];

function comparisonRow(c: Comparison): string {
  return `| ${c.scenario} | ${c.metric} | ${c.subject} | ${formatSummary(c.subjectSummary, c.unit)} | ${c.peer} | ${formatSummary(c.peerSummary, c.unit)} | ${formatRatio(c.ratio)} | ${formatRange(c.low, c.high)} |`;
}

function table(figures: readonly Figure[]): string {
  const comparisons = compare(figures);
  const rows = [...TABLE_HEAD, ...comparisons.map(comparisonRow)];
  // Figures nobody compares with (a scenario with no peer, or no tiu).
  const key = (scenario: string, metric: string, tool: string): string => `${scenario}\u0000${metric}\u0000${tool}`;
  const compared = new Set(
    comparisons.flatMap((c) => [key(c.scenario, c.metric, c.subject), key(c.scenario, c.metric, c.peer)]),
  );
  for (const f of figures.filter((x) => !compared.has(key(x.scenario, x.metric, x.tool)))) {
    rows.push(`| ${f.scenario} | ${f.metric} | ${f.tool} | ${formatSummary(summarize(f.samples), f.unit)} | | | | |`);
  }
  return rows.join('\n');
}

/** The comparisons the README shows, in this order (scenario, metric, subject, peer). */
const README_ROWS: [string, string, string, string][] = [
  ['update base → upgraded', 'bytes downloaded', 'tiu', APPLY_OCI],
  ['update base → upgraded', 'bytes downloaded', 'tiu', CASYNC],
  ['update base → upgraded', 'bytes downloaded', 'tiu', OSTREE],
  ['update base → upgraded', 'bytes downloaded', TIU_ARTIFACT, OSTREE],
  ['update base → upgraded', 'bytes downloaded', TIU_ARTIFACT, OSTREE_FILE],
  ['update base → upgraded', 'bytes downloaded', 'tiu', IDEAL],
  [MAKE_DELTA, 'delta size', TIU_DELTA, OSTREE_GENERATE],
  [MAKE_DELTA, 'time', TIU_DELTA, OSTREE_GENERATE],
  ['update base → upgraded', 'disk (new snapshot)', 'tiu', APPLY_OCI],
  ['update base → upgraded', 'disk (new snapshot)', 'tiu', CASYNC],
  ['update base → upgraded', 'disk (new snapshot)', 'tiu', OSTREE],
  ['update base → upgraded', 'temporary disk', 'tiu', APPLY_OCI],
  ['update base → upgraded', 'time', 'tiu', APPLY_OCI],
  ['update base → upgraded', 'time', 'tiu', CASYNC],
  ['update base → upgraded', 'time', 'tiu', OSTREE],
  ['update base → upgraded', 'time', TIU_ARTIFACT, OSTREE],
  ['update base → upgraded', 'time', TIU_ARTIFACT, OSTREE_FILE],
  ['update base → upgraded', 'time', TIU_WHOLE, APPLY_OCI],
  ['update base → upgraded', 'peak RSS', 'tiu', APPLY_OCI],
  ['update base → upgraded', 'peak RSS', TIU_WHOLE, APPLY_OCI],
  ['first install (empty snapshot ← base image)', 'peak RSS', 'tiu', 'skopeo + umoci unpack'],
  [CHECK, 'peak RSS', 'tiu', 'skopeo inspect'],
  [STATUS, 'peak RSS', 'tiu', 'snapper list'],
  ['update upgraded → upgraded', 'time', 'tiu', APPLY_OCI],
  ['first install (empty snapshot ← base image)', 'time', 'tiu', 'skopeo + umoci unpack'],
  ['build (base tree → OCI image)', 'time', 'tiu', 'umoci repack'],
  ['build (base tree → OCI image)', 'peak RSS', 'tiu', 'umoci repack'],
  ['push (OCI layout → registry)', 'time', 'tiu', 'skopeo'],
  ['pull (registry → OCI layout)', 'time', 'tiu', 'skopeo'],
  ['push (OCI layout → registry)', 'peak RSS', 'tiu', 'skopeo'],
  ['pull (registry → OCI layout)', 'peak RSS', 'tiu', 'skopeo'],
];

/** The README's excerpt of the table, between its bench markers. */
async function writeReadme(figures: readonly Figure[], mach: Record<string, string>): Promise<void> {
  const path = join(repo, 'README.md');
  const text = await readFile(path, 'utf8');
  const start = text.indexOf('<!-- bench:start');
  const end = text.indexOf('<!-- bench:end -->');
  if (start < 0 || end < start) {
    log('README.md has no bench markers; not updated');
    return;
  }
  const all = compare(figures);
  const rows = README_ROWS.map(([sc, m, s, p]) =>
    all.find((c) => c.scenario === sc && c.metric === m && c.subject === s && c.peer === p),
  ).filter((c) => c !== undefined);
  const load = mach['load average (1/5/15 min) at start'] ?? '?';
  const block = [
    text.slice(start, text.indexOf('\n', start) + 1),
    `From the run of ${mach.date?.slice(0, 10) ?? '?'} (tiu ${mach.tiu ?? '?'}, ${mach.nproc ?? '?'} cores, load average ${load} at the start), median of ${RUNS} runs; the range is what any pair of samples gives.`,
    '',
    ...TABLE_HEAD,
    ...rows.map(comparisonRow),
    '',
  ].join('\n');
  await writeFile(path, text.slice(0, start) + block + text.slice(end));
}

interface EarlierRun {
  date: string;
  commit: string;
  code: string;
  comparisons: Comparison[];
}

/** The results.json in the checkout before this run overwrites it, when it measured the same trees. */
async function earlierRun(treeKey: string): Promise<EarlierRun | string> {
  let json: { machine?: Record<string, string>; trees?: { key?: string }; figures?: Figure[] };
  try {
    json = JSON.parse(await readFile(join(repo, 'bench/results.json'), 'utf8')) as typeof json;
  } catch {
    return 'there is no earlier bench/results.json to compare with';
  }
  if (json.trees?.key !== treeKey)
    return `the earlier bench/results.json measured other trees (key ${json.trees?.key ?? 'none'})`;
  return {
    date: json.machine?.date ?? '?',
    commit: json.machine?.tiu ?? '?',
    code: json.machine?.['tiu code (src, bin, lock file)'] ?? '?',
    comparisons: compare(json.figures ?? []),
  };
}

function recheckSection(
  now: readonly Comparison[],
  earlier: EarlierRun | string,
  commit: string,
  code: string,
): string[] {
  const head = ['## Against the previous run', ''];
  if (typeof earlier === 'string') return [...head, `Not compared: ${earlier}.`, ''];
  const checks = recheck(now, earlier.comparisons);
  const outside = checks.filter((c) => !c.within);
  const same = earlier.code === code && !code.includes('dirty') && code !== 'unknown';
  return [
    ...head,
    `The previous results (${earlier.date}, tiu ${earlier.commit}${same ? `; this run is tiu ${commit}, the same code` : `; this run is tiu ${commit}, other code, so tiu's own figures may have moved on purpose`}): ${checks.length - outside.length} of ${checks.length} ratios of this run lie within the range the previous run reported (widened by 2% relative).`,
    '',
    ...(outside.length
      ? [
          '| Scenario | Metric | tiu | Peer | previous ratio (range) | this run |',
          '|---|---|---|---|---|---|',
          ...outside.map(
            (o) =>
              `| ${o.comparison.scenario} | ${o.comparison.metric} | ${o.comparison.subject} | ${o.comparison.peer} | ${formatRatio(o.earlier.ratio)} (${formatRange(o.earlier.low, o.earlier.high)}) | ${formatRatio(o.comparison.ratio)} |`,
          ),
          '',
        ]
      : []),
  ];
}

/**
 * Peak RSS at both image sizes, per scenario and tool: what grows with the image and what does
 * not (tiu's device commands and copy must not).
 */
function growthSection(ctx: Ctx): string[] {
  const large = ctx.largeTrees;
  if (!large) return [];
  const t = ctx.trees;
  const rows: string[] = [];
  for (const f of ctx.figures) {
    if (f.metric !== 'peak RSS' || f.scenario.endsWith(LARGE_SUFFIX)) continue;
    const g = ctx.figures.find(
      (x) => x.metric === f.metric && x.tool === f.tool && x.scenario === f.scenario + LARGE_SUFFIX,
    );
    if (!g) continue;
    const a = summarize(f.samples);
    const b = summarize(g.samples);
    rows.push(
      `| ${f.scenario} | ${f.tool} | ${formatSummary(a, 'B')} | ${formatSummary(b, 'B')} | ${formatRatio(b.median / a.median)} |`,
    );
  }
  const size = (x: TreeInfo): string =>
    `${(x.bytes.base / 2 ** 20).toFixed(0)} MiB in ${x.diff.files.base} entries (${x.packages.base.length} packages)`;
  return [
    '## Peak RSS by image size',
    '',
    `The base trees (${size(t)}) against the larger trees (${size(large)}: ${large.inputs.include.join(', ')}; the update changes ${large.upgradedPackages.length} packages, ${(large.diff.changedBytes / 2 ** 20).toFixed(1)} MiB of new file content). Medians of ${RUNS} runs (min–max); the last column is larger ÷ base.`,
    '',
    '| Scenario | Tool | base trees | larger trees | growth |',
    '|---|---|---|---|---|',
    ...rows,
    '',
  ];
}

async function writeResults(ctx: Ctx, mach: Record<string, string>, wall: number, treeSeconds: number): Promise<void> {
  const t = ctx.trees;
  const earlier = await earlierRun(t.key);
  const json = {
    machine: mach,
    runs: RUNS,
    wallSeconds: wall,
    treeSeconds,
    sectionSeconds: ctx.sectionSeconds,
    trees: {
      key: t.key,
      release: t.release,
      builtAt: t.builtAt,
      debootstrapSeconds: t.debootstrapSeconds,
      upgradeSeconds: t.upgradeSeconds,
      bytes: t.bytes,
      diff: t.diff,
      upgradedPackages: t.upgradedPackages,
      packages: t.packages.base.length,
    },
    ...(ctx.largeTrees
      ? {
          largeTrees: {
            key: ctx.largeTrees.key,
            include: ctx.largeTrees.inputs.include,
            bytes: ctx.largeTrees.bytes,
            diff: ctx.largeTrees.diff,
            upgradedPackages: ctx.largeTrees.upgradedPackages,
            packages: ctx.largeTrees.packages.base.length,
          },
        }
      : {}),
    figures: ctx.figures.map((f) => ({ ...f, ...summarize(f.samples) })),
    missing: ctx.missing,
    notes: ctx.notes,
  };
  await writeFile(join(repo, `${RESULTS}.json`), JSON.stringify(json, null, 2) + '\n');
  const hows = [...new Map(ctx.figures.filter((f) => f.how).map((f) => [`${f.tool}: ${f.how}`, f])).keys()];
  const md = [
    '# tiu benchmark results',
    '',
    `Written by \`npm run bench\` on ${mach.date}. Each figure is the median of ${RUNS} runs, with min–max in parentheses; the ratio is tiu's median over the peer's (below 1 means tiu needs less), and the range is what any pair of samples gives (tiu's min over the peer's max to tiu's max over the peer's min): the noise of this run.`,
    '',
    table(ctx.figures),
    '',
    ...recheckSection(compare(ctx.figures), earlier, mach.tiu ?? '?', mach['tiu code (src, bin, lock file)'] ?? '?'),
    '',
    ...growthSection(ctx),
    ...(loadAtStart[0]! > cpus().length
      ? [
          `Note: the load average was ${fmtLoad(loadAtStart)} at the start on ${cpus().length} cores (other work on this machine, running or just finished), so times may be inflated and noisy; sizes and byte counts are not affected.`,
          '',
        ]
      : []),
    '## Trees',
    '',
    `Debian bookworm, debootstrap ${t.inputs.variant} + ${t.inputs.include.join(', ')} from ${t.inputs.mirror} (${Object.entries(
      t.release,
    )
      .map(([k, v]) => `${k}: ${v}`)
      .join(
        '; ',
      )}); ${t.packages.base.length} packages, ${t.diff.files.base} entries, ${(t.bytes.base / 2 ** 20).toFixed(0)} MiB of file content.`,
    `The update (\`apt-get upgrade\` with bookworm-updates and bookworm-security from ${t.inputs.securityMirror}) changes ${t.upgradedPackages.length} packages (${t.upgradedPackages.join(', ')}): ${t.diff.changed} changed, ${t.diff.added} added and ${t.diff.removed} removed entries, ${(t.diff.changedBytes / 2 ** 20).toFixed(1)} MiB of new file content.`,
    `Building the trees (cached in ${dirname(t.dir)}, key ${t.key}, built ${t.builtAt}) took ${t.debootstrapSeconds.toFixed(0)} s of debootstrap and ${t.upgradeSeconds.toFixed(0)} s of upgrade, cold.`,
    `This run took ${wall.toFixed(0)} s after the trees, which ${treeSeconds > 30 ? `were built in this run (${treeSeconds.toFixed(0)} s, cold)` : 'came from the cache'}: ${Object.entries(
      ctx.sectionSeconds,
    )
      .map(([k, v]) => `${k} ${v.toFixed(0)} s`)
      .join(', ')}.`,
    '',
    '## What was run',
    '',
    ...hows.map((h) => `- ${h}`),
    ...ctx.notes.map((n) => `- ${n}`),
    '',
    ...(ctx.missing.length ? ['## Not measured', '', ...ctx.missing.map((m) => `- ${m}`), ''] : []),
    '## Machine',
    '',
    ...Object.entries(mach).map(([k, v]) => `- ${k}: ${v}`),
    '',
  ].join('\n');
  await writeFile(join(repo, `${RESULTS}.md`), md);
}

// ---------------------------------------------------------------------------------------------

/**
 * The same build, push/pull, first install and base → upgraded update on the larger trees, for
 * tiu and its main peers (umoci, skopeo, apply-oci), so that results.md can show how each peak
 * RSS grows with the image. Figures land in the same list, their scenarios marked LARGE_SUFFIX.
 */
async function largerPass(ctx: Ctx): Promise<void> {
  const trees = await ensureTrees('large');
  ctx.largeTrees = trees;
  log(`larger trees: ${trees.dir} (${(trees.bytes.base / 2 ** 20).toFixed(0)} MiB, ${trees.diff.files.base} entries)`);
  const large: Ctx = { ...ctx, pass: 'large', trees, work: join(ctx.work, 'large') };
  delete large.umociLayout;
  delete large.tiuLayout;
  await mkdir(large.work);
  try {
    await buildSection(large);
    await registrySection(large);
    await updateSection(large);
  } finally {
    ctx.registry = large.registry;
    await rm(large.work, { recursive: true, force: true });
  }
}

/** Point tiuBin at the form this run measures and say in the notes which one it is. */
async function chooseTiu(ctx: Ctx): Promise<void> {
  if (tiuForm() === 'checkout') {
    ctx.notes.push('tiu ran from this checkout (bin/tiu over src/, TIU_BENCH_TIU=checkout), not as packaged.');
    return;
  }
  tiuBin = await layOutPackage(repo, join(ctx.work, 'tiu-package'));
  const mib = (b: number): string => (b / 2 ** 20).toFixed(1);
  const [pkg, src] = [await versionRss(tiuBin), await versionRss(checkoutTiuBin)];
  ctx.notes.push(
    `tiu ran as packaged (packaging/tiu.spec's layout: bin/tiu over scripts/bundle.sh's dist/, on this checkout's Node ${process.versions.node}), as a device runs it. ` +
      `A checkout runs src/ through type stripping instead: \`tiu --version\` peaks at ${mib(pkg)} MiB packaged and ${mib(src)} MiB from the checkout (medians of 5); the status row shows a device command both ways.`,
  );
}

async function timed(ctx: Ctx, section: string, body: () => Promise<void>): Promise<void> {
  const start = Date.now();
  try {
    await body();
  } finally {
    ctx.sectionSeconds[section] = (Date.now() - start) / 1000;
  }
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('npm run bench needs root (loop devices, btrfs, mounts, chroot)');
  const treeStart = Date.now();
  const trees = await ensureTrees();
  const treeSeconds = (Date.now() - treeStart) / 1000;
  const start = Date.now();
  log(
    `trees: ${trees.dir} (${trees.diff.changed} changed, ${trees.diff.added} added, ${trees.diff.removed} removed entries)`,
  );
  const base = process.env.TIU_BENCH_WORK ?? '/var/tmp';
  const work = await mkdtemp(join(base, 'tiu-bench-'));
  const registry = await startRegistry();
  const proxy = await startCountingProxy(registry.port);
  const ctx: Ctx = {
    work,
    trees,
    pass: 'base',
    figures: [],
    missing: [],
    notes: [],
    sectionSeconds: {},
    proxy,
    registry,
  };
  try {
    await chooseTiu(ctx);
    if (ONLY.some((o) => o !== 'ostree' && o !== 'large')) await timed(ctx, 'build', () => buildSection(ctx));
    if (ONLY.includes('registry')) await timed(ctx, 'push/pull', () => registrySection(ctx));
    if (ONLY.some((o) => o.startsWith('update'))) {
      await timed(ctx, 'install and updates', () =>
        updateSection(ctx, { peers: !ONLY.includes('update-tiu'), tiu: !ONLY.includes('update-peers') }),
      );
    }
    if (ONLY.some((o) => o === 'ostree' || o === 'update' || o === 'update-peers'))
      await timed(ctx, 'ostree', () => ostreePeer(ctx, UPDATE('base')));
    if (ONLY.includes('large')) await timed(ctx, 'larger trees', () => largerPass(ctx));
  } finally {
    await proxy.stop();
    await ctx.registry.stop();
    await rm(work, { recursive: true, force: true });
  }
  const wall = (Date.now() - start) / 1000;
  const mach = await machine();
  await writeResults(ctx, mach, wall, treeSeconds);
  if (FULL) await writeReadme(ctx.figures, mach);
  log(
    `done in ${wall.toFixed(0)} s; wrote ${RESULTS}.md and ${RESULTS}.json${FULL ? " and the README's rows" : ' (a partial run: TIU_BENCH_ONLY or TIU_BENCH_RUNS is set)'}`,
  );
  process.stdout.write(table(ctx.figures) + '\n');
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await main();
}
