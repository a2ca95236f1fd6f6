/**
 * Frames compressed on the main thread (ZstdFramer.frameSync, writeSync, closeSync) come out exactly as
 * the thread pool makes them: a layer's bytes, and so its digest, do not depend on which path a
 * frame took. The reference is a context driven only through node:zlib's public stream API.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { constants as zc, zstdDecompressSync } from 'node:zlib';
import { BlobFile } from '../../src/bundle/blob-file.ts';
import { OrderedFrames, SMALL_FRAME, ZstdFramer, zstdBound } from '../../src/bundle/ordered-frames.ts';
import { BufferPool } from '../../src/util/buffer-pool.ts';

const PARAMS = { [zc.ZSTD_c_compressionLevel]: 3, [zc.ZSTD_c_checksumFlag]: 1 };

/** Bytes that compress, but not to nothing, different for each seed. */
function content(seed: number, size: number): Buffer {
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i++) b[i] = ((Math.imul(i >>> 3, 2654435761) ^ (seed * 7919)) >>> (i % 24)) & 0x7f;
  return b;
}

/** The frames of `inputs`, one after the other on one context, through the stream API only. */
async function throughPool(inputs: Buffer[]): Promise<Buffer[]> {
  const f = new ZstdFramer(PARAMS);
  const frames: Buffer[] = [];
  for (const data of inputs) {
    const parts: Buffer[] = [];
    f.sink = (b) => parts.push(Buffer.from(b));
    await f.write(data);
    await f.endFrame();
    frames.push(Buffer.concat(parts));
  }
  f.sink = () => undefined;
  await f.close();
  return frames;
}

const SIZES = [1, 37, 512, 4096, 9000, SMALL_FRAME, SMALL_FRAME + 1, 70_000, 128 * 1024 - 1];

