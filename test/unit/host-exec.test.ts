import assert from 'node:assert/strict';
import { run, spawnFilter } from '../../src/host/exec.ts';
import { isTiuError } from '../../src/errors.ts';
import { text } from 'node:stream/consumers';

describe('host/exec', () => {
  it('runs a program and returns stdout', async () => {
    const r = await run('sh', ['-c', 'echo hi; echo err >&2']);
    assert.equal(r.stdout, 'hi\n');
    assert.equal(r.stderr, 'err\n');
  });
  it('puts the stderr tail into the error', async () => {
    await assert.rejects(
      run('sh', ['-c', 'echo broken thing >&2; exit 3']),
      (e: unknown) => isTiuError(e, 'COMMAND_FAILED') && e.message.includes('broken thing') && e.details.exitCode === 3,
    );
  });
  it('says when a program is missing', async () => {
    await assert.rejects(
      run('no-such-program-tiu', []),
      (e: unknown) => isTiuError(e, 'COMMAND_FAILED') && e.message.includes('not installed'),
    );
  });
  it('times out', async () => {
    await assert.rejects(
      run('sleep', ['5'], { timeout: 200 }),
      (e: unknown) => isTiuError(e, 'COMMAND_FAILED') && e.message.includes('timed out'),
    );
  });
  it('passes input and streams through a filter', async () => {
    assert.equal((await run('cat', [], { input: 'abc' })).stdout, 'abc');
    const f = await spawnFilter('tr', ['a-z', 'A-Z']);
    f.stdin.end('hello');
    const [out] = await Promise.all([text(f.stdout), f.done]);
    assert.equal(out, 'HELLO');
  });
});
