/**
 * Decompress a stream of *several* zstd frames. Node's zstd decompressor (sync and stream)
 * stops at the end of the first frame, but zstd:chunked layers are many frames (one per file,
 * plus skippable frames for the TOC and footer). This walks the frame structure (RFC 8878:
 * frame header, block headers, optional checksum), skips skippable frames, and feeds each
 * frame to its own decompressor, streaming: memory stays bounded by a block, not a frame.
 */
import { Readable } from 'node:stream';
import { createZstdDecompress, zstdDecompressSync } from 'node:zlib';
import { BufferPool } from '../util/buffer-pool.ts';
import { LayerFormatError } from './errors.ts';
import { ByteReader } from './tar.ts';

const ZSTD_MAGIC = 0xfd2fb528;

function truncated(): LayerFormatError {
  return new LayerFormatError('TAR_INVALID', 'zstd stream is truncated');
}

async function exact(r: ByteReader, n: number): Promise<Buffer> {
  const b = await r.read(n);
  if (b.length !== n) throw truncated();
  return b;
}

/** The bytes of one zstd frame (after its magic), block by block. */
async function* frameBytes(r: ByteReader, magic: Buffer): AsyncGenerator<Buffer> {
  yield magic;
  const fhdBuf = await exact(r, 1);
  yield fhdBuf;
  const fhd = fhdBuf[0]!;
  const fcsFlag = fhd >> 6;
  const single = (fhd >> 5) & 1;
  const checksum = (fhd >> 2) & 1;
  const didFlag = fhd & 3;
  const headerRest = (single ? 0 : 1) + [0, 1, 2, 4][didFlag]! + [single ? 1 : 0, 2, 4, 8][fcsFlag]!;
  if (headerRest) yield await exact(r, headerRest);
  for (;;) {
    const bh = await exact(r, 3);
    yield bh;
    const v = bh[0]! | (bh[1]! << 8) | (bh[2]! << 16);
    const last = v & 1;
    const type = (v >> 1) & 3;
    const size = v >>> 3;
    if (type === 3) throw new LayerFormatError('TAR_INVALID', 'zstd stream has a reserved block type');
    const payload = type === 1 ? 1 : size;
    let got = 0;
    for await (const p of r.pieces(payload)) {
      got += p.length;
      yield p;
    }
    if (got !== payload) throw truncated();
    if (last) break;
  }
  if (checksum) yield await exact(r, 4);
}

/**
 * A frame whose compressed bytes are at most this many is collected and decompressed in one
 * synchronous call (a stream per frame costs more than the decompression of a small file);
 * larger frames stream, so memory stays bounded.
 */
export const SYNC_FRAME_MAX = 1024 * 1024;
/** Output bound of the one-call path; a frame that expands beyond it is streamed instead. */
export const SYNC_OUTPUT_MAX = 16 * 1024 * 1024;

/**
 * Buffers frames are gathered in. Node's zstd API has no call that decompresses into a buffer
 * of the caller's (zstdDecompressSync returns a new Buffer; a stream allocates each `chunkSize`
 * output chunk), so the output of a frame is a new Buffer; its input need not be.
 */
export const frameBuffers = new BufferPool(64 * 1024, 2 * SYNC_FRAME_MAX);

/** `pieces` copied one after another into `into` (which holds at least `size` bytes). */
function gather(pieces: Buffer[], size: number, into: Buffer): Buffer {
  let at = 0;
  for (const p of pieces) at += p.copy(into, at);
  return into.subarray(0, size);
}

async function* streamFrame(pieces: AsyncIterable<Buffer> | Iterable<Buffer>): AsyncGenerator<Buffer> {
  const d = createZstdDecompress();
  const input = Readable.from(pieces);
  input.on('error', (e) => d.destroy(e));
  input.pipe(d);
  for await (const chunk of d as AsyncIterable<Buffer>) yield chunk;
}

