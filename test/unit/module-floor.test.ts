/**
 * Every module a device command loads costs RSS on a small device (issue 19): `tiu update`
 * imports each path's code where the path is chosen (src/cli/commands/update.ts,
 * src/deploy/wiring.ts, src/trust/policy.ts). These tests run Node with a load hook that logs
 * every module it loads, so a static import that pulls the heavy code back fails here.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'mocha';

const root = fileURLToPath(new URL('../..', import.meta.url));

/** Code that only a signed policy, the whole-layer path or a real update (not a check) needs. */
const TRUST = ['src/trust/policy-signed.ts', 'src/trust/verify.ts', 'src/trust/x509.ts', 'src/trust/keys.ts'];
const SIGSTORE = 'node_modules/@sigstore/core/';
const TAR_ENGINE = ['src/deploy/apply/tar-apply.ts', 'src/deploy/apply/tar-validate.ts'];
const MERGES = ['src/deploy/etc-merge.ts', 'src/deploy/users-merge.ts'];
const UPDATE_STAGES = ['src/deploy/update/index.ts', 'src/deploy/update/commit.ts', 'src/deploy/update/merge.ts'];
/** What only writing a snapshot needs: the apply engine's writing half, the whole-image copy, hooks. */
const WRITING = ['src/deploy/apply/execute.ts', 'src/copy/copy.ts', 'src/deploy/hooks.ts', 'src/deploy/chroot.ts'];

describe('modules each device path loads', function () {
  this.timeout(60_000);
  let dir: string;
  let hook: string;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'tiu-modules-'));
    hook = join(dir, 'hook.mjs');
    writeFileSync(
      hook,
      "import { registerHooks } from 'node:module';\n" +
        "import { appendFileSync } from 'node:fs';\n" +
        'registerHooks({ load(url, context, next) { appendFileSync(process.env.MODULE_LOG, url + "\\n"); return next(url, context); } });\n',
    );
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  /** The modules (paths below the checkout, node: built-ins left out) that running `args` loaded. */
  function loaded(name: string, args: string[]): string[] {
    const log = join(dir, `${name}.txt`);
    writeFileSync(log, '');
    const r = spawnSync(process.execPath, ['--disable-warning=ExperimentalWarning', '--import', hook, ...args], {
      cwd: root,
      env: { ...process.env, MODULE_LOG: log },
      encoding: 'utf8',
    });
    assert.equal(r.status, 0, `node ${args.join(' ')}: ${r.stderr}`);
    const mods = readFileSync(log, 'utf8')
      .split('\n')
      .filter((u) => u.startsWith('file:'))
      .map((u) => fileURLToPath(u))
      .map((p) => (p.startsWith(root) ? p.slice(root.length) : p.replace(/^.*?(node_modules\/)/, '$1')));
    assert.ok(mods.length > 0, `no module logged in ${log}`);
    return mods;
  }

  function assertNone(mods: string[], heavy: string[], what: string): void {
    const found = mods.filter((m) => heavy.some((h) => m === h || (h.endsWith('/') && m.startsWith(h))));
    assert.deepEqual(found, [], `${what} loaded ${found.join(', ')}`);
  }

  it('tiu update --help loads the command line and not the update', () => {
    const mods = loaded('help', ['src/cli/main.ts', 'update', '--help']);
    assert.ok(mods.includes('src/cli/commands/update.ts'));
    const implementation = mods.filter((m) => /^(src\/(deploy|transport|trust)|node_modules)\//.test(m));
    assert.deepEqual(implementation, [], 'update --help loaded implementation modules');
    assert.ok(mods.length < 15, `update --help loaded ${mods.length} modules: ${mods.join(', ')}`);
  });

  it('update --check imports no signature, tar, merge, commit, copy, hook or writing code', () => {
    const mods = loaded('check', ['--input-type=module', '-e', "await import('./src/cli/update-check.ts')"]);
    assert.ok(mods.includes('src/deploy/update/check.ts') && mods.includes('src/deploy/wiring.ts'));
    assertNone(mods, [...TRUST, SIGSTORE, ...TAR_ENGINE, ...MERGES, ...UPDATE_STAGES, ...WRITING], 'update --check');
  });

  it('an update imports the tar engine, the merges and the signature code only when it uses them', () => {
    const mods = loaded('update', ['--input-type=module', '-e', "await import('./src/cli/update-apply.ts')"]);
    assert.ok(mods.includes('src/deploy/update/index.ts') && mods.includes('src/deploy/wiring.ts'));
    assertNone(mods, [...TRUST, SIGSTORE, ...TAR_ENGINE, ...MERGES], 'update');
  });

  it('an insecureAcceptAnything policy is checked without loading the signature code, a signed one loads it', () => {
    const check = (policy: object) => [
      '--input-type=module',
      '-e',
      "const { checkPolicy, parsePolicy } = await import('./src/trust/policy.ts');\n" +
        "const { parseReference } = await import('./src/oci/reference.ts');\n" +
        `const policy = parsePolicy(${JSON.stringify(JSON.stringify(policy))});\n` +
        "const root = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: 'sha256:' + '0'.repeat(64), size: 2 };\n" +
        "const source = { name: 'test', async resolve() { throw new Error('no signatures here'); }, async fetch() { throw new Error('no signatures here'); }, async exists() { return false; } };\n" +
        "await checkPolicy(policy, source, root, parseReference('docker://example.org/os:1')).catch((e) => console.log(e.code ?? e.message));",
    ];
    const open = loaded('policy-open', check({ default: [{ type: 'insecureAcceptAnything' }] }));
    assert.ok(open.includes('src/trust/policy.ts'));
    assertNone(open, [...TRUST, SIGSTORE], 'an insecureAcceptAnything policy');
    const signed = loaded(
      'policy-signed',
      check({ default: [{ type: 'sigstoreSigned', keyData: Buffer.from('not a key').toString('base64') }] }),
    );
    // The guard above must be able to fail: the same hook sees the signature code when it is used.
    assert.ok(signed.includes('src/trust/policy-signed.ts') && signed.includes('src/trust/verify.ts'));
  });
});
