import assert from 'node:assert/strict';
import { BufferPool, freeNow } from '../../src/util/buffer-pool.ts';

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

  it('release() frees the buffers it keeps at once and leaves those handed out alone', function () {
    const pool = new BufferPool(64 * 1024, 1024 * 1024);
    const kept = [pool.take(100_000), pool.take(64 * 1024)];
    const inUse = pool.take(200_000).fill(7);
    for (const b of kept) pool.give(b);
    const foreign = Buffer.allocUnsafeSlow(128 * 1024);
    pool.give(foreign);
    const before = process.memoryUsage().arrayBuffers;
    pool.release();
    assert.equal(pool.freeBytes, 0);
    for (const b of kept) assert.equal(b.length, 0, 'detached: its memory is gone now, not at a collection');
    assert.ok(process.memoryUsage().arrayBuffers <= before - 192 * 1024, 'the process holds that much less');
    assert.equal(foreign.length, 128 * 1024, 'a buffer the pool did not allocate is only forgotten');
    assert.equal(inUse.length, 256 * 1024, 'a buffer in use keeps its memory');
    assert.equal(inUse[0], 7);
    assert.notEqual(pool.take(64 * 1024), kept[1], 'the next take allocates anew');
  });

  it('freeNow leaves a Buffer that shares its memory (a view inside, or the shared slab) alone', function () {
    const own = Buffer.allocUnsafeSlow(128 * 1024);
    const inside = own.subarray(4096);
    freeNow(inside);
    assert.equal(own.length, 128 * 1024, 'a view that does not start the allocation frees nothing');
    const small = Buffer.allocUnsafe(100);
    freeNow(small);
    assert.equal(small.length, 100, 'a slab buffer stays');
    freeNow(own.subarray(0, 10));
    assert.equal(own.length, 0, 'a view from its start frees the whole allocation');
    assert.equal(inside.length, 0);
  });

  it('grows a buffer as it is filled: the same one while it fits, else a larger one with what it held, the old one given back', function () {
    const pool = new BufferPool(1024, 1 << 20);
    const first = pool.grow(undefined, 0, 100);
    assert.equal(first.length, 1024);
    first.write('abc');
    assert.equal(pool.grow(first, 3, 1024), first, 'fits: the same buffer');
    const bigger = pool.grow(first, 3, 1500);
    assert.equal(bigger.length, 2048);
    assert.equal(bigger.toString('latin1', 0, 3), 'abc');
    assert.equal(pool.freeBytes, 1024, 'the smaller one is back in the pool');
    assert.equal(pool.take(10), first, 'and handed out again');
  });
});
