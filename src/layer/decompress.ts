/**
 * Decompress a stream by its magic bytes: gzip and zstd in-process (node:zlib; zstd through
 * zstd-frames.ts, since a tar.zst may be many frames), xz and bzip2 through the `xz` and `bzip2` programs (kiwi writes .tar.xz and .tbz archives).
 */
import { PassThrough, Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { spawnFilter } from '../host/exec.ts';
import { ByteReader } from './tar.ts';
import { zstdDecompressStream } from './zstd-frames.ts';

export type Compression = 'none' | 'gzip' | 'zstd' | 'xz' | 'bzip2';

export function detectCompression(head: Uint8Array): Compression {
  const b = Buffer.from(head);
  if (b.length >= 2 && b[0] === 0x1f && b[1] === 0x8b) return 'gzip';
  if (b.length >= 4 && b.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
  if (b.length >= 6 && b.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return 'xz';
  if (b.length >= 3 && b.subarray(0, 3).toString('latin1') === 'BZh') return 'bzip2';
  return 'none';
}

/**
 * The decompressed bytes of `input`. `done` settles when the decompressor has finished
 * (rejecting with the program's stderr tail on failure); consumers should await it after
 * reading the stream to the end.
 */
export async function decompressStream(
  input: Readable,
  opts: { signal?: AbortSignal } = {},
): Promise<{ stream: Readable; compression: Compression; done: Promise<void> }> {
  // Peek at the first bytes without losing them: the magic, then everything after it.
  const reader = new ByteReader(input as AsyncIterable<Buffer>);
  const head = await reader.read(6);
  const compression = detectCompression(head);
  async function* all(): AsyncGenerator<Buffer> {
    let finished = false;
    try {
      if (head.length) yield head;
      yield* reader.pieces(Number.POSITIVE_INFINITY);
      finished = true;
    } finally {
      // a reader that stops early releases the input (a Readable's iterator destroys it)
      if (!finished) await reader.close();
    }
  }
  const src = Readable.from(all(), { objectMode: false });
  if (compression === 'none') return { stream: src, compression, done: Promise.resolve() };
  if (compression === 'zstd') return { stream: zstdDecompressStream(src), compression, done: Promise.resolve() };
  if (compression === 'gzip') {
    const out = new PassThrough();
    const done = pipeline(src, createGunzip(), out, { signal: opts.signal });
    done.catch(() => undefined);
    return { stream: out, compression, done };
  }
  const f = await spawnFilter(compression === 'xz' ? 'xz' : 'bzip2', ['-dc'], { signal: opts.signal });
  const feed = pipeline(src, f.stdin).catch((e: unknown) => {
    // The program may exit early (bad data); its own error says why.
    if ((e as NodeJS.ErrnoException).code !== 'EPIPE') throw e;
  });
  const done = Promise.all([feed, f.done]).then(() => undefined);
  done.catch(() => undefined);
  return { stream: f.stdout, compression, done };
}
