/**
 * First install and updates on a real btrfs laid out like MicroOS (test/helpers/microos.ts):
 *   - apply-oci, the way transactional-update applies an OCI image: skopeo pull into the
 *     device's OCI store, umoci unpack, `snapper create --from OLD --read-write`,
 *     `rsync -aHAX --inplace --delete` of the unpacked rootfs into the new snapshot;
 *   - casync: `casync extract --seed=OLD --reflink=yes` of the new tree's index, chunks served
 *     over the counting proxy, into a fresh subvolume;
 *   - tiu update --sysroot.
 * Figures: bytes downloaded (the proxy), disk (btrfs exclusive bytes of the new snapshot),
 * temporary disk the method needs besides the snapshot, wall time (with a final filesystem
 * sync), peak RSS.
 */
import { existsSync } from 'node:fs';
import { lstat as st, mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createMicroOS, MICROOS_SUBVOLUMES, type MicroOS } from '../test/helpers/microos.ts';
import { measured, sh, type Measured } from './lib/proc.ts';
import { checkoutTiuBin, dirBytes, firstLine, log, record, RUNS, tiuHas, tiuBin, type Ctx } from './run.ts';
import { IDEAL_HOW, idealUpdateBytes } from './lib/ideal.ts';
import { DELTA_REPO, makeTiuDelta, pushWithDelta } from './tiu-delta.ts';

/**
 * What apply-oci and the tree copies leave alone: MicroOS's own subvolumes, runtime dirs, and
 * the host's snapper configuration (the Debian trees bring none).
 */
const EXCLUDES = [
  '/.snapshots',
  ...MICROOS_SUBVOLUMES.map((s) => `/${s}`),
  '/proc',
  '/sys',
  '/dev',
  '/run',
  '/tmp',
  '/mnt',
  '/boot/efi',
  '/etc/snapper',
  '/etc/default/snapper',
];
const RSYNC = ['-aHAX', '--numeric-ids', '--inplace', '--delete', ...EXCLUDES.map((e) => `--exclude=${e}`)];

interface Step {
  wall: number;
  rss: number;
}

/** Several measured steps as one: wall times add up, peak RSS is the largest. */
export class Steps {
  wall = 0;
  rss = 0;
  async run(cmd: string, args: readonly string[]): Promise<Measured> {
    const m = await measured(cmd, args);
    this.add(m);
    return m;
  }
  add(m: Step): void {
    this.wall += m.wall;
    this.rss = Math.max(this.rss, m.rss);
  }
}

async function setReadOnly(path: string, ro: boolean): Promise<void> {
  await sh('btrfs', ['property', 'set', '-ts', path, 'ro', String(ro)]);
}

/** btrfs exclusive data bytes of a tree (extents nobody else references). */
export async function exclusiveBytes(path: string): Promise<number> {
  await sh('btrfs', ['filesystem', 'sync', path]);
  const r = await sh('btrfs', ['filesystem', 'du', '-s', '--raw', path]);
  const line = r.stdout.trim().split('\n').pop()!.trim().split(/\s+/);
  const n = Number(line[1]);
  if (!Number.isFinite(n)) throw new Error(`cannot read btrfs filesystem du output: ${r.stdout}`);
  return n;
}

/** Delete a subvolume and the subvolumes nested in it (inode 256 marks a subvolume root). */
async function deleteSubvolume(path: string, opts: { nestedOnly?: boolean } = {}): Promise<void> {
  const r = await sh('find', [path, '-mindepth', '1', '-type', 'd', '-inum', '256']);
  const nested = r.stdout
    .split('\n')
    .filter(Boolean)
    .sort((a, b) => b.length - a.length);
  if (!opts.nestedOnly) await setReadOnly(path, false);
  for (const p of opts.nestedOnly ? nested : [...nested, path]) {
    await setReadOnly(p, false);
    await sh('btrfs', ['-q', 'subvolume', 'delete', p]);
  }
}

function snapper(os: MicroOS, args: string[]): [string, string[]] {
  return ['snapper', ['--no-dbus', '--root', os.sysroot, '-c', 'root', ...args]];
}

