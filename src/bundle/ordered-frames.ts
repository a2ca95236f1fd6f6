/**
 * zstd frames compressed in parallel in the thread pool and written to a layer blob in order.
 * Every frame of a zstd:chunked layer is independent (a file's content, or the tar headers
 * between two files), so a few contexts can work on consecutive frames at once while the main
 * thread reads and hashes the next files.
 *
 * Memory: a frame's compressed bytes are copied, as the compressor hands them out, into 64 KiB
 * pieces from a pool, which go back to the pool once the frame is written. Holding node:zlib's
 * output chunks instead kept each of its 128 KiB output buffers alive until the frame's turn came;
 * by then they were promoted out of V8's young generation, and dead ones piled up by tens of MiB
 * until a full collection (the larger bench tree: up to ~110 MiB of ArrayBuffers).
 *
 * Small frames do not go through the thread pool at all (SMALL_FRAME): most frames of a layer
 * are the tar headers between two files and small files, and each trip to the pool and back costs
 * the main thread more than compressing a few KiB does.
 */
import { once } from 'node:events';
import { constants as zc, createZstdCompress } from 'node:zlib';
import { TiuError } from '../errors.ts';
import { detach, type BufferPool } from '../util/buffer-pool.ts';
import type { BlobFile } from './blob-file.ts';

/**
 * Output buffer of a zstd context. Each one that fills is a round trip between the thread pool
 * and this thread (node:zlib's default is 16 KiB: ~13,000 of them for the bench's base tree);
 * the output bytes do not depend on it.
 */
const OUTPUT_CHUNK = 128 * 1024;

/**
 * Frames up to this size are compressed whole on the main thread (ZstdFramer.frameSync). The bench's
 * base tree has ~10,000 header frames and ~6,000 files of this size, 2 pool jobs each before; on 2
 * cores, one set of alternated builds: 6.6-7.8 s with 4 KiB, 6.7-7.0 with 16, 6.8-7.7 with 64.
 */
export const SMALL_FRAME = 16 * 1024;
/**
 * zstd's block size: input below it is only copied into the context when taken in (ZSTD_e_continue),
 * so frames up to it are taken in on the main thread (ZstdFramer.writeSync) and only their end,
 * the compression, runs in the pool: one trip there instead of two.
 */
const ZSTD_BLOCK = 128 * 1024;
const NO_INPUT = Buffer.alloc(0);
/** Output room for writeSync and its kin (allocated once, on first use; every sink copies). */
let syncScratch: Buffer | undefined;

/**
 * The native handle of a node:zlib stream, as its own synchronous functions (zstdCompressSync)
 * drive it: writeSync runs one compression call on this thread and leaves the output and input
 * still available in `_writeState` ([availOut, availIn]). Not public API: frameSync/writeSync
 * check it is there and the stream falls back to the thread pool if not; a unit test pins it on
 * the Node this project ships with.
 */
interface NativeZstd {
  _handle?: {
    writeSync?(
      flush: number,
      input: Buffer,
      inOff: number,
      inLen: number,
      out: Buffer,
      outOff: number,
      outLen: number,
    ): void;
  };
  _writeState?: Uint32Array;
}

/**
 * One zstd compression context, cut into independent frames with ZSTD_e_end flushes. (A fresh
 * context per file, as zstdCompressSync makes, leaves native memory for the garbage collector
 * to find: ~100 MB more on a 50k-file layer.) Output goes to whatever `sink` is at the time.
 */