describe('zstd frames made on the main thread', function () {
  it('can run here: the Node this project ships has the native handle frameSync drives', function () {
    // If a Node upgrade drops it, builds still work (through the pool) but slower: this says so.
    assert.equal(new ZstdFramer(PARAMS).canRunSync, true);
  });

  it('frameSync gives the bytes the thread pool gives, frame after frame on one context', async function () {
    const inputs = SIZES.filter((n) => n <= SMALL_FRAME).flatMap((n, i) => [content(i, n), content(i + 50, n)]);
    const expected = await throughPool(inputs);
    const f = new ZstdFramer(PARAMS);
    for (const [i, data] of inputs.entries()) {
      const out = Buffer.alloc(zstdBound(data.length));
      const length = f.frameSync(data, out);
      assert.deepEqual(out.subarray(0, length), expected[i], `frame ${i} (${data.length} bytes)`);
      assert.deepEqual(zstdDecompressSync(out.subarray(0, length)), data);
    }
    await f.close();
  });

  it('writeSync then endFrame gives the same bytes as write then endFrame, mixed with pool frames', async function () {
    const inputs = SIZES.map((n, i) => content(i + 100, n));
    const expected = await throughPool(inputs);
    const f = new ZstdFramer(PARAMS);
    for (const [i, data] of inputs.entries()) {
      const parts: Buffer[] = [];
      f.sink = (b) => parts.push(Buffer.from(b));
      // Every other frame through the pool: the context's history must not matter either way.
      if (i % 2 === 0) f.writeSync(data);
      else await f.write(data);
      await f.endFrame();
      assert.deepEqual(Buffer.concat(parts), expected[i], `frame ${i} (${data.length} bytes)`);
    }
    f.sink = () => undefined;
    await f.close();
  });

  it('a stream written and closed on this thread is the bytes of one written and closed through the pool', async function () {
    // The tar-split's use: pieces of any size into one frame (blocks compressed as they fill,
    // output beyond the scratch buffer of one call), then close(), which adds an empty frame.
    const pieces = [100, 70_000, 1, 65_536, 300_000, 5, 2_000_000, 128 * 1024].map((n, i) => content(i + 7, n));
    // Incompressible input, so that one call's output fills the scratch buffer.
    pieces.push(randomBytes(600_000));
    const viaPool: Buffer[] = [];
    const a = new ZstdFramer(PARAMS, (b) => viaPool.push(Buffer.from(b)));
    for (const p of pieces) await a.write(p);
    await a.close();
    const here: Buffer[] = [];
    let calls = 0;
    const b = new ZstdFramer(PARAMS, (x) => (calls++, here.push(Buffer.from(x))));
    for (const p of pieces) b.writeSync(p);
    b.closeSync();
    const bytes = Buffer.concat(here);
    assert.ok(bytes.equals(Buffer.concat(viaPool)), `the same ${bytes.length} bytes`);
    assert.ok(calls > 2, `output handed on as it came: ${calls} pieces`);
    assert.deepEqual(zstdDecompressSync(bytes), Buffer.concat(pieces));
    // The stream's end is an empty frame of its own (magic, header, an empty last block, checksum).
    assert.equal(bytes.subarray(-13).toString('hex'), '28b52ffd240001000099e9d851');
  });

  it('no input makes no frame, as write() and endFrame() make none', async function () {
    const [viaPool] = await throughPool([Buffer.alloc(0)]);
    assert.equal(viaPool!.length, 0);
    assert.equal(new ZstdFramer(PARAMS).frameSync(Buffer.alloc(0), Buffer.alloc(64)), 0);
  });

  it('an output buffer below the bound is an error, not a cut frame', function () {
    const data = content(3, 4000);
    assert.throws(() => new ZstdFramer(PARAMS).frameSync(data, Buffer.alloc(16)), {
      code: 'INTERNAL',
      message: /exceeds its bound/,
    });
  });

  describe('OrderedFrames', function () {
    let dir: string;
    beforeEach(async function () {
      dir = await mkdtemp(join(tmpdir(), 'tiu-zsync-'));
    });
    afterEach(async function () {
      await rm(dir, { recursive: true, force: true });
    });

    /** A layer-like blob of frames of mixed sizes, written through OrderedFrames. */
    let blobs = 0;
    async function blobOf(inputs: Buffer[]): Promise<{ blob: Buffer; spans: [number, number][] }> {
      const path = join(dir, `blob-${blobs++}`);
      const out = new BlobFile(path);
      const frames = new OrderedFrames(PARAMS, out, 3, 1024 * 1024, new BufferPool(16 * 1024, 4 * 1024 * 1024));
      const spans: [number, number][] = [];
      for (const [i, data] of inputs.entries()) {
        await frames.makeRoom(data.length);
        await frames.add(data, (start, end) => (spans[i] = [start, end]));
      }
      await frames.close();
      out.close();
      return { blob: await readFile(path), spans };
    }

    it('writes the same blob whether small frames are made here or in the pool', async function () {
      const inputs = Array.from({ length: 120 }, (_, i) => content(i, [200, 3000, 16_000, 40_000, 300_000][i % 5]!));
      const withSync = await blobOf(inputs);
      const proto = ZstdFramer.prototype;
      const had = Object.getOwnPropertyDescriptor(proto, 'canRunSync')!;
      Object.defineProperty(proto, 'canRunSync', { get: () => false, configurable: true });
      let poolOnly;
      try {
        poolOnly = await blobOf(inputs);
      } finally {
        Object.defineProperty(proto, 'canRunSync', had);
      }
      assert.equal(withSync.blob.length, poolOnly.blob.length);
      assert.ok(withSync.blob.equals(poolOnly.blob), 'the same bytes');
      assert.deepEqual(withSync.spans, poolOnly.spans);
      for (const [i, [start, end]] of withSync.spans.entries())
        assert.deepEqual(zstdDecompressSync(withSync.blob.subarray(start, end)), inputs[i]);
    });
  });
});
