import assert from 'node:assert/strict';
import { MAX_OUTPUT_BYTES, run, spawnFilter } from '../../src/host/exec.ts';
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
  it('cancels a program through its AbortSignal', async () => {
    const ac = new AbortController();
    const started = Date.now();
    setTimeout(() => ac.abort(), 100);
    await assert.rejects(
      run('sleep', ['5'], { signal: ac.signal }),
      (e: unknown) => isTiuError(e, 'COMMAND_FAILED') && e.message.includes('was cancelled'),
    );
    assert.ok(Date.now() - started < 3000, 'the program was stopped, not waited for');
  });
  it('keeps binary output as bytes', async () => {
    const r = await run('printf', ['\\377\\000\\001'], { binary: true });
    assert.deepEqual([...r.stdoutBytes!], [0xff, 0x00, 0x01]);
  });
  it('adds to the environment and removes what is set to undefined', async () => {
    process.env.TIU_EXEC_TEST_DROP = 'present';
    try {
      const r = await run('sh', ['-c', 'echo "$TIU_EXEC_TEST_ADD/${TIU_EXEC_TEST_DROP-unset}/${HOME:+home}"'], {
        env: { TIU_EXEC_TEST_ADD: 'added', TIU_EXEC_TEST_DROP: undefined },
      });
      assert.equal(r.stdout, 'added/unset/home\n');
    } finally {
      delete process.env.TIU_EXEC_TEST_DROP;
    }
  });
  it('returns exit codes it was told are fine, and any with allowFailure', async () => {
    assert.equal((await run('sh', ['-c', 'exit 1'], { okExitCodes: [0, 1] })).exitCode, 1);
    assert.equal((await run('sh', ['-c', 'exit 7'], { allowFailure: true })).exitCode, 7);
  });
  it('says when a program was killed by a signal', async () => {
    await assert.rejects(
      run('sh', ['-c', 'kill -KILL $$']),
      (e: unknown) => isTiuError(e, 'COMMAND_FAILED') && e.message.includes('was killed by SIGKILL'),
    );
  });
  it('stops a program that writes more output than it may hold', async () => {
    await assert.rejects(
      run('head', ['-c', String(MAX_OUTPUT_BYTES + 1), '/dev/zero']),
      (e: unknown) => isTiuError(e, 'COMMAND_FAILED') && e.message.includes(`more than ${MAX_OUTPUT_BYTES} bytes`),
    );
  });
  it('hands stdout piece by piece to onStdout without holding it, whatever its size', async () => {
    let bytes = 0;
    let largest = 0;
    const r = await run('head', ['-c', String(MAX_OUTPUT_BYTES + 1), '/dev/zero'], {
      onStdout: (c) => {
        bytes += c.length;
        largest = Math.max(largest, c.length);
      },
    });
    assert.equal(bytes, MAX_OUTPUT_BYTES + 1);
    assert.equal(r.stdout, '');
    assert.ok(largest <= 1024 * 1024, `a piece of ${largest} bytes`);
  });
  it('stops the program when onStdout throws, and rejects with that error', async () => {
    const refused = new Error('refused');
    const started = Date.now();
    await assert.rejects(
      run('sh', ['-c', 'echo one; exec sleep 30'], {
        onStdout: () => {
          throw refused;
        },
      }),
      (e: unknown) => e === refused,
    );
    assert.ok(Date.now() - started < 10_000);
  });
  it('passes open descriptors on as fds 3 and up', async () => {
    const { openSync, closeSync, readFileSync, rmSync } = await import('node:fs');
    const path = `/tmp/tiu-exec-fd-${process.pid}`;
    const fd = openSync(path, 'w');
    try {
      await run('sh', ['-c', 'echo through-fd3 >&3'], { passFds: [fd] });
    } finally {
      closeSync(fd);
    }
    assert.equal(readFileSync(path, 'utf8'), 'through-fd3\n');
    rmSync(path);
  });
  it('a failing filter rejects with its stderr, and a missing one says so', async () => {
    const f = await spawnFilter('sh', ['-c', 'cat >/dev/null; echo bad input >&2; exit 2']);
    f.stdin.end('x');
    f.stdout.resume();
    await assert.rejects(f.done, (e: unknown) => isTiuError(e, 'COMMAND_FAILED') && e.message.includes('bad input'));
    const missing = await spawnFilter('no-such-filter-tiu', []);
    missing.stdin.on('error', () => {});
    await assert.rejects(
      missing.done,
      (e: unknown) => isTiuError(e, 'COMMAND_FAILED') && e.message.includes('not installed'),
    );
  });
});