async function snapperCreate(os: MicroOS, from: number, steps: Steps): Promise<number> {
  const [c, a] = snapper(os, [
    'create',
    '--from',
    String(from),
    '--read-write',
    '--print-number',
    '--cleanup-algorithm',
    'number',
    '--description',
    'bench',
  ]);
  const m = await steps.run(c, a);
  const n = Number(m.stdout.trim());
  if (!Number.isInteger(n)) throw new Error(`snapper create printed no number: ${m.stdout}`);
  // Debian's snapper has no 50-etc plugin: the nested /etc subvolume comes out as an empty
  // placeholder. Do what the plugin does on MicroOS: snapshot the old /etc into the new one.
  const etc = join(os.snapshotPath(n), 'etc');
  await st(etc).then(async (s) => {
    if (s.ino === 2 || s.ino === 256) {
      await steps.run('rmdir', [etc]);
      await steps.run('btrfs', ['-q', 'subvolume', 'snapshot', join(os.snapshotPath(from), 'etc'), etc]);
    }
  });
  return n;
}

async function snapperDelete(os: MicroOS, n: number): Promise<void> {
  // snapper refuses while a nested subvolume (/etc) is inside.
  await setReadOnly(os.snapshotPath(n), false);
  await deleteSubvolume(os.snapshotPath(n), { nestedOnly: true });
  const [c, a] = snapper(os, ['delete', String(n)]);
  await sh(c, a);
}

/**
 * Put an image into snapshot N the way apply-oci would have left it (for the starting states):
 * umoci unpack, then rsync into the snapshot. (Copying the debootstrap tree directly would leave
 * nanosecond mtimes that the image's tar headers do not carry, and rsync would later rewrite
 * those files for nothing.)
 */
async function installImage(os: MicroOS, layout: string, tag: string, n: number, staging: string): Promise<void> {
  const snap = os.snapshotPath(n);
  await rm(staging, { recursive: true, force: true });
  await sh('umoci', ['unpack', '--image', `${layout}:${tag}`, staging]);
  await setReadOnly(snap, false);
  await sh('rsync', [...RSYNC, `${join(staging, 'rootfs')}/`, `${snap}/`]);
  await setReadOnly(snap, true);
  await rm(staging, { recursive: true, force: true });
}

export async function updateSection(
  ctx: Ctx,
  which: { peers: boolean; tiu: boolean } = { peers: true, tiu: true },
): Promise<void> {
  if (!ctx.umociLayout) throw new Error('the update section needs the build section (umoci images)');
  const reg = ctx.proxy.host;
  // The images in the registry: the umoci-built ones for the peers, tiu bundles for tiu.
  for (const tag of ['base', 'upgraded']) {
    await sh('skopeo', [
      'copy',
      '-q',
      '--dest-tls-verify=false',
      `oci:${ctx.umociLayout}:${tag}`,
      `docker://${reg}/bench/umoci:${tag}`,
    ]);
    if (ctx.tiuLayout)
      await sh('skopeo', [
        'copy',
        '-q',
        '--dest-tls-verify=false',
        `oci:${ctx.tiuLayout}:${tag}`,
        `docker://${reg}/bench/tiu:${tag}`,
      ]);
  }
  // The larger trees' pass measures tiu's own paths and the main peers only (growth, not breadth).
  const withArtifact = which.tiu && ctx.pass === 'base' && (await makeTiuDelta(ctx));
  if (withArtifact) await pushWithDelta(ctx);
  ctx.proxy.reset();
  if (which.peers) await peers(ctx);
  if (!which.tiu) return;
  if (ctx.tiuLayout && (await tiuHas('update'))) {
    await tiuUpdates(ctx, withArtifact);
  } else {
    ctx.missing.push(
      `first install and updates: ${ctx.tiuLayout ? '`tiu update`' : '`tiu build` (for the bundles) and `tiu update`'} not in this checkout yet`,
    );
  }
}

const FIRST = 'first install (empty snapshot ← base image)';
export const UPDATE = (from: string): string => `update ${from} → upgraded`;

