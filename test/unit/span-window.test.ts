/**
 * Issue 19: a coalesced request is read through a window as large as its largest frame (at
 * least WINDOW_MIN), not whole; the bytes each frame gets are exactly the blob's, whatever
 * pieces the source answers in.
 */
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import type { BlobReader } from '../../src/content/blob-reader.ts';
import { streamReader } from '../../src/content/blob-reader.ts';
import { SpanWindow, WINDOW_MIN, windowSize } from '../../src/deploy/delta/span-window.ts';
import { BufferPool } from '../../src/util/buffer-pool.ts';

/** Bytes [start, start + length) of a blob whose byte i is i * 7 mod 251, read in pieces of varying size. */
function reader(
  start: number,
  length: number,
  piece = (i: number) => 1000 + ((i * 7919) % 70_000),
): BlobReader & {
  closed: boolean;
} {
  let at = 0;
  let i = 0;
  return {
    closed: false,
    read(into: Buffer): Promise<number> {
      const n = Math.min(into.length, length - at, piece(i++));
      for (let k = 0; k < n; k++) into[k] = ((start + at + k) * 7) % 251;
      at += n;
      return Promise.resolve(n);
    },
    close() {
      this.closed = true;
      return Promise.resolve();
    },
  };
}

const expected = (s: number, e: number) => Buffer.from(Array.from({ length: e - s }, (_, k) => ((s + k) * 7) % 251));

describe('SpanWindow (a request read frame by frame)', function () {
  it('gives each frame its bytes through gaps, repeats and a frame larger than the window', async function () {
    const start = 10_000;
    const frames: [number, number][] = [
      [10_000, 10_500],
      [10_500, 200_000],
      [10_500, 200_000], // two entries of one frame
      [205_000, 206_000], // after a gap
      [300_000, 300_000 + 3 * WINDOW_MIN], // larger than the window: it grows
      [300_000 + 3 * WINDOW_MIN + 10, 300_000 + 3 * WINDOW_MIN + 20],
    ];
    const end = frames.at(-1)![1] + 5;
    const pool = new BufferPool(64 * 1024, 64 * 1024 * 1024);
    let counted = 0;
    const w = new SpanWindow(reader(start, end - start), { start, end }, WINDOW_MIN, pool, (n) => (counted += n));
    for (const [s, e] of frames) assert.deepEqual(await w.bytes(s, e), expected(s, e), `bytes ${s}-${e}`);
    assert.equal(await w.finish(), end - start);
    assert.equal(counted, end - start);
    w.dispose();
    // One buffer of WINDOW_MIN, then one of the large frame's class: never the whole span.
    assert.ok(pool.freeBytes <= WINDOW_MIN + 4 * WINDOW_MIN, `${pool.freeBytes} bytes of windows`);
    assert.ok(end - start > 3 * WINDOW_MIN);
  });

  it('holds the window it was given for a span of small frames, however long the span', async function () {
    const start = 0;
    const end = 4 * 1024 * 1024;
    const pool = new BufferPool(64 * 1024, 64 * 1024 * 1024);
    const size = windowSize(start, end, 5000);
    assert.equal(size, WINDOW_MIN);
    const w = new SpanWindow(reader(start, end), { start, end }, size, pool, () => undefined);
    for (let s = 0; s + 5000 <= end; s += 5003) assert.deepEqual(await w.bytes(s, s + 5000), expected(s, s + 5000));
    assert.equal(await w.finish(), end);
    w.dispose();
    assert.equal(pool.allocated, 1, 'one window, reused for the whole span');
    assert.equal(pool.freeBytes, WINDOW_MIN);
  });

  it('tells a short answer and an overlong one', async function () {
    const pool = new BufferPool(64 * 1024, 1024 * 1024);
    const short = new SpanWindow(reader(0, 900), { start: 0, end: 1000 }, 1000, pool, () => undefined);
    assert.equal(await short.bytes(800, 1000), undefined);
    assert.equal(short.got, 900);
    short.dispose();
    const long = new SpanWindow(reader(0, 1200), { start: 0, end: 1000 }, 1000, pool, () => undefined);
    assert.deepEqual(await long.bytes(0, 10), expected(0, 10));
    assert.equal(await long.finish(), 1001, 'a byte beyond the range is reported');
    long.dispose();
    const small = new BufferPool(64, 1024 * 1024);
    const behind = new SpanWindow(reader(0, 5000), { start: 0, end: 5000 }, 1000, small, () => undefined);
    await behind.bytes(3000, 3100);
    await assert.rejects(behind.bytes(100, 200), RangeError, 'bytes dropped from the window');
    behind.dispose();
  });
});

describe('streamReader (a stream as a BlobReader)', function () {
  it('copies the chunks into the reader buffers, across chunk boundaries, then ends', async function () {
    const r = streamReader(Readable.from([Buffer.from('hello '), Buffer.from('wide '), Buffer.from('world')]));
    const into = Buffer.alloc(4);
    let out = '';
    for (let n = await r.read(into); n > 0; n = await r.read(into)) out += into.toString('latin1', 0, n);
    assert.equal(out, 'hello wide world');
    await r.close();
  });
});

describe('BufferPool.takeFitting and release', function () {
  it('serves a small request from a larger free buffer, and release frees what is free', function () {
    const pool = new BufferPool(64, 1 << 20);
    const big = pool.take(4096);
    pool.give(big);
    const small = pool.takeFitting(100);
    assert.equal(small, big, 'the free 4 KiB buffer, not a new 128-byte one');
    assert.equal(pool.allocated, 1);
    const other = pool.takeFitting(100);
    assert.notEqual(other, big);
    assert.equal(other.length, 128);
    pool.give(other);
    pool.release();
    assert.equal(pool.freeBytes, 0);
    assert.equal(other.buffer.byteLength, 0, 'its memory was given back (detached)');
    assert.equal(big.length, 4096, 'a buffer handed out is left alone');
  });

  it('with detachExcess gives back at once what it does not keep', function () {
    const pool = new BufferPool(64, 256, { detachExcess: true });
    const [a, b] = [pool.take(256), pool.take(256)];
    pool.give(a);
    pool.give(b);
    assert.equal(pool.freeBytes, 256);
    assert.equal(a.buffer.byteLength, 256, 'kept for reuse');
    assert.equal(b.buffer.byteLength, 0, 'beyond maxFreeBytes: detached');
    const plain = new BufferPool(64, 0);
    const c = plain.take(64);
    plain.give(c);
    assert.equal(c.buffer.byteLength, 64, 'without the option, left to the collector');
  });

  it('never keeps a buffer that shares its memory (a slice of a larger allocation)', function () {
    const pool = new BufferPool(64, 1 << 20);
    const slab = Buffer.allocUnsafeSlow(256);
    pool.give(slab.subarray(0, 128));
    assert.equal(pool.freeBytes, 0);
    pool.release();
    assert.equal(slab.length, 256);
  });
});
