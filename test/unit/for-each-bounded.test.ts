import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { forEachBounded } from '../../src/util/semaphore.ts';

describe('forEachBounded', () => {
  it('runs at most n at a time, every item once, in order of start', async () => {
    let running = 0;
    let most = 0;
    const started: number[] = [];
    await forEachBounded([1, 2, 3, 4, 5, 6, 7], 3, async (i) => {
      started.push(i);
      running++;
      most = Math.max(most, running);
      await sleep(5 * (i % 3));
      running--;
    });
    assert.deepEqual(started, [1, 2, 3, 4, 5, 6, 7]);
    assert.equal(most, 3);
  });

  it('stops handing out items at the first failure, reports only that one, and throws it after the calls in flight end', async () => {
    const started: number[] = [];
    let inFlight = 0;
    const failures: unknown[] = [];
    await assert.rejects(
      forEachBounded(
        [1, 2, 3, 4, 5, 6],
        2,
        async (i) => {
          started.push(i);
          inFlight++;
          try {
            await sleep(i === 2 ? 1 : 20);
            if (i === 1 || i === 2) throw new Error(`item ${i}`);
          } finally {
            inFlight--;
          }
        },
        (e) => failures.push(e),
      ),
      /item 2/,
    );
    assert.equal(inFlight, 0, 'nothing is still running');
    assert.deepEqual(started, [1, 2], 'no item starts after the failure');
    assert.equal(failures.length, 1, 'the second failure (item 1, after item 2) is not reported');
    assert.match(String(failures[0]), /item 2/);
  });
});
