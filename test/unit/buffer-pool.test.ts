import assert from 'node:assert/strict';
import { BufferPool } from '../../src/util/buffer-pool.ts';

describe('BufferPool', function () {
  it('hands out power-of-two buffers of at least the minimum and reuses what is given back', function () {
    const pool = new BufferPool(64, 1024);
    const a = pool.take(10);
    assert.equal(a.length, 64);
    assert.equal(pool.take(65).length, 128);
    assert.equal(pool.take(128).length, 128);
    pool.give(a);
    assert.equal(pool.freeBytes, 64);
    assert.equal(pool.take(64), a, 'the same buffer again');
    assert.equal(pool.freeBytes, 0);
  });

  it('keeps at most maxFreeBytes and ignores buffers that are not its own size classes', function () {
    const pool = new BufferPool(64, 256);
    const bufs = [pool.take(128), pool.take(128), pool.take(128)];
    for (const b of bufs) pool.give(b);
    assert.equal(pool.freeBytes, 256, 'the third is left to the garbage collector');
    pool.give(Buffer.alloc(100));
    assert.equal(pool.freeBytes, 256);
    assert.notEqual(pool.take(100), bufs[2]);
  });
});
