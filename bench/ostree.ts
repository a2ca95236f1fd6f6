/**
 * OSTree as a peer (Debian's ostree, the engine under bootc and Fedora CoreOS), on the same trees:
 *   CI:     `ostree commit` of base and of upgraded into an archive repo, then
 *           `ostree static-delta generate --from=base --to=upgraded` (measured: time, peak RSS,
 *           the size of repo/deltas), `ostree summary -u`; the repo is served over HTTP by the
 *           bench's counting proxy (its static directories, as casync's store).
 *   device: a btrfs subvolume holding a bare repo with base (pull-local) and base checked out
 *           with hardlinks, as an OSTree system keeps repo and deployments on one filesystem.
 *           An update is a btrfs snapshot of that subvolume, `ostree pull` of upgraded over
 *           HTTP (which takes the static delta from base) and `ostree checkout -H upgraded`
 *           into it, sync. Disk = btrfs exclusive bytes of the new snapshot (new objects plus
 *           the checkout's directories), as for the other peers. A second variant takes the
 *           same delta as one file (`--inline --filename`): curl, `ostree static-delta
 *           apply-offline`, checkout: the delta format without the pull's logic.
 * ostree refuses device nodes: the commits skip /dev (a skip list; the other peers exclude it
 * when they apply, too).
 */
import { mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeBtrfs } from '../test/helpers/btrfs.ts';
import { measured, sh } from './lib/proc.ts';
import { dirBytes, log, record, RUNS, type Ctx } from './run.ts';
import { exclusiveBytes, Steps } from './update.ts';

/** The peers' names in the figures. */
export const OSTREE = 'ostree (static delta pull, checkout -H)';
export const OSTREE_FILE = 'ostree (static delta file, apply-offline, checkout -H)';
export const OSTREE_GENERATE = 'ostree static-delta generate';
/** The scenario of making a delta in CI (tiu's `tiu delta` is recorded under it too). */
export const MAKE_DELTA = 'make the delta base → upgraded (CI)';

/** The server side: an archive repo with both trees committed and a static delta between them. */
async function serverRepo(ctx: Ctx): Promise<string> {
  const repo = join(ctx.work, 'ostree-repo');
  const skip = join(ctx.work, 'ostree-skip');
  // ostree commit fails on the first device node and a skip list cannot name files below a
  // directory it walks (2022.7), so /dev goes whole.
  await writeFile(skip, '/dev\n');
  await sh('ostree', [`--repo=${repo}`, 'init', '--mode=archive']);
  for (const [branch, tree] of [
    ['base', ctx.trees.base],
    ['upgraded', ctx.trees.upgraded],
  ] as const) {
    log(`ostree commit of ${branch}`);
    const m = await measured('ostree', [`--repo=${repo}`, 'commit', `--branch=${branch}`, `--skip-list=${skip}`, tree]);
    ctx.notes.push(`ostree commit of the ${branch} tree (archive repo, setup, not compared): ${m.wall.toFixed(1)} s.`);
  }
  const deltas = join(repo, 'deltas');
  for (let i = 0; i < RUNS; i++) {
    await rm(deltas, { recursive: true, force: true });
    await rm(join(repo, 'delta-indexes'), { recursive: true, force: true });
    log(`ostree static-delta generate (${i + 1}/${RUNS})`);
    const m = await measured('ostree', [`--repo=${repo}`, 'static-delta', 'generate', '--from=base', '--to=upgraded']);
    record(
      ctx,
      MAKE_DELTA,
      'time',
      's',
      OSTREE_GENERATE,
      [m.wall],
      'ostree static-delta generate --from=base --to=upgraded in an archive repo holding both commits (default options: bsdiff and rollsum per changed file)',
    );
    record(ctx, MAKE_DELTA, 'peak RSS', 'B', OSTREE_GENERATE, [m.rss]);
    record(ctx, MAKE_DELTA, 'delta size', 'B', OSTREE_GENERATE, [await dirBytes(deltas)]);
  }
  await sh('ostree', [`--repo=${repo}`, 'summary', '-u']);
  return repo;
}