async function peers(ctx: Ctx): Promise<void> {
  const reg = ctx.proxy.host;
  const umoci = ctx.umociLayout!;
  log('peers: a MicroOS-layout btrfs with base in snapshot 1 and upgraded in snapshot 2');
  const os = await createMicroOS({ sizeMiB: 8192, files: [] });
  try {
    // The device's OCI store (on the /var subvolume), holding the image each state runs.
    const varLib = join(os.sysroot, 'var/lib/bench');
    await mkdir(varLib, { recursive: true });
    await installImage(os, umoci, 'base', 1, join(varLib, 'staging'));
    const two = await snapperCreate(os, 1, new Steps());
    await installImage(os, umoci, 'upgraded', two, join(varLib, 'staging'));
    const states = [
      { name: 'base', snap: 1 },
      { name: 'upgraded', snap: two },
    ];
    const lean = ctx.pass !== 'base';
    for (const st of states)
      await sh('skopeo', [
        'copy',
        '-q',
        `oci:${umoci}:${st.name}`,
        `oci:${join(varLib, `store-${st.name}`)}:${st.name}`,
      ]);

    // casync's server side: one chunk store, an index per state, served through the proxy.
    const serve = join(ctx.work, 'casync-serve');
    await mkdir(serve, { recursive: true });
    for (const st of lean ? [] : states) {
      log(`casync make of snapshot ${st.snap} (${st.name})`);
      await sh('casync', [
        'make',
        `--store=${join(serve, 'store')}`,
        join(serve, `${st.name}.caidx`),
        os.snapshotPath(st.snap),
      ]);
    }
    ctx.proxy.serve('/casync/', serve);
    const targets = join(os.top, 'bench-targets');
    await mkdir(targets);

    for (let i = 0; i < RUNS; i++) {
      // First install into an empty subvolume: skopeo pull + umoci unpack.
      {
        const tool = 'skopeo + umoci unpack';
        const store = join(varLib, 'first-store');
        const target = join(targets, `first-${i}`);
        await rm(store, { recursive: true, force: true });
        const st = new Steps();
        ctx.proxy.reset();
        log(`first install with ${tool} (${i + 1}/${RUNS})`);
        await st.run('skopeo', [
          'copy',
          '-q',
          '--src-tls-verify=false',
          `docker://${reg}/bench/umoci:base`,
          `oci:${store}:base`,
        ]);
        const down = ctx.proxy.reset().down;
        await st.run('btrfs', ['-q', 'subvolume', 'create', target]);
        await st.run('umoci', ['unpack', '--image', `${store}:base`, join(target, 'bundle')]);
        await st.run('btrfs', ['filesystem', 'sync', target]);
        record(
          ctx,
          FIRST,
          'time',
          's',
          tool,
          [st.wall],
          'first install: skopeo copy docker://… oci:STORE, umoci unpack into a new subvolume (the rootfs lands under bundle/), sync',
        );
        record(ctx, FIRST, 'bytes downloaded', 'B', tool, [down]);
        record(ctx, FIRST, 'disk (new snapshot)', 'B', tool, [await exclusiveBytes(target)]);
        record(ctx, FIRST, 'temporary disk', 'B', tool, [await dirBytes(store)]);
        record(ctx, FIRST, 'peak RSS', 'B', tool, [st.rss]);
        await deleteSubvolume(target);
        await rm(store, { recursive: true, force: true });
      }

      for (const from of lean ? states.slice(0, 1) : states) {
        const scenario = UPDATE(from.name);
        // apply-oci
        {
          const tool = APPLY_OCI;
          const store = join(varLib, 'run-store');
          const bundle = join(varLib, 'bundle');
          await rm(store, { recursive: true, force: true });
          await rm(bundle, { recursive: true, force: true });
          await sh('cp', ['-a', '--reflink=always', join(varLib, `store-${from.name}`), store]);
          const before = await dirBytes(store);
          const st = new Steps();
          ctx.proxy.reset();
          log(`${scenario} with apply-oci (${i + 1}/${RUNS})`);
          await st.run('skopeo', [
            'copy',
            '-q',
            '--src-tls-verify=false',
            `docker://${reg}/bench/umoci:upgraded`,
            `oci:${store}:upgraded`,
          ]);
          const down = ctx.proxy.reset().down;
          await st.run('umoci', ['unpack', '--image', `${store}:upgraded`, bundle]);
          const n = await snapperCreate(os, from.snap, st);
          const snap = os.snapshotPath(n);
          await st.run('rsync', [...RSYNC, `${join(bundle, 'rootfs')}/`, `${snap}/`]);
          await st.run('btrfs', ['property', 'set', '-ts', snap, 'ro', 'true']);
          await st.run('btrfs', ['filesystem', 'sync', snap]);
          record(
            ctx,
            scenario,
            'time',
            's',
            tool,
            [st.wall],
            'apply-oci: skopeo copy docker://… oci:STORE (the store already holds the running image), umoci unpack, snapper create --from OLD --read-write, rsync -aHAX --inplace --delete (MicroOS subvolumes excluded), read-only, sync',
          );
          record(ctx, scenario, 'bytes downloaded', 'B', tool, [down]);
          record(ctx, scenario, 'disk (new snapshot)', 'B', tool, [await exclusiveBytes(snap)]);
          record(ctx, scenario, 'temporary disk', 'B', tool, [
            (await dirBytes(store)) - before + (await dirBytes(bundle)),
          ]);
          record(ctx, scenario, 'peak RSS', 'B', tool, [st.rss]);
          await snapperDelete(os, n);
          await rm(store, { recursive: true, force: true });
          await rm(bundle, { recursive: true, force: true });
        }
        // casync
        if (!lean) {
          const tool = CASYNC;
          const target = join(targets, `casync-${i}-${from.name}`);
          const st = new Steps();
          ctx.proxy.reset();
          log(`${scenario} with casync (${i + 1}/${RUNS})`);
          await st.run('btrfs', ['-q', 'subvolume', 'create', target]);
          await st.run('casync', [
            'extract',
            `--store=${ctx.proxy.url}/casync/store`,
            `--seed=${os.snapshotPath(from.snap)}`,
            '--reflink=yes',
            `${ctx.proxy.url}/casync/upgraded.caidx`,
            target,
          ]);
          await st.run('btrfs', ['property', 'set', '-ts', target, 'ro', 'true']);
          await st.run('btrfs', ['filesystem', 'sync', target]);
          const down = ctx.proxy.reset().down;
          record(
            ctx,
            scenario,
            'time',
            's',
            tool,
            [st.wall],
            'casync: casync extract --store=http://…/store --seed=OLD-SNAPSHOT --reflink=yes http://…/upgraded.caidx into a new subvolume, read-only, sync (index and store made by casync make from the installed trees)',
          );
          record(ctx, scenario, 'bytes downloaded', 'B', tool, [down]);
          record(ctx, scenario, 'disk (new snapshot)', 'B', tool, [await exclusiveBytes(target)]);
          record(ctx, scenario, 'temporary disk', 'B', tool, [0]);
          record(ctx, scenario, 'peak RSS', 'B', tool, [st.rss]);
          await deleteSubvolume(target);
        }
      }
    }
  } finally {
    await os.teardown();
  }
}

