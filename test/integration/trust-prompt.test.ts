/**
 * The passphrase prompt on a terminal: `script` gives tiu a pty; the test types only after the
 * prompt appeared (so the terminal is already in no-echo mode) and checks nothing is echoed.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const BIN = new URL('../../bin/tiu', import.meta.url).pathname;

/** Run `args` on a pty, answering each prompt (a regexp on the output) with a line. */
function onTerminal(args: string[], answers: [RegExp, string][]): Promise<{ code: number; output: string }> {
  const cmd = [BIN, ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  const env = { ...process.env };
  delete env.COSIGN_PASSWORD;
  delete env.TIU_PASSWORD;
  const child = spawn('script', ['-qec', cmd, '/dev/null'], { env, stdio: ['pipe', 'pipe', 'pipe'] });
  let output = '';
  let next = 0;
  let consumed = 0;
  const onData = (d: Buffer): void => {
    output += d.toString();
    while (next < answers.length && answers[next]![0].test(output.slice(consumed))) {
      consumed = output.length;
      child.stdin.write(answers[next]![1] + '\r');
      next++;
    }
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`timed out; output so far: ${output}`));
    }, 30000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      child.stdin.end();
      resolve({ code: code ?? -1, output });
    });
  });
}

describe('passphrase prompt on a terminal (no echo)', function () {
  this.timeout(60000);
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'tiu-prompt-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('key generate asks twice without echo; a mismatch writes nothing', async () => {
    const ok = await onTerminal(
      ['key', 'generate', '--output-key-prefix', join(dir, 'k')],
      [
        [/Enter passphrase for the new private key: $/, 'typed-secret-41'],
        [/Enter the passphrase again: $/, 'typed-secret-41'],
      ],
    );
    assert.equal(ok.code, 0, ok.output);
    assert.match(ok.output, /Private key written to/);
    assert.ok(!ok.output.includes('typed-secret-41'), `the passphrase was echoed: ${ok.output}`);
    assert.equal(statSync(join(dir, 'k.key')).mode & 0o777, 0o600);

    const bad = await onTerminal(
      ['key', 'generate', '--output-key-prefix', join(dir, 'm')],
      [
        [/Enter passphrase for the new private key: $/, 'one'],
        [/Enter the passphrase again: $/, 'two'],
      ],
    );
    assert.equal(bad.code, 1);
    assert.match(bad.output, /PASSPHRASE_REQUIRED/);
    assert.throws(() => statSync(join(dir, 'm.key')));
  });
});
