/**
 * Start-up of the CLI: the command table names match the commands, a command imports only
 * its own modules (copy and build do not load execa), and Node's compile cache (bin/tiu +
 * bin/compile-cache.mjs) is used when its directory is writable, and never gets in the way when
 * it is missing, impossible to make or read-only.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, writeFile, stat } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from '../../src/host/exec.ts';
import { commands } from '../../src/cli/commands/index.ts';
import { requireRoot } from '../helpers/env.ts';

const TIU = fileURLToPath(new URL('../../bin/tiu', import.meta.url));
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const NODE = join(ROOT, 'node_modules/.bin/node');

/** bin/tiu with only the given cache settings (none inherited from the test's environment). */
function tiu(args: string[], env: Record<string, string | undefined>) {
  return run(TIU, args, {
    env: { NODE_COMPILE_CACHE: undefined, NODE_DEBUG_NATIVE: 'COMPILE_CACHE', ...env },
    allowFailure: true,
  });
}

async function files(dir: string): Promise<number> {
  let n = 0;
  for (const d of await readdir(dir, { withFileTypes: true, recursive: true })) if (d.isFile()) n++;
  return n;
}

describe('CLI start-up', function () {
  this.timeout(60_000);
  let tmp: string;
  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'tiu-startup-'));
  });
  after(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  it('names every command in the table as the command names itself', async () => {
    for (const e of commands) assert.equal((await e.load()).name, e.name);
    assert.equal(new Set(commands.map((c) => c.name)).size, commands.length);
  });

  it('copy and build import neither execa nor the other commands', async () => {
    const hook = join(tmp, 'list-modules.mjs');
    await writeFile(
      hook,
      `import { registerHooks } from 'node:module';
const seen = [];
registerHooks({ load(url, ctx, next) { seen.push(url); return next(url, ctx); } });
const { main } = await import(${JSON.stringify(join(ROOT, 'src/cli/main.ts'))});
await main([process.argv[2], '--help']);
process.stderr.write(JSON.stringify(seen));\n`,
    );
    for (const name of ['copy', 'build']) {
      const r = await run(NODE, ['--disable-warning=ExperimentalWarning', hook, name], {
        env: { NODE_COMPILE_CACHE: undefined },
      });
      assert.match(r.stdout, new RegExp(`usage: tiu ${name}`));
      const seen = JSON.parse(r.stderr) as string[];
      assert.ok(
        seen.some((u) => u.endsWith(`/src/cli/commands/${name}.ts`)),
        `${name}.ts was loaded`,
      );
      assert.deepEqual(
        seen.filter((u) => u.includes('/node_modules/execa/')),
        [],
        `${name} loads execa`,
      );
      assert.deepEqual(
        seen.filter((u) => /\/src\/cli\/commands\/(?!index\.ts)/.test(u) && !u.endsWith(`/${name}.ts`)),
        [],
        `${name} loads other commands`,
      );
    }
  });

  it('tiu build, delta and update run with a fixed malloc mmap threshold (update also with two malloc arenas) that programs they start do not inherit; copy without', async () => {
    const probe = join(tmp, 'env-probe.mjs');
    await writeFile(
      probe,
      `import { readFileSync } from 'node:fs';
process.on('exit', () => {
  const environ = readFileSync('/proc/self/environ', 'utf8').split('\\0');
  const initial = (name) => environ.find((l) => l.startsWith(name + '=')) ?? null;
  process.stderr.write('PROBE ' + JSON.stringify({
    initial: initial('MALLOC_MMAP_THRESHOLD_'), now: process.env.MALLOC_MMAP_THRESHOLD_ ?? null,
    arenas: initial('MALLOC_ARENA_MAX'), arenasNow: process.env.MALLOC_ARENA_MAX ?? null,
    marker: process.env.TIU_DROP_MALLOC_ENV ?? null,
  }) + '\\n');
});\n`,
    );
    const probeOf = (stderr: string) =>
      JSON.parse(/PROBE (.*)/.exec(stderr)![1]!) as {
        initial: string | null;
        now: string | null;
        arenas: string | null;
        arenasNow: string | null;
        marker: string | null;
      };
    const env = {
      NODE_OPTIONS: `--import ${probe}`,
      MALLOC_MMAP_THRESHOLD_: undefined,
      MALLOC_ARENA_MAX: undefined,
      TIU_DROP_MALLOC_ENV: undefined,
    };
    const none = { arenas: null, arenasNow: null, marker: null };
    const b = await tiu(['build', '--help'], env);
    assert.equal(b.exitCode, 0, b.stderr);
    assert.deepEqual(probeOf(b.stderr), { initial: 'MALLOC_MMAP_THRESHOLD_=32768', now: null, ...none });
    const d = await tiu(['delta', '--help'], env);
    assert.equal(d.exitCode, 0, d.stderr);
    assert.deepEqual(probeOf(d.stderr), { initial: 'MALLOC_MMAP_THRESHOLD_=32768', now: null, ...none });
    const u = await tiu(['update', '--help'], env);
    assert.equal(u.exitCode, 0, u.stderr);
    assert.deepEqual(probeOf(u.stderr), {
      initial: 'MALLOC_MMAP_THRESHOLD_=65536',
      now: null,
      arenas: 'MALLOC_ARENA_MAX=2',
      arenasNow: null,
      marker: null,
    });
    const c = await tiu(['copy', '--help'], env);
    assert.deepEqual(probeOf(c.stderr), { initial: null, now: null, ...none });
    // A caller's own setting is left alone, and passed on; only what bin/tiu set is dropped.
    const own = await tiu(['build', '--help'], { ...env, MALLOC_MMAP_THRESHOLD_: '65536' });
    assert.deepEqual(probeOf(own.stderr), { initial: 'MALLOC_MMAP_THRESHOLD_=65536', now: '65536', ...none });
    const ownArenas = await tiu(['update', '--help'], { ...env, MALLOC_ARENA_MAX: '4' });
    assert.deepEqual(probeOf(ownArenas.stderr), {
      initial: 'MALLOC_MMAP_THRESHOLD_=65536',
      now: null,
      arenas: 'MALLOC_ARENA_MAX=4',
      arenasNow: '4',
      marker: null,
    });
  });

  it("tiu build runs libuv's thread pool with a thread per core (at most 4); other commands and a caller's own size keep theirs", async () => {
    const probe = join(tmp, 'pool-probe.mjs');
    // The probe starts the pool itself (a build --help queues no work) and counts its threads.
    await writeFile(
      probe,
      `import { readdirSync, readFileSync } from 'node:fs';
import { stat } from 'node:fs/promises';
await stat('/');
process.on('exit', () => {
  const names = readdirSync('/proc/self/task').map((t) => readFileSync('/proc/self/task/' + t + '/comm', 'utf8').trim());
  process.stderr.write('POOL ' + names.filter((n) => n === 'libuv-worker').length + '\\n');
});\n`,
    );
    const poolOf = (stderr: string) => Number(/POOL (\d+)/.exec(stderr)![1]);
    const env = { NODE_OPTIONS: `--import ${probe}`, UV_THREADPOOL_SIZE: undefined };
    const cores = Math.min(4, availableParallelism());
    const b = await tiu(['build', '--help'], env);
    assert.equal(b.exitCode, 0, b.stderr);
    assert.equal(poolOf(b.stderr), cores);
    const c = await tiu(['copy', '--help'], env);
    assert.equal(poolOf(c.stderr), 4);
    const own = await tiu(['build', '--help'], { ...env, UV_THREADPOOL_SIZE: '3' });
    assert.equal(poolOf(own.stderr), 3);
  });

  it("copy runs without V8's optimizing tiers, update without Maglev; build and the other commands keep them", async () => {
    const probe = join(tmp, 'argv-probe.mjs');
    await writeFile(
      probe,
      "process.on('exit', () => process.stderr.write('ARGV ' + JSON.stringify(process.execArgv) + '\\n'));\n",
    );
    const argvOf = async (args: string[]): Promise<string[]> => {
      const r = await tiu(args, { NODE_OPTIONS: `--import ${probe}` });
      assert.equal(r.exitCode, 0, r.stderr);
      return JSON.parse(/ARGV (.*)/.exec(r.stderr)![1]!) as string[];
    };
    const copy = await argvOf(['copy', '--help']);
    assert.ok(copy.includes('--no-maglev') && copy.includes('--no-turbofan'), copy.join(' '));
    const update = await argvOf(['update', '--help']);
    assert.ok(update.includes('--no-maglev') && !update.includes('--no-turbofan'), update.join(' '));
    for (const cmd of ['build', 'status']) {
      const argv = await argvOf([cmd, '--help']);
      assert.ok(!argv.some((a) => a === '--no-maglev' || a === '--no-turbofan'), `${cmd}: ${argv.join(' ')}`);
    }
  });

  it('picks the cache directory: TIU_COMPILE_CACHE, off, /var/cache for root, then XDG or ~/.cache', async () => {
    // Importing the preload enables a cache in this process unless told not to.
    const saved = process.env.TIU_COMPILE_CACHE;
    process.env.TIU_COMPILE_CACHE = 'off';
    const { cacheCandidates } = await import('../../bin/compile-cache.mjs');
    if (saved === undefined) delete process.env.TIU_COMPILE_CACHE;
    else process.env.TIU_COMPILE_CACHE = saved;
    assert.deepEqual(cacheCandidates({ TIU_COMPILE_CACHE: '/x/c' }, 0), ['/x/c']);
    assert.deepEqual(cacheCandidates({ TIU_COMPILE_CACHE: 'off', HOME: '/home/u' }, 0), []);
    assert.deepEqual(cacheCandidates({ HOME: '/root' }, 0), [
      '/var/cache/tiu/node-compile',
      '/root/.cache/tiu/node-compile',
    ]);
    assert.deepEqual(cacheCandidates({ HOME: '/home/u', XDG_CACHE_HOME: '/home/u/xc' }, 1000), [
      '/home/u/xc/tiu/node-compile',
    ]);
    assert.deepEqual(cacheCandidates({ XDG_CACHE_HOME: 'relative' }, 1000), []);
    assert.deepEqual(cacheCandidates({}, 1000), []);
  });

  it('fills a missing cache directory and reads it back on the next run', async () => {
    const dir = join(tmp, 'cache');
    const first = await tiu(['--version'], { TIU_COMPILE_CACHE: dir });
    assert.equal(first.exitCode, 0, first.stderr);
    assert.match(first.stdout, /^tiu \d/);
    assert.ok((await files(dir)) >= 3, 'cache entries were written');
    const second = await tiu(['--version'], { TIU_COMPILE_CACHE: dir });
    assert.equal(second.exitCode, 0);
    assert.match(second.stderr, /retrieving transpile cache for StrippedTypeScript \S+\/src\/cli\/main\.ts/);
  });

  it('runs without a cache when the directory cannot be made, or is turned off', async () => {
    const file = join(tmp, 'a-file');
    await writeFile(file, 'not a directory');
    for (const env of [
      { TIU_COMPILE_CACHE: join(file, 'cache') },
      { TIU_COMPILE_CACHE: join(tmp, 'no', 'such', 'parents', 'cache') },
      { TIU_COMPILE_CACHE: 'off' },
    ]) {
      const r = await tiu(['--version'], env);
      assert.equal(r.exitCode, 0, r.stderr);
      assert.match(r.stdout, /^tiu \d/);
      assert.doesNotMatch(r.stderr, /saving transpilation cache/, JSON.stringify(env));
    }
    await assert.rejects(stat(join(tmp, 'no')), { code: 'ENOENT' });
  });

  describe('read-only cache directory', () => {
    let ro: string | undefined;
    before(function () {
      requireRoot(this, 'needs root for a read-only bind mount');
    });
    after(async () => {
      if (ro) await run('umount', [ro], { allowFailure: true });
    });

    it('reads a read-only cache and still runs when it is empty', async () => {
      const warm = join(tmp, 'ro-warm');
      // Warmed by the same command: Node keys the cache by V8 flags, and copy's differ (bin/tiu).
      assert.equal((await tiu(['copy', '--help'], { TIU_COMPILE_CACHE: warm })).exitCode, 0);
      const before = await files(warm);
      await run('mount', ['--bind', warm, warm]);
      ro = warm;
      await run('mount', ['-o', 'remount,bind,ro', warm]);
      const r = await tiu(['copy', '--help'], { TIU_COMPILE_CACHE: warm });
      assert.equal(r.exitCode, 0, r.stderr);
      assert.match(r.stdout, /usage: tiu copy/);
      assert.match(r.stderr, /retrieving transpile cache for StrippedTypeScript \S+\/src\/cli\/main\.ts/);
      assert.equal(await files(warm), before, 'nothing was written');
      await run('umount', [warm]);
      ro = undefined;

      const empty = join(tmp, 'ro-empty');
      await run('mkdir', [empty]);
      await run('mount', ['--bind', empty, empty]);
      ro = empty;
      await run('mount', ['-o', 'remount,bind,ro', empty]);
      const e = await tiu(['copy', '--help'], { TIU_COMPILE_CACHE: empty });
      assert.equal(e.exitCode, 0, e.stderr);
      assert.match(e.stdout, /usage: tiu copy/);
      assert.equal(await files(empty), 0);
    });
  });
});
