/**
 * scripts/install.sh: the layout a device gets (the VM image is made with it too). The installed
 * tiu runs compiled JavaScript only: every command here runs with Node's type stripping turned
 * off, so one .ts module loaded at run time would fail it.
 */
import assert from 'node:assert/strict';
import { access, mkdir, mkdtemp, readFile, readdir, readlink, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from '../../src/host/exec.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

describe('scripts/install.sh (the installed layout)', function () {
  this.timeout(120_000);
  let tmp: string;
  let dest: string;
  /** The installed /usr/bin/tiu, with type stripping off and no compile cache. */
  const installed = (args: string[]) =>
    run(join(dest, 'usr/bin/tiu'), args, {
      env: { NODE_OPTIONS: '--no-experimental-strip-types', TIU_COMPILE_CACHE: 'off', NODE_COMPILE_CACHE: undefined },
      allowFailure: true,
    });

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'tiu-install-'));
    // '#' and '%' in the install path: bin/tiu must pass paths, not URLs, to node.
    dest = join(tmp, 'root #1 %41');
    const r = await run('bash', [join(ROOT, 'scripts/install.sh'), dest]);
    assert.match(r.stdout, /installed tiu \S+ into /);
  });
  after(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  it('lays out /usr/lib/tiu (JavaScript, no sources), /usr/bin/tiu and the units', async () => {
    const lib = join(dest, 'usr/lib/tiu');
    assert.deepEqual((await readdir(lib)).sort(), ['bin', 'dist', 'node_modules', 'package.json', 'systemd']);
    const dist = await readdir(join(lib, 'dist'), { recursive: true });
    assert.ok(dist.includes(join('cli', 'main.js')));
    assert.deepEqual(
      dist.filter((f) => f.endsWith('.ts')),
      [],
    );
    assert.equal(await readlink(join(dest, 'usr/bin/tiu')), '../lib/tiu/bin/tiu');
    await access(join(lib, 'node_modules/.bin/node'));
    await access(join(lib, 'node_modules/tar-stream/package.json'));
    // Development dependencies stay out.
    await assert.rejects(access(join(lib, 'node_modules/typescript')), { code: 'ENOENT' });
    await assert.rejects(access(join(lib, 'node_modules/mocha')), { code: 'ENOENT' });
    assert.deepEqual((await readdir(join(dest, 'usr/lib/systemd/system'))).sort(), [
      'tiu-health.service',
      'tiu-update.service',
      'tiu-update.timer',
    ]);
  });

  it('the installed tiu runs without the TypeScript stripper: version, build, inspect, and typed errors', async () => {
    const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { version: string };
    const v = await installed(['--version']);
    assert.equal(v.exitCode, 0, v.stderr);
    assert.equal(v.stdout.trim(), `tiu ${pkg.version}`);

    const tree = join(tmp, 'tree');
    await mkdir(join(tree, 'usr/lib'), { recursive: true });
    await writeFile(join(tree, 'usr/lib/os-release'), 'NAME="test"\nVERSION_ID="1"\n');
    await writeFile(join(tree, 'usr/lib/hello'), 'hello\n');
    const layout = join(tmp, 'layout');
    const b = await installed(['build', tree, '--tag', `oci:${layout}:v1`, '--json']);
    assert.equal(b.exitCode, 0, b.stderr);
    const i = await installed(['inspect', `oci:${layout}:v1`, '--json']);
    assert.equal(i.exitCode, 0, i.stderr);
    const info = JSON.parse(i.stdout) as { Labels?: Record<string, string> };
    assert.equal(info.Labels?.['org.opensuse.tiu.os-release.VERSION_ID'], '1');

    const bad = await installed(['inspect', `oci:${join(tmp, 'nothing')}:v1`]);
    assert.notEqual(bad.exitCode, 0);
    assert.match(bad.stderr, /\[[A-Z_]+\]/);
  });
});
