import assert from 'node:assert/strict';
import { describe, it } from 'mocha';
import { main } from '../../src/cli/main.ts';

/** Runs main(argv) with stdout and stderr captured. */
async function run(argv: string[]): Promise<{ rc: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const out = process.stdout.write.bind(process.stdout);
  const err = process.stderr.write.bind(process.stderr);
  process.stdout.write = (s: string | Uint8Array) => ((stdout += String(s)), true);
  process.stderr.write = (s: string | Uint8Array) => ((stderr += String(s)), true);
  try {
    return { rc: await main(argv), stdout, stderr };
  } finally {
    process.stdout.write = out;
    process.stderr.write = err;
  }
}

describe('CLI help for commands and command groups', () => {
  it('tiu --help and tiu help list every command, tiu alone is a usage error', async () => {
    for (const argv of [['--help'], ['help']]) {
      const r = await run(argv);
      assert.equal(r.rc, 0);
      assert.match(r.stdout, /^ {2}key generate {2}/m);
      assert.match(r.stdout, /^ {2}update {8}/m);
    }
    assert.equal((await run([])).rc, 2);
  });

  it('tiu key --help and tiu help key list the group, tiu key alone is a usage error', async () => {
    for (const argv of [
      ['key', '--help'],
      ['help', 'key'],
      ['key', '-h'],
    ]) {
      const r = await run(argv);
      assert.equal(r.rc, 0, `${argv.join(' ')}: ${r.stderr}`);
      assert.match(r.stdout, /^usage: tiu key COMMAND/);
      assert.match(r.stdout, /^ {2}key generate {2}create a cosign-compatible/m);
      assert.doesNotMatch(r.stdout, /update/);
    }
    const bare = await run(['key']);
    assert.equal(bare.rc, 2);
    assert.match(bare.stdout, /key generate/);
  });

  it('tiu help COMMAND is the command help; unknown words stay usage errors', async () => {
    const h = await run(['help', 'key', 'generate']);
    assert.equal(h.rc, 0);
    assert.match(h.stdout, /^usage: tiu key generate /);
    assert.equal((await run(['help', 'copy'])).stdout, (await run(['copy', '--help'])).stdout);
    const bad = await run(['key', 'frobnicate']);
    assert.equal(bad.rc, 2);
    assert.match(bad.stderr, /unknown command 'key frobnicate'; run 'tiu key --help' \[USAGE\]/);
    const none = await run(['frobnicate', '--help']);
    assert.equal(none.rc, 2);
    assert.match(none.stderr, /unknown command 'frobnicate'/);
  });
});
