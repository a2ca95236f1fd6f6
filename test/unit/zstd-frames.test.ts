import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { zstdCompressSync } from 'node:zlib';
import { frameBuffers, zstdDecompressFrames } from '../../src/layer/zstd-frames.ts';

/** `buf` in pieces of `size` bytes, as a stream hands them over. */
function pieces(buf: Buffer, size: number): Readable {
  const parts: Buffer[] = [];
  for (let i = 0; i < buf.length; i += size) parts.push(buf.subarray(i, i + size));
  return Readable.from(parts);
}

describe('zstd frames: many frames, each in several pieces', () => {
  it('decompresses every frame in order, gathering split frames in pooled buffers', async () => {
    // incompressible files of 20-40 KiB: every frame spans several 7 KiB pieces
    const files = Array.from({ length: 200 }, (_, i) => randomBytes(20_000 + (i % 5) * 5_000));
    const skippable = Buffer.alloc(8 + 16);
    skippable.writeUInt32LE(0x184d2a50, 0);
    skippable.writeUInt32LE(16, 4);
    const stream = Buffer.concat([...files.map((f) => zstdCompressSync(f)), skippable]);
    const before = frameBuffers.allocated;
    const out: Buffer[] = [];
    for await (const b of zstdDecompressFrames(pieces(stream, 7 * 1024))) out.push(Buffer.from(b));
    assert.ok(Buffer.concat(out).equals(Buffer.concat(files)));
    // 200 split frames, at most two size classes (32 and 64 KiB): not one new buffer per frame
    assert.ok(frameBuffers.allocated - before <= 2, `${frameBuffers.allocated - before} frame buffers allocated`);
  });

  it('a truncated frame fails as TAR_INVALID', async () => {
    const z = zstdCompressSync(randomBytes(50_000));
    await assert.rejects(
      (async () => {
        for await (const _ of zstdDecompressFrames(pieces(z.subarray(0, z.length - 10), 4096))) void _;
      })(),
      (e: Error & { code?: string }) => e.code === 'TAR_INVALID',
    );
  });
});