/** What a reboot does to the sysroot: mount the (new) default subvolume and the subvolumes again. */
async function reboot(os: MicroOS): Promise<void> {
  await sh('umount', ['-R', os.sysroot]);
  await sh('mount', [os.loop, os.sysroot]);
  await sh('mount', ['-o', 'subvol=@/.snapshots', os.loop, join(os.sysroot, '.snapshots')]);
  for (const sv of MICROOS_SUBVOLUMES) await sh('mount', ['-o', `subvol=@/${sv}`, os.loop, join(os.sysroot, sv)]);
}

async function snapshotNumbers(os: MicroOS): Promise<Set<number>> {
  const names = await readdir(join(os.sysroot, '.snapshots'));
  return new Set(names.filter((n) => /^\d+$/.test(n)).map(Number));
}

/** One tiu update, measured and recorded; returns the snapshot it created, if any. */
async function tiuStep(
  ctx: Ctx,
  os: MicroOS,
  step: { scenario: string; repo?: string; tag: string; tool: string; args: string[]; how: string },
  i: number,
): Promise<number | undefined> {
  const cache = join(os.sysroot, 'var/cache/tiu');
  const before = await snapshotNumbers(os);
  const cacheBefore = existsSync(cache) ? await dirBytes(cache) : 0;
  ctx.proxy.reset();
  log(`${step.scenario} with ${step.tool} (${i + 1}/${RUNS})`);
  const st = new Steps();
  await st.run(tiuBin, [
    'update',
    `docker://${ctx.proxy.host}/${step.repo ?? 'bench/tiu'}:${step.tag}`,
    '--sysroot',
    os.sysroot,
    ...step.args,
  ]);
  await st.run('btrfs', ['filesystem', 'sync', os.sysroot]);
  const down = ctx.proxy.reset().down;
  const created = [...(await snapshotNumbers(os))].filter((n) => !before.has(n));
  const snap = created.length ? Math.max(...created) : undefined;
  const disk = snap === undefined ? 0 : await exclusiveBytes(os.snapshotPath(snap));
  record(ctx, step.scenario, 'time', 's', step.tool, [st.wall], step.how);
  record(ctx, step.scenario, 'bytes downloaded', 'B', step.tool, [down]);
  record(ctx, step.scenario, 'disk (new snapshot)', 'B', step.tool, [disk]);
  record(ctx, step.scenario, 'temporary disk', 'B', step.tool, [
    (existsSync(cache) ? await dirBytes(cache) : 0) - cacheBefore,
  ]);
  record(ctx, step.scenario, 'peak RSS', 'B', step.tool, [st.rss]);
  return snap;
}

