/** ByteBudget: parallel work bounded by the bytes it declares, served in order. */
import assert from 'node:assert/strict';
import { ByteBudget } from '../../src/util/byte-budget.ts';

/** A job that declares `bytes`, records what the budget holds while it runs, and ends when told. */
function job(budget: ByteBudget, bytes: number, log: string[], name: string) {
  let end!: () => void;
  const ended = new Promise<void>((r) => (end = r));
  const done = budget.run(bytes, async () => {
    log.push(`${name}+${budget.used}`);
    await ended;
  });
  return { end, done };
}

const turn = () => new Promise((r) => setImmediate(r));

describe('ByteBudget', () => {
  it('never lets the running calls declare more than the limit, and serves waiters in order', async () => {
    const b = new ByteBudget(10);
    const log: string[] = [];
    const a = job(b, 6, log, 'a');
    const big = job(b, 6, log, 'big'); // does not fit beside a
    const small = job(b, 1, log, 'small'); // would fit, but waits behind big
    await turn();
    assert.deepEqual(log, ['a+6']);
    a.end();
    await a.done;
    await turn();
    assert.deepEqual(log, ['a+6', 'big+7', 'small+7']);
    big.end();
    small.end();
    await Promise.all([big.done, small.done]);
    assert.equal(b.used, 0);
    assert.equal(b.peak, 7);
  });

  it('runs a call larger than the whole budget alone', async () => {
    const b = new ByteBudget(10);
    const log: string[] = [];
    const small = job(b, 2, log, 'small');
    const huge = job(b, 50, log, 'huge');
    await turn();
    assert.deepEqual(log, ['small+2']);
    small.end();
    await small.done;
    await turn();
    assert.deepEqual(log, ['small+2', 'huge+50']);
    const after = job(b, 1, log, 'after');
    await turn();
    assert.equal(log.length, 2, 'nothing runs beside the oversized call');
    huge.end();
    await huge.done;
    await turn();
    assert.deepEqual(log, ['small+2', 'huge+50', 'after+1']);
    after.end();
    await after.done;
  });

  it('gives the bytes back when the call fails', async () => {
    const b = new ByteBudget(10);
    await assert.rejects(
      b.run(8, () => Promise.reject(new Error('boom'))),
      /boom/,
    );
    assert.equal(b.used, 0);
    assert.equal(await b.run(10, () => Promise.resolve(3)), 3);
  });
});
