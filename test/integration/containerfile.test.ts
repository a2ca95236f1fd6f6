/**
 * The Containerfile, built by buildah from a local base image (scripts/container-base.sh: a
 * debootstrap tree with Node.js, made into an oci-archive by tiu itself; no registry), and the
 * image then does what a CI job does: tiu key generate, build, sign. The host's tiu verifies the
 * signature with the job's public key.
 *
 * buildah runs with its own storage (vfs) in a temp dir and chroot isolation: this machine's crun
 * cannot create containers (hybrid cgroups, no setrlimit), and chroot needs neither.
 * The debootstrap tree is kept in $TIU_CONTAINER_CACHE (default /var/cache/tiu-test/container-base).
 */
import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run, type RunResult } from '../../src/host/exec.ts';
import { requireRoot } from '../helpers/env.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CACHE = process.env.TIU_CONTAINER_CACHE ?? '/var/cache/tiu-test/container-base';
const IDENTITY = 'registry.example/ci/microos';

describe('Containerfile (buildah build from a local base; the image runs a CI job)', function () {
  this.timeout(900_000);
  let tmp: string;
  let buildah: (args: string[], opts?: { allowFailure?: boolean; cwd?: string }) => Promise<RunResult>;
  let container = '';

  before(async function () {
    requireRoot(this, 'needs root (debootstrap, buildah)');
    tmp = await mkdtemp(join(tmpdir(), 'tiu-containerfile-'));
    const store = join(tmp, 'storage');
    buildah = (args, opts = {}) =>
      run(
        'buildah',
        ['--root', join(store, 'root'), '--runroot', join(store, 'run'), '--storage-driver', 'vfs', ...args],
        opts,
      );
  });
  after(async () => {
    if (container) await buildah(['rm', container], { allowFailure: true });
    if (tmp) await rm(join(tmp, 'storage'), { recursive: true, force: true }).catch(() => undefined);
    // vfs layers can hold immutable or busy files only briefly; what is left goes with the dir.
    if (tmp) await run('rm', ['-rf', tmp], { allowFailure: true });
  });

  it('builds with buildah build -f Containerfile from the context the header describes', async () => {
    // The build context as the Containerfile's header makes it: the wrapper, package.json, and
    // build/ from scripts/bundle.sh and scripts/container-base.sh.
    const ctx = join(tmp, 'ctx');
    await mkdir(join(ctx, 'bin'), { recursive: true });
    for (const f of ['Containerfile', '.containerignore', 'package.json', 'bin/tiu', 'bin/compile-cache.mjs'])
      await copyFile(join(ROOT, f), join(ctx, f));
    await run('chmod', ['755', join(ctx, 'bin/tiu')]);
    await run(join(ROOT, 'scripts/bundle.sh'), [join(ctx, 'build')], {
      env: { PATH: `${join(ROOT, 'node_modules/.bin')}:${process.env.PATH}` },
    });
    await mkdir(CACHE, { recursive: true });
    await run(join(ROOT, 'scripts/container-base.sh'), [join(ctx, 'build/base.tar'), join(CACHE, 'tree')], {
      env: { PATH: `${join(ROOT, 'node_modules/.bin')}:${process.env.PATH}` },
    });

    // Run in the context, as the header says: BASE's default (oci-archive:build/base.tar:base) is
    // a path relative to where buildah runs.
    const b = await buildah(
      ['build', '--isolation', 'chroot', '-t', 'localhost/tiu:test', '-f', 'Containerfile', '.'],
      {
        allowFailure: true,
        cwd: ctx,
      },
    );
    assert.equal(b.exitCode, 0, b.stdout.slice(-3000) + b.stderr.slice(-3000));
    const version = (JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
    assert.match(b.stdout, new RegExp(`^tiu ${version.replace(/\./g, '\\.')}$`, 'm'), 'the RUN step ran tiu');
    const config = JSON.parse((await buildah(['inspect', '--type', 'image', 'localhost/tiu:test'])).stdout) as {
      OCIv1: { config: { Entrypoint?: string[] } };
    };
    assert.deepEqual(config.OCIv1.config.Entrypoint, ['tiu']);
  });

  it('the image runs tiu key generate, tiu build and tiu sign on a mounted tree, as a CI job would', async () => {
    const job = join(tmp, 'job');
    await mkdir(join(job, 'tree/usr/lib'), { recursive: true });
    await writeFile(join(job, 'tree/usr/lib/os-release'), 'NAME="ci"\nVERSION_ID="7"\n');
    await writeFile(join(job, 'tree/usr/lib/hello'), 'hello\n');
    container = (await buildah(['from', '--pull=never', 'localhost/tiu:test'])).stdout.trim();
    const inJob = (args: string[]) =>
      buildah(
        [
          'run',
          '--isolation',
          'chroot',
          '--env',
          'COSIGN_PASSWORD=ci',
          '-v',
          `${job}:/work`,
          container,
          '--',
          'tiu',
          ...args,
        ],
        { allowFailure: true },
      );
    const k = await inJob(['key', 'generate', '--output-key-prefix', '/work/ci']);
    assert.equal(k.exitCode, 0, k.stderr);
    const b = await inJob(['build', '/work/tree', '--tag', 'oci:/work/out:v1', '--json']);
    assert.equal(b.exitCode, 0, b.stderr);
    const s = await inJob(['sign', '--key', '/work/ci.key', '--identity', `${IDENTITY}:v1`, 'oci:/work/out:v1']);
    assert.equal(s.exitCode, 0, s.stderr);

    const tiu = join(ROOT, 'bin/tiu');
    const v = await run(
      tiu,
      ['verify', '--key', join(job, 'ci.pub'), '--identity', `${IDENTITY}:v1`, `oci:${job}/out:v1`],
      {
        allowFailure: true,
      },
    );
    assert.equal(v.exitCode, 0, v.stdout + v.stderr);
    const other = await run(tiu, ['key', 'generate', '--output-key-prefix', join(tmp, 'other')], {
      env: { COSIGN_PASSWORD: 'x' },
    });
    assert.equal(other.exitCode, 0);
    const w = await run(tiu, ['verify', '--key', join(tmp, 'other.pub'), `oci:${job}/out:v1`], { allowFailure: true });
    assert.notEqual(w.exitCode, 0, "another key does not verify the job's signature");
  });
});