/** The same delta as one file (`--inline --filename`), served under /ostree-file/ for the offline variant. */
async function deltaFile(ctx: Ctx, server: string): Promise<{ dir: string; name: string; commit: string }> {
  const dir = join(ctx.work, 'ostree-file');
  await mkdir(dir);
  const name = 'base-upgraded.delta';
  await sh('ostree', [
    `--repo=${server}`,
    'static-delta',
    'generate',
    '--from=base',
    '--to=upgraded',
    '--inline',
    `--filename=${join(dir, name)}`,
  ]);
  const commit = (await sh('ostree', [`--repo=${server}`, 'rev-parse', 'upgraded'])).stdout.trim();
  return { dir, name, commit };
}

export async function ostreePeer(ctx: Ctx, scenario: string): Promise<void> {
  const server = await serverRepo(ctx);
  const file = await deltaFile(ctx, server);
  ctx.proxy.serve('/ostree/', server);
  ctx.proxy.serve('/ostree-file/', file.dir);
  log('ostree device: a btrfs with base pulled into a bare repo and checked out');
  const fs = await makeBtrfs(8192);
  try {
    const base = join(fs.mnt, 'base');
    await sh('btrfs', ['-q', 'subvolume', 'create', base]);
    const repo = (root: string): string => `--repo=${join(root, 'repo')}`;
    await sh('ostree', [repo(base), 'init', '--mode=bare']);
    await sh('ostree', [repo(base), 'pull-local', server, 'base']);
    await mkdir(join(base, 'deploy'));
    await sh('ostree', [repo(base), 'checkout', '-H', 'base', join(base, 'deploy/base')]);
    await sh('ostree', [repo(base), 'remote', 'add', '--no-gpg-verify', 'bench', `${ctx.proxy.url}/ostree/`]);
    await sh('btrfs', ['filesystem', 'sync', fs.mnt]);
    /** One update into a snapshot of base: `fetch` brings upgraded's objects into the snapshot's repo. */
    const update = async (
      tool: string,
      i: number,
      how: string,
      fetch: (snap: string, st: Steps) => Promise<{ temporary: number }>,
    ): Promise<void> => {
      const snap = join(fs.mnt, `update-${i}`);
      const st = new Steps();
      log(`${scenario} with ${tool} (${i + 1}/${RUNS})`);
      await st.run('btrfs', ['-q', 'subvolume', 'snapshot', base, snap]);
      ctx.proxy.reset();
      const { temporary } = await fetch(snap, st);
      const down = ctx.proxy.reset().down;
      await st.run('ostree', [repo(snap), 'checkout', '-H', file.commit, join(snap, 'deploy/upgraded')]);
      await st.run('btrfs', ['filesystem', 'sync', snap]);
      record(ctx, scenario, 'time', 's', tool, [st.wall], how);
      record(ctx, scenario, 'bytes downloaded', 'B', tool, [down]);
      record(ctx, scenario, 'disk (new snapshot)', 'B', tool, [await exclusiveBytes(snap)]);
      record(ctx, scenario, 'temporary disk', 'B', tool, [temporary]);
      record(ctx, scenario, 'peak RSS', 'B', tool, [st.rss]);
      await sh('btrfs', ['-q', 'subvolume', 'delete', snap]);
    };
    for (let i = 0; i < RUNS; i++) {
      await update(
        OSTREE,
        i,
        'ostree: btrfs snapshot of the subvolume holding the bare repo and the base checkout, ostree pull over HTTP (the static delta from base), ostree checkout -H upgraded into the snapshot, sync',
        async (snap, st) => {
          const pull = await st.run('ostree', [repo(snap), 'pull', 'bench', 'upgraded']);
          // ostree 2022.7 also fetches objects the delta holds as loose objects (a race between
          // the delta and the commit scan, ostreedev/ostree#2680): say how many, run by run.
          ctx.notes.push(`ostree pull, run ${i + 1}: ${pull.stdout.trim().split('\n').pop() ?? ''}`);
          return { temporary: 0 };
        },
      );
      await update(
        OSTREE_FILE,
        i,
        'ostree, the delta as one file: as ostree, but curl of the static delta made with --inline --filename, ostree static-delta apply-offline, the file removed; no pull logic (and none of its loose fetches)',
        async (snap, st) => {
          const local = join(snap, file.name);
          await st.run('curl', ['-sSf', '-o', local, `${ctx.proxy.url}/ostree-file/${file.name}`]);
          await st.run('ostree', [repo(snap), 'static-delta', 'apply-offline', local]);
          const size = (await stat(local)).size;
          await rm(local);
          return { temporary: size };
        },
      );
    }
  } finally {
    await fs.cleanup();
  }
}