export class ZstdFramer {
  readonly #z: ReturnType<typeof createZstdCompress>;
  #error: Error | undefined;
  #open = false;
  sink: (b: Buffer) => void;
  /**
   * `sinkCopies`: every sink copies what it is given and keeps no view of it. node:zlib gives its
   * output as views of one OUTPUT_CHUNK buffer and allocates a new one each time one fills; with
   * a copying sink the full one is garbage at once and is freed then (detached). Left to the
   * collector, these buffers were most of a build's external memory (the bench's base tree: 1,600
   * of them, 200 MiB), and V8 counts external memory allocated since its last full collection
   * against the old generation's limit: they started one every ~9 MiB (54 in a build).
   */
  constructor(
    params: Record<number, number>,
    sink: (b: Buffer) => void = () => undefined,
    opts: { sinkCopies?: boolean } = {},
  ) {
    this.sink = sink;
    this.#z = createZstdCompress({ params, chunkSize: OUTPUT_CHUNK });
    const sinkCopies = opts.sinkCopies ?? false;
    this.#z.on('data', (b: Buffer) => {
      this.sink(b);
      // A view that ends where its buffer ends: zlib has filled that buffer and replaced it.
      if (sinkCopies && b.byteOffset + b.length === b.buffer.byteLength) detach(b.buffer);
    });
    this.#z.on('error', (e) => (this.#error = e));
    const native = this.#z as unknown as NativeZstd;
    this.#canRunSync = typeof native._handle?.writeSync === 'function' && native._writeState instanceof Uint32Array;
  }
  readonly #canRunSync: boolean;
  #check(): void {
    if (this.#error) throw this.#error;
  }
  /** Whether frameSync and writeSync can run (node:zlib's native handle is as expected). */
  get canRunSync(): boolean {
    return this.#canRunSync;
  }
  /** One zstd call on this thread; returns [output bytes written, input bytes left]. */
  #callSync(flush: number, input: Buffer, out: Buffer, outOff: number): [number, number] {
    const z = this.#z as unknown as Required<NativeZstd>;
    z._handle.writeSync!(flush, input, 0, input.length, out, outOff, out.length - outOff);
    // A failed call destroys the stream with the error (node:zlib's onerror), before its event.
    if (this.#z.destroyed) throw this.#z.errored ?? new TiuError('INTERNAL', 'zstd compressor destroyed');
    this.#check();
    return [out.length - outOff - z._writeState[0]!, z._writeState[1]!];
  }
  /**
   * Compress `data` as one whole frame on this thread into `out`, which must hold zstdBound(data)
   * bytes; returns the frame's length. The same two zstd calls as write() + endFrame() (continue,
   * then end; one `end` call on fresh input would put the content size in the frame header and
   * change the bytes), without the two trips through the thread pool.
   */
  frameSync(data: Buffer, out: Buffer): number {
    this.#check();
    // As write() + endFrame(): no input, no frame (zstd would end an empty one).
    if (data.length === 0) return 0;
    const [written, left] = this.#callSync(zc.ZSTD_e_continue, data, out, 0);
    if (left !== 0)
      throw new TiuError('INTERNAL', `zstd took ${data.length - left} of ${data.length} bytes into a frame`);
    const [ended] = this.#callSync(zc.ZSTD_e_end, NO_INPUT, out, written);
    const length = written + ended;
    // A full buffer may mean the frame did not end (zstdBound is zstd's own bound: it should not).
    if (length === out.length) throw new TiuError('INTERNAL', `zstd frame of ${data.length} bytes exceeds its bound`);
    return length;
  }
  /**
   * Take `data` into the current frame on this thread, whatever its size: zstd copies it in and
   * compresses each block as one fills. Output goes to the sink, as views of a scratch buffer
   * (the sink must copy). The same calls the stream makes in the pool, so the same bytes.
   */
  writeSync(data: Buffer): void {
    if (data.length === 0) return;
    this.#open = true;
    this.#streamSync(zc.ZSTD_e_continue, data);
  }
  /**
   * As close(), on this thread: the frame ends, then the stream, and node:zlib ends a stream with
   * one more `end` call, which zstd makes an empty frame of (13 bytes, to the sink); the context is
   * freed.
   */
  closeSync(): void {
    if (this.#open) this.#streamSync(zc.ZSTD_e_end, NO_INPUT);
    this.#open = false;
    this.#streamSync(zc.ZSTD_e_end, NO_INPUT);
    this.#z.destroy();
  }
  /**
   * zstd calls until all of `input` is in and, as node:zlib decides, the output is out: a call
   * that fills the output buffer may have more to give.
   */
  #streamSync(flush: number, input: Buffer): void {
    this.#check();
    if (!this.#canRunSync) throw new TiuError('INTERNAL', 'zstd cannot run on this thread with this Node');
    const out = (syncScratch ??= Buffer.allocUnsafeSlow(zstdBound(ZSTD_BLOCK)));
    let rest = input;
    for (;;) {
      const [written, left] = this.#callSync(flush, rest, out, 0);
      if (written > 0) this.sink(out.subarray(0, written));
      rest = rest.subarray(rest.length - left);
      if (left === 0 && written < out.length) return;
    }
  }
  /** Resolves once the compressor has taken all of `b` in: the caller may then reuse it. */
  async write(b: Buffer): Promise<void> {
    this.#check();
    if (b.length === 0) return;
    this.#open = true;
    await new Promise<void>((res, rej) => this.#z.write(b, (err) => (err ? rej(err) : res())));
    this.#check();
  }
  /** End the current frame: everything written so far has reached the sink when this resolves. */
  async endFrame(): Promise<void> {
    if (!this.#open) return;
    await new Promise<void>((res) => this.#z.flush(zc.ZSTD_e_end, () => res()));
    this.#open = false;
    this.#check();
  }
  async close(): Promise<void> {
    await this.endFrame();
    this.#z.end();
    await once(this.#z, 'end').catch(() => undefined);
  }
  destroy(): void {
    this.#z.destroy();
  }
}

/** The most a zstd frame of `n` input bytes takes (zstd's ZSTD_COMPRESSBOUND, plus header and checksum). */
export function zstdBound(n: number): number {
  return n + (n >>> 8) + (n < 128 * 1024 ? (128 * 1024 - n) >>> 11 : 0) + 32;
}

/** Pieces of a frame's compressed bytes (zlib hands them out in OUTPUT_CHUNK views). */
const FRAME_PIECE = 64 * 1024;

/**
 * One frame's compressed bytes, gathered as they come into pooled pieces of FRAME_PIECE bytes: a
 * pending frame holds about its compressed size. (One buffer sized to zstd's bound for the
 * input, rounded up to the pool's power of two, held twice the input and more: a 4 MiB file's
 * frame took an 8 MiB buffer for its ~1.5 MiB of output.)
 */
class FrameBytes {
  readonly #pool: BufferPool;
  readonly #pieces: Buffer[] = [];
  /** Bytes used in the last piece. */
  #last = 0;
  constructor(pool: BufferPool) {
    this.#pool = pool;
  }
  append(b: Buffer): void {
    for (let off = 0; off < b.length;) {
      let piece = this.#pieces.at(-1);
      if (!piece || this.#last === piece.length) {
        piece = this.#pool.take(FRAME_PIECE);
        this.#pieces.push(piece);
        this.#last = 0;
      }
      const n = b.copy(piece, this.#last, off, off + Math.min(b.length - off, piece.length - this.#last));
      this.#last += n;
      off += n;
    }
  }
  /** Compress `data` whole into one buffer of zstd's bound on this thread (ZstdFramer.frameSync). */
  fillSync(f: ZstdFramer, data: Buffer): void {
    const buf = this.#pool.take(zstdBound(data.length));
    this.#pieces.push(buf);
    this.#last = f.frameSync(data, buf);
  }
  /** Write the frame's bytes to `out`, in order. */
  writeTo(out: BlobFile): void {
    const last = this.#pieces.length - 1;
    for (const [k, piece] of this.#pieces.entries()) out.write(k < last ? piece : piece.subarray(0, this.#last));
  }
  release(): void {
    for (const piece of this.#pieces.splice(0)) this.#pool.give(piece);
  }
}

/** Frames above this size are compressed on the large frames' context (OrderedFrames). */
export const LARGE_FRAME = 256 * 1024;

interface Pending {
  out: Promise<FrameBytes>;
  size: number;
  written?: (start: number, end: number) => void;
}

/**
 * Frames compressed on a few contexts, written in order. At most `window` frames and `budget`
 * bytes of input are pending (one frame at least): they bound the memory, whatever the sizes of
 * the files.
 */
export class OrderedFrames {
  readonly #contexts: ZstdFramer[];
  /** Per context, the end of the work queued on it. */
  readonly #tails: Promise<unknown>[];
  #next = 0;
  readonly #pending: Pending[] = [];
  #pendingBytes = 0;
  /** The most input bytes that were pending at once (for tests of the bound). */
  maxPendingBytes = 0;
  readonly #out: BlobFile;
  readonly #pool: BufferPool;
  readonly window: number;
  readonly #budget: number;
  constructor(params: Record<number, number>, out: BlobFile, contexts: number, budget: number, pool: BufferPool) {
    // The small frames' contexts, then the one for large frames.
    // Every sink here copies: into a frame's pooled buffer, or into the blob file.
    this.#contexts = Array.from(
      { length: contexts + 1 },
      () => new ZstdFramer(params, undefined, { sinkCopies: true }),
    );
    this.#tails = this.#contexts.map(() => Promise.resolve());
    this.#out = out;
    this.#pool = pool;
    this.window = contexts * 2;
    this.#budget = budget;
  }
  /**
   * Run `job` on the next context in turn. Frames go round the contexts in a fixed order, not
   * to whichever is free: zstd's output for a frame can depend on what its context compressed
   * before, and the layer must come out the same on every build.
   */
  #onNextContext<T>(job: (f: ZstdFramer) => Promise<T>): Promise<T> {
    return this.#onContext(this.#next++ % (this.#contexts.length - 1), job);
  }
  /**
   * Large frames (and streamed files) all go to the last context: a context keeps the pages its
   * largest frame touched (its input buffer grows up to zstd's window, 2 MiB at level 3), so
   * spreading them over every context cost ~3.5 MiB per context instead of ~1.
   */
  #onLargeContext<T>(job: (f: ZstdFramer) => Promise<T>): Promise<T> {
    return this.#onContext(this.#contexts.length - 1, job);
  }
  #onContext<T>(k: number, job: (f: ZstdFramer) => Promise<T>): Promise<T> {
    const run = this.#tails[k]!.then(() => job(this.#contexts[k]!));
    this.#tails[k] = run.catch(() => undefined);
    return run;
  }
  /**
   * Queue `data` as one frame (not reused by the caller until `written` has run); `written`
   * gets the frame's offsets in the blob. Waits while the window is full.
   */
  async add(data: Buffer, written?: (start: number, end: number) => void): Promise<void> {
    const compress = async (f: ZstdFramer) => {
      const frame = new FrameBytes(this.#pool);
      try {
        if (f.canRunSync && data.length <= SMALL_FRAME) {
          frame.fillSync(f, data);
          return frame;
        }
        f.sink = (b) => frame.append(b);
        if (f.canRunSync && data.length < ZSTD_BLOCK) f.writeSync(data);
        else await f.write(data);
        await f.endFrame();
      } catch (err) {
        frame.release();
        throw err;
      }
      return frame;
    };
    const out = data.length > LARGE_FRAME ? this.#onLargeContext(compress) : this.#onNextContext(compress);
    out.catch(() => undefined); // thrown where it is awaited, in order
    this.#pending.push({ out, size: data.length, ...(written ? { written } : {}) });
    this.#pendingBytes += data.length;
    this.maxPendingBytes = Math.max(this.maxPendingBytes, this.#pendingBytes);
    await this.drain(this.window - 1);
  }
  /** Wait until `bytes` more input fit the budget (or nothing is pending): call before reading them. */
  async makeRoom(bytes: number): Promise<void> {
    while (this.#pending.length > 0 && this.#pendingBytes + bytes > this.#budget) await this.#writeFirst();
  }
  /** Write finished frames, in order, until at most `keep` are pending. */
  async drain(keep = 0): Promise<void> {
    while (this.#pending.length > keep) await this.#writeFirst();
  }
  async #writeFirst(): Promise<void> {
    const first = this.#pending[0]!;
    const frame = await first.out;
    this.#pending.shift();
    this.#pendingBytes -= first.size;
    const start = this.#out.size;
    try {
      frame.writeTo(this.#out);
    } finally {
      frame.release();
    }
    first.written?.(start, this.#out.size);
  }
  /**
   * One large frame streamed straight into the blob, after everything queued before it; `written`
   * as for add(). A piece must stay unchanged until the one after it has been taken.
   */
  async stream(
    pieces: Iterable<Buffer> | AsyncIterable<Buffer>,
    written: (start: number, end: number) => void,
  ): Promise<void> {
    await this.drain();
    await this.#onLargeContext(async (f) => {
      const start = this.#out.size;
      f.sink = (b) => this.#out.write(b);
      // One piece in the compressor while the next is read and hashed (two read buffers).
      let taking: Promise<void> | undefined;
      for await (const p of pieces) {
        const next = f.write(p);
        next.catch(() => undefined); // thrown where it is awaited
        await taking;
        taking = next;
      }
      await taking;
      await f.endFrame();
      written(start, this.#out.size);
    });
  }
  async close(): Promise<void> {
    await this.drain();
    // Ending a zstd stream emits one more (empty) frame: not part of the layer.
    for (const f of this.#contexts) {
      f.sink = () => undefined;
      await f.close();
    }
  }
  destroy(): void {
    for (const f of this.#contexts) f.destroy();
    // Frames still pending give their buffers back when their compression settles.
    for (const p of this.#pending.splice(0))
      void p.out.then(
        (f) => f.release(),
        () => undefined,
      );
    this.#pendingBytes = 0;
  }
}