/** The decompressed content of all frames of `source`, in order. */
export async function* zstdDecompressFrames(
  source: AsyncIterable<Buffer | Uint8Array | string>,
): AsyncGenerator<Buffer> {
  const r = new ByteReader(source);
  try {
    for (;;) {
      const magic = await r.read(4);
      if (magic.length === 0) return;
      if (magic.length < 4) throw truncated();
      const m = magic.readUInt32LE(0);
      if ((m & 0xfffffff0) === 0x184d2a50) {
        const size = (await exact(r, 4)).readUInt32LE(0);
        let got = 0;
        for await (const p of r.pieces(size)) got += p.length;
        if (got !== size) throw truncated();
        continue;
      }
      if (m !== ZSTD_MAGIC) throw new LayerFormatError('TAR_INVALID', `not a zstd frame at byte ${r.position - 4}`);
      // Collect a small frame whole; a large one goes to a streaming decompressor.
      const it = frameBytes(r, magic);
      const held: Buffer[] = [];
      let size = 0;
      let complete = false;
      for (;;) {
        const n = await it.next();
        if (n.done) {
          complete = true;
          break;
        }
        held.push(n.value);
        size += n.value.length;
        if (size > SYNC_FRAME_MAX) break;
      }
      if (complete) {
        // A frame in several pieces is gathered in a pooled buffer (the one-call decompressor
        // does not keep its input) instead of a new one per file.
        const gathered = held.length === 1 ? undefined : frameBuffers.take(size);
        const frame = gathered ? gather(held, size, gathered) : held[0]!;
        let out: Buffer | undefined;
        let failure: Error | undefined;
        try {
          out = zstdDecompressSync(frame, { maxOutputLength: SYNC_OUTPUT_MAX });
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'ERR_BUFFER_TOO_LARGE') failure = e as Error;
        }
        // Rare (a frame that expands past SYNC_OUTPUT_MAX): streamed from its own copy, taken
        // before the gathering buffer goes back to the pool.
        const toStream = out === undefined && failure === undefined ? Buffer.from(frame) : undefined;
        if (gathered) frameBuffers.give(gathered);
        if (failure !== undefined) throw failure;
        if (toStream) yield* streamFrame([toStream]);
        else if (out!.length) yield out!;
        continue;
      }
      const rest = async function* (): AsyncGenerator<Buffer> {
        yield* held;
        held.length = 0;
        yield* it;
      };
      yield* streamFrame(rest());
    }
  } finally {
    // a consumer that stops early (or an error) releases the source, e.g. a blob's file
    await r.close();
  }
}

/** Where the data frames of a complete buffer of frames lie ([start, end) each); skippable frames are left out. */
export function zstdFrameSpans(buf: Buffer): [number, number][] {
  const spans: [number, number][] = [];
  let p = 0;
  const need = (n: number): void => {
    if (p + n > buf.length) throw truncated();
  };
  while (p < buf.length) {
    need(4);
    const m = buf.readUInt32LE(p);
    if ((m & 0xfffffff0) === 0x184d2a50) {
      need(8);
      const size = buf.readUInt32LE(p + 4);
      need(8 + size);
      p += 8 + size;
      continue;
    }
    if (m !== ZSTD_MAGIC) throw new LayerFormatError('TAR_INVALID', `not a zstd frame at byte ${p}`);
    const start = p;
    need(5);
    const fhd = buf[p + 4]!;
    const single = (fhd >> 5) & 1;
    const headerRest = (single ? 0 : 1) + [0, 1, 2, 4][fhd & 3]! + [single ? 1 : 0, 2, 4, 8][fhd >> 6]!;
    p += 5 + headerRest;
    for (;;) {
      need(3);
      const v = buf[p]! | (buf[p + 1]! << 8) | (buf[p + 2]! << 16);
      const type = (v >> 1) & 3;
      if (type === 3) throw new LayerFormatError('TAR_INVALID', 'zstd stream has a reserved block type');
      const payload = type === 1 ? 1 : v >>> 3;
      need(3 + payload);
      p += 3 + payload;
      if (v & 1) break;
    }
    if ((fhd >> 2) & 1) {
      need(4);
      p += 4;
    }
    spans.push([start, p]);
  }
  return spans;
}

/** Largest output buffer of one step of zstdDecompressBufferSync. */
const SYNC_CHUNK = 256 * 1024;

/**
 * The content of a complete buffer of zstd frames, decompressed in one call per frame (output
 * buffers of at most `chunk` bytes, default 256 KiB, joined at the end); throws
 * ZSTD_OUTPUT_TOO_LARGE as soon as more than `maxSize` bytes come out. A caller whose
 * `maxSize` is small and already accounted for passes `maxSize + 1` as `chunk`: one output
 * buffer instead of pieces and their joined copy (half the garbage per file).
 */
export function zstdDecompressBufferSync(buf: Buffer, maxSize: number, chunk: number = SYNC_CHUNK): Buffer {
  const parts: Buffer[] = [];
  let got = 0;
  for (const [s, e] of zstdFrameSpans(buf)) {
    const left = maxSize - got;
    let out: Buffer;
    try {
      // Output buffers of at most SYNC_CHUNK each: memory grows with what actually comes out
      // (bounded by maxSize), never with what a table of contents declares.
      out = zstdDecompressSync(buf.subarray(s, e), {
        maxOutputLength: left + 1,
        chunkSize: Math.max(64, Math.min(left + 1, chunk)),
      });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE')
        throw new LayerFormatError('ZSTD_OUTPUT_TOO_LARGE', `zstd frames decompress to more than ${maxSize} bytes`);
      throw err;
    }
    got += out.length;
    if (got > maxSize)
      throw new LayerFormatError('ZSTD_OUTPUT_TOO_LARGE', `zstd frames decompress to more than ${maxSize} bytes`);
    if (out.length) parts.push(out);
  }
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts, got);
}

/** zstdDecompressFrames as a Readable. */
export function zstdDecompressStream(source: AsyncIterable<Buffer | Uint8Array | string>): Readable {
  return Readable.from(zstdDecompressFrames(source), { objectMode: false });
}
