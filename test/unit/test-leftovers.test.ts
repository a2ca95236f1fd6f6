/**
 * test/helpers/at-exit.ts: what a test helper made in /tmp is gone when the test process ends,
 * also when its teardown never ran (the process exits early, or SIGTERM ends it); what a teardown
 * already removed is not touched again. And the helpers that made dozens of leftovers per CI run
 * (makeFulcioCa's CA directories, made while a test file loads) register theirs.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const NODE = process.execPath;
const AT_EXIT = new URL('../helpers/at-exit.ts', import.meta.url).pathname;
const FIXTURES = new URL('../helpers/sigstore-fixtures.ts', import.meta.url).pathname;

/** Run `code` (an ES module) in a child node; it prints READY when set up; `signal` ends it then. */
async function child(
  code: string,
  signal?: NodeJS.Signals,
): Promise<{ out: string; code: number | null; signal: string | null }> {
  const p = spawn(NODE, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  p.stdout.on('data', (d: Buffer) => {
    out += d.toString();
    if (signal && out.includes('READY')) p.kill(signal);
  });
  p.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const [c, s] = await new Promise<[number | null, string | null]>((r) => p.once('close', (c, s) => r([c, s])));
  assert.ok(out.includes('READY'), `the child set up: ${err}`);
  return { out, code: c, signal: s };
}

describe('test leftovers: helpers undo what they made when the test process ends', function () {
  this.timeout(60_000);
  let scratch = '';
  beforeEach(async () => {
    scratch = await mkdtemp(join(tmpdir(), 'tiu-at-exit-test-'));
  });
  afterEach(async () => {
    await rm(scratch, { recursive: true, force: true });
  });

  const setup = (dir: string, forget: boolean) => `
    import { mkdirSync, rmSync } from 'node:fs';
    import { atExit } from ${JSON.stringify(AT_EXIT)};
    const d = ${JSON.stringify(dir)};
    mkdirSync(d + '/inner', { recursive: true });
    const done = atExit(() => rmSync(d, { recursive: true, force: true }));
    ${forget ? 'done(); ' : ''}console.log('READY');
  `;

  it('a normal exit without the teardown removes the directory', async () => {
    const dir = join(scratch, 'a');
    const r = await child(setup(dir, false) + 'process.exit(3);');
    assert.equal(r.code, 3, 'the exit code is kept');
    assert.equal(existsSync(dir), false);
  });

  it('SIGTERM (a CI timeout) removes it and the process still ends by the signal', async () => {
    const dir = join(scratch, 'b');
    const r = await child(setup(dir, false) + 'setInterval(() => undefined, 1000);', 'SIGTERM');
    assert.equal(r.signal, 'SIGTERM');
    assert.equal(existsSync(dir), false);
  });

  it('after the teardown ran (forgotten), nothing is removed at exit', async () => {
    const dir = join(scratch, 'c');
    await child(setup(dir, true));
    assert.equal(existsSync(join(dir, 'inner')), true);
  });

  it("makeFulcioCa's directory (made while a test file loads) is gone when the process ends", async () => {
    const r = await child(`
      import { makeFulcioCa } from ${JSON.stringify(FIXTURES)};
      const ca = makeFulcioCa('leftover-check');
      console.log('DIR=' + ca.dir);
      console.log('READY');
    `);
    const dir = /DIR=(.*)/.exec(r.out)?.[1] ?? '';
    assert.match(dir, /tiu-leftover-check-/);
    assert.equal(existsSync(dir), false, `${dir} was removed`);
  });
});