export const CHECK = 'update --check (base booted, upgraded offered)';
export const STATUS = 'status (two snapshots)';
export const HEALTH = 'health (no checks installed)';
export const ROLLBACK = 'rollback (upgraded default → base)';

/**
 * The device's other commands on the state a first install leaves (base booted, upgraded in
 * the registry), each beside what a user would otherwise run where there is such a thing:
 * `skopeo inspect` of the offered image for --check, `snapper list` for status.
 */
async function deviceCommands(ctx: Ctx, os: MicroOS, i: number): Promise<void> {
  log(`device commands (${i + 1}/${RUNS})`);
  const ref = `docker://${ctx.proxy.host}/bench/tiu:upgraded`;
  const steps: [string, string, string[], string][] = [
    [
      CHECK,
      'tiu',
      [tiuBin, 'update', '--check', ref, '--sysroot', os.sysroot],
      'tiu update --check docker://… --sysroot DIR',
    ],
    [
      CHECK,
      'skopeo inspect',
      ['skopeo', 'inspect', '--tls-verify=false', `docker://${ctx.proxy.host}/bench/umoci:upgraded`],
      'skopeo inspect docker://… (is there a newer image?)',
    ],
    [STATUS, 'tiu', [tiuBin, 'status', '--sysroot', os.sysroot], 'tiu status --sysroot DIR'],
    ...(tiuBin === checkoutTiuBin
      ? []
      : [
          [
            STATUS,
            'tiu from a checkout',
            [checkoutTiuBin, 'status', '--sysroot', os.sysroot],
            'bin/tiu status --sysroot DIR in the checkout (src/ through type stripping; the other tiu rows run the package)',
          ] as [string, string, string[], string],
        ]),
    [STATUS, 'snapper list', snapper(os, ['list']).flat(), 'snapper --no-dbus --root DIR list'],
    [
      HEALTH,
      'tiu',
      [tiuBin, 'health', '--sysroot', os.sysroot],
      'tiu health --sysroot DIR (runs and reports the checks; none installed)',
    ],
  ];
  for (const [scenario, tool, [cmd, ...args], how] of steps) {
    const m = await measured(cmd!, args);
    record(ctx, scenario, 'time', 's', tool, [m.wall], how);
    record(ctx, scenario, 'peak RSS', 'B', tool, [m.rss]);
  }
}

export const TIU_WHOLE = 'tiu --transfer whole-layer';
/** The peers' names in the figures (the README's rows pick them by name). */
export const APPLY_OCI = 'apply-oci (skopeo + umoci + rsync)';
export const CASYNC = 'casync (seeded extract, reflink)';

/** The ideal per-file zstd download of base → upgraded (bench/lib/ideal.ts), next to tiu's. */
export const IDEAL = 'ideal per-file zstd (the frames the update needs)';
export const TIU_ARTIFACT = 'tiu with delta artifact';

/**
 * tiu on its own MicroOS per run: first install of base over the minimal fake OS the harness
 * puts in snapshot 1, reboot; then base → upgraded three ways, each from the same state (base
 * booted, tiu's cache as the first install left it, no other snapshot of upgraded: after each,
 * `tiu rollback`, reboot, the new snapshot deleted, the cache put back): file-level delta (the
 * default, from bench/tiu, which has no delta artifact), with the delta artifact (bench/tiu-delta,
 * when `tiu delta` made one), whole layers; then, on upgraded, upgraded → upgraded.
 */
