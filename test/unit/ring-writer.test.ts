import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { setImmediate as tick } from 'node:timers/promises';
import { BufferPool } from '../../src/util/buffer-pool.ts';
import { RingWriter } from '../../src/util/ring-writer.ts';

const SLOT = 64 * 1024;

/** A slow sink (a few event-loop turns per buffer) that records what it got and what it held at once. */
function recordingSink(): {
  sink: (b: Buffer) => Promise<void>;
  hash: ReturnType<typeof createHash>;
  sizes: number[];
  maxHeld: () => number;
} {
  const hash = createHash('sha256');
  const sizes: number[] = [];
  let held = 0;
  let max = 0;
  return {
    hash,
    sizes,
    maxHeld: () => max,
    sink: async (b) => {
      held += b.length;
      max = Math.max(max, held);
      // the bytes are read when the sink is done, as a socket or a file write would
      await tick();
      await tick();
      hash.update(b);
      sizes.push(b.length);
      held -= b.length;
    },
  };
}

function chunk(i: number, size: number): Buffer {
  const b = Buffer.alloc(size, i & 0xff);
  b.writeUInt32BE(i, 0);
  return b;
}

describe('RingWriter: a stream copied through a few owned buffers', () => {
  it('hands the bytes over in order, unchanged, through at most `slots` buffers of its pool', async () => {
    const pool = new BufferPool(SLOT, 16 * SLOT);
    const rec = recordingSink();
    const ring = new RingWriter(rec.sink, { slots: 3, slotSize: SLOT, pool });
    const expected = createHash('sha256');
    let total = 0;
    // 16 MiB in odd-sized chunks that straddle buffer boundaries
    for (let i = 0; total < 16 * 1024 * 1024; i++) {
      const c = chunk(i, 10_000 + (i % 7) * 9_999);
      expected.update(c);
      total += c.length;
      await ring.write(c);
    }
    await ring.end();
    assert.equal(rec.hash.digest('hex'), expected.digest('hex'));
    assert.equal(
      rec.sizes.reduce((a, b) => a + b, 0),
      total,
    );
    assert.ok(
      rec.sizes.slice(0, -1).every((n) => n === SLOT),
      'every buffer but the last is full',
    );
    assert.equal(ring.buffersTaken, 3);
    assert.equal(pool.allocated, 3, 'a 16 MiB stream allocates three buffers, not one per chunk');
    assert.ok(rec.maxHeld() <= 3 * SLOT, `the sink held ${rec.maxHeld()} bytes at once`);
    assert.equal(pool.freeBytes, 3 * SLOT, 'the buffers are back in the pool');
  });

  it('a second stream reuses the first one’s buffers', async () => {
    const pool = new BufferPool(SLOT, 16 * SLOT);
    for (let n = 0; n < 2; n++) {
      const ring = new RingWriter(recordingSink().sink, { slots: 2, slotSize: SLOT, pool });
      for (let i = 0; i < 64; i++) await ring.write(chunk(i, 50_000));
      await ring.end();
    }
    assert.equal(pool.allocated, 2);
  });

  it('a failing sink fails the next write or end, and gives its buffers back', async () => {
    const pool = new BufferPool(SLOT, 16 * SLOT);
    let calls = 0;
    const ring = new RingWriter(
      async () => {
        await tick();
        if (++calls === 2) throw new Error('disk full');
      },
      { slots: 2, slotSize: SLOT, pool },
    );
    await assert.rejects(async () => {
      for (let i = 0; i < 100; i++) await ring.write(chunk(i, SLOT));
      await ring.end();
    }, /disk full/);
    assert.ok(calls < 100, 'writing stopped after the failure');
    await ring.abort(new Error('stop'));
    assert.equal(pool.freeBytes, pool.allocated * SLOT);
  });

  it('abort wakes a writer waiting for a buffer', async () => {
    const pool = new BufferPool(SLOT, 16 * SLOT);
    let release: () => void = () => undefined;
    const stuck = new Promise<void>((r) => (release = r));
    const ring = new RingWriter(() => stuck, { slots: 1, slotSize: SLOT, pool });
    await ring.write(chunk(0, SLOT)); // fills the only buffer, which goes to the stuck sink
    const waiting = ring.write(chunk(1, 10));
    const aborted = ring.abort(new Error('request closed'));
    await assert.rejects(waiting, /request closed/);
    release();
    await aborted;
    assert.equal(pool.freeBytes, SLOT);
  });
});
