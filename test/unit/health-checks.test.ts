import { strict as assert } from 'node:assert';
import { mkdtemp, mkdir, writeFile, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { discoverChecks, runChecks } from '../../src/deploy/health-checks.ts';

describe('deploy/health-checks', () => {
  let root: string;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'tiu-health-'));
    const img = join(root, 'usr/libexec/tiu/health.d');
    const adm = join(root, 'etc/tiu/health.d');
    const hc = join(root, 'usr/lib/health-checker');
    for (const d of [img, adm, hc]) await mkdir(d, { recursive: true });
    await writeFile(join(img, '10-ok'), '#!/bin/sh\necho fine\n', { mode: 0o755 });
    await writeFile(join(img, '20-fails'), '#!/bin/sh\necho "disk gone" >&2\nexit 3\n', { mode: 0o755 });
    await writeFile(join(img, '30-replaced'), '#!/bin/sh\nexit 1\n', { mode: 0o755 });
    await writeFile(join(adm, '30-replaced'), '#!/bin/sh\nexit 0\n', { mode: 0o755 });
    await writeFile(join(img, '40-masked'), '#!/bin/sh\nexit 1\n', { mode: 0o755 });
    await symlink('/dev/null', join(adm, '40-masked'));
    await writeFile(join(img, '50-slow'), '#!/bin/sh\nsleep 30\n', { mode: 0o755 });
    await writeFile(join(img, '60-not-executable'), '#!/bin/sh\nexit 0\n', { mode: 0o644 });
    await writeFile(join(img, '.hidden'), '#!/bin/sh\nexit 1\n', { mode: 0o755 });
    await writeFile(join(hc, 'plugin.sh'), '#!/bin/sh\n[ "$1" = check ] || exit 9\nexit 0\n', { mode: 0o755 });
    await writeFile(join(hc, 'README'), 'not a plugin\n');
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('finds the image, admin and health-checker checks in order, with overrides and masks', async () => {
    const checks = await discoverChecks(root);
    assert.deepEqual(
      checks.map((c) => [c.name, c.path.slice(root.length), c.args]),
      [
        ['10-ok', '/usr/libexec/tiu/health.d/10-ok', []],
        ['20-fails', '/usr/libexec/tiu/health.d/20-fails', []],
        ['30-replaced', '/etc/tiu/health.d/30-replaced', []],
        ['50-slow', '/usr/libexec/tiu/health.d/50-slow', []],
        ['60-not-executable', '/usr/libexec/tiu/health.d/60-not-executable', []],
        ['health-checker:plugin.sh', '/usr/lib/health-checker/plugin.sh', ['check']],
      ],
    );
  });

  it('runs them: exit codes, timeouts and programs that cannot start are failures with their output', async () => {
    const results = await runChecks(await discoverChecks(root), 1000);
    const by = Object.fromEntries(results.map((r) => [r.name, r]));
    assert.equal(by['10-ok']!.ok, true);
    assert.equal(by['10-ok']!.output, 'fine');
    assert.equal(by['20-fails']!.ok, false);
    assert.equal(by['20-fails']!.exitCode, 3);
    assert.equal(by['20-fails']!.output, 'disk gone');
    assert.equal(by['30-replaced']!.ok, true);
    assert.equal(by['50-slow']!.ok, false);
    assert.equal(by['50-slow']!.timedOut, true);
    assert.equal(by['60-not-executable']!.ok, false);
    assert.match(by['60-not-executable']!.output, /could not run .*60-not-executable/);
    assert.equal(by['health-checker:plugin.sh']!.ok, true);
  });

  it('a system without check directories has no checks', async () => {
    assert.deepEqual(await discoverChecks(join(root, 'nowhere')), []);
  });
});