async function tiuUpdates(ctx: Ctx, withArtifact: boolean): Promise<void> {
  ctx.notes.push(
    'tiu update runs with default-hooks = false (the peers run no hooks either) and a policy.json that accepts unsigned images (insecureAcceptAnything).',
  );
  const how =
    'tiu update docker://… --sysroot DIR (snapper snapshot of the booted one, diff-apply, /etc merge, commit), sync; a reboot (remount of the new default) between steps';
  for (let i = 0; i < RUNS; i++) {
    const os = await createMicroOS({ sizeMiB: 8192 });
    try {
      await mkdir(join(os.sysroot, 'etc/tiu'), { recursive: true });
      await writeFile(join(os.sysroot, 'etc/tiu/tiu.conf'), 'default-hooks = false\n');
      await mkdir(join(os.sysroot, 'etc/containers'), { recursive: true });
      await writeFile(
        join(os.sysroot, 'etc/containers/policy.json'),
        JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }) + '\n',
      );
      const base = await tiuStep(ctx, os, { scenario: FIRST, tag: 'base', tool: 'tiu', args: [], how }, i);
      if (base === undefined) throw new Error('the first install created no snapshot');
      await reboot(os);
      await deviceCommands(ctx, os, i);
      const cache = join(os.sysroot, 'var/cache/tiu');
      const savedCache = join(os.top, 'bench-cache-after-install');
      if (existsSync(cache)) await sh('cp', ['-a', '--reflink=auto', cache, savedCache]);
      if (i === 0) {
        // The same in every run: the plan against the booted base does not change.
        const ideal = await idealUpdateBytes(ctx.proxy.host, 'bench/tiu', 'upgraded', os.snapshotPath(base));
        record(ctx, UPDATE('base'), 'bytes downloaded', 'B', IDEAL, [ideal.bytes], IDEAL_HOW);
      }
      const backToBase = async (snap: number | undefined, what: string): Promise<void> => {
        if (snap === undefined) throw new Error(`base → upgraded (${what}) created no snapshot`);
        const r = await measured(tiuBin, ['rollback', String(base), '--sysroot', os.sysroot]);
        if (what === 'file-level') {
          record(
            ctx,
            ROLLBACK,
            'time',
            's',
            'tiu',
            [r.wall],
            'tiu rollback N --sysroot DIR (the default back to the booted base)',
          );
          record(ctx, ROLLBACK, 'peak RSS', 'B', 'tiu', [r.rss]);
        }
        await reboot(os);
        await snapperDelete(os, snap);
        await rm(cache, { recursive: true, force: true });
        if (existsSync(savedCache)) await sh('cp', ['-a', '--reflink=auto', savedCache, cache]);
      };
      await backToBase(
        await tiuStep(ctx, os, { scenario: UPDATE('base'), tag: 'upgraded', tool: 'tiu', args: [], how }, i),
        'file-level',
      );
      if (withArtifact) {
        await backToBase(
          await tiuStep(
            ctx,
            os,
            {
              scenario: UPDATE('base'),
              repo: DELTA_REPO,
              tag: 'upgraded',
              tool: TIU_ARTIFACT,
              args: [],
              how: 'tiu update from a repository where upgraded has a delta artifact from base (tiu delta, pushed with tiu copy --referrers): the patches of the files the system lacks instead of their frames',
            },
            i,
          ),
          'delta artifact',
        );
      }
      const whole = await tiuStep(
        ctx,
        os,
        {
          scenario: UPDATE('base'),
          tag: 'upgraded',
          tool: TIU_WHOLE,
          args: ['--transfer', 'whole-layer'],
          how: 'tiu update … --transfer whole-layer: the same update, downloading whole layers instead of only the files the system lacks',
        },
        i,
      );
      if (whole === undefined) throw new Error('base → upgraded (whole layers) created no snapshot');
      await reboot(os);
      if (ctx.pass === 'base')
        await tiuStep(ctx, os, { scenario: UPDATE('upgraded'), tag: 'upgraded', tool: 'tiu', args: [], how }, i);
    } catch (e) {
      ctx.missing.push(`tiu update failed: ${firstLine(e)}`);
      return;
    } finally {
      await os.teardown();
    }
  }
}
