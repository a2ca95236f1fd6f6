/**
 * RingWriter: copies a stream's chunks into a few buffers it owns and hands each filled one to
 * an async sink (a file write, a socket write), taking it back once the sink is done with it.
 *
 * Why copy: a chunk that waits in a batch or a socket queue outlives V8's young generation, and
 * a promoted Buffer is only freed by a full collection, which V8 starts only once external
 * memory has grown by tens of MiB. Copied into an owned buffer as it arrives, every incoming
 * chunk (a 64 KiB socket read, a file read) dies young, and the bytes in flight are at most
 * `slots × slotSize` whatever the blob's size. Its buffers come from a shared BufferPool, so
 * consecutive blobs reuse the same memory.
 */
import { BufferPool } from './buffer-pool.ts';

/** Bytes per owned buffer: large enough for efficient file and socket writes. */
export const RING_SLOT_BYTES = 256 * 1024;
/** Owned buffers per writer: one being filled, the others at the sink. */
export const RING_SLOTS = 3;

/** Buffers of finished writers, kept for the next blob (three concurrent blobs' worth). */
const sharedPool = new BufferPool(RING_SLOT_BYTES, 3 * RING_SLOTS * RING_SLOT_BYTES);

/**
 * Free the buffers finished writers keep for the next blob, when a run of blob copies is over
 * (copy() does at its end): an update's whole-layer download is followed by the writing of the
 * layers, which would otherwise carry those ~2.25 MiB through its peak. Buffers of writers still
 * running are not touched (BufferPool.release); later writers allocate anew.
 */
export function releaseRingBuffers(): void {
  sharedPool.release();
}

/** Bytes kept for the next blob by finished writers (tests). */
export function ringBuffersKept(): number {
  return sharedPool.freeBytes;
}

export interface RingWriterOptions {
  /** Owned buffers (default RING_SLOTS). */
  slots?: number;
  /** Bytes per buffer, a power of two (default RING_SLOT_BYTES). */
  slotSize?: number;
  pool?: BufferPool;
}

export class RingWriter {
  readonly #sink: (bytes: Buffer) => Promise<void>;
  readonly #slots: number;
  readonly #slotSize: number;
  readonly #pool: BufferPool;
  readonly #free: Buffer[] = [];
  readonly #waiters: (() => void)[] = [];
  readonly #atSink = new Set<Promise<void>>();
  #current: Buffer | undefined;
  #fill = 0;
  #taken = 0;
  #failure: { error: unknown } | undefined;
  #released = false;
  /** A fill() is reading into the current buffer: it must not go back to the pool under it. */
  #reading = false;

  /**
   * `sink` is called with each filled buffer (the last one possibly short), in order; the buffer
   * is reused once its promise settles, so the sink must be done with it by then.
   */
  constructor(sink: (bytes: Buffer) => Promise<void>, opts: RingWriterOptions = {}) {
    this.#sink = sink;
    this.#slots = Math.max(1, opts.slots ?? RING_SLOTS);
    this.#pool = opts.pool ?? sharedPool;
    this.#slotSize = this.#pool.classOf(opts.slotSize ?? RING_SLOT_BYTES);
  }

  /** Buffers this writer has taken from its pool (at most `slots`). */
  get buffersTaken(): number {
    return this.#taken;
  }

  /** Copy `chunk` in; resolves once it is copied (waiting for a free buffer while all are at the sink). */
  async write(chunk: Uint8Array): Promise<void> {
    let off = 0;
    while (off < chunk.length) {
      this.#throwIfFailed();
      this.#current ??= await this.#take();
      const n = Math.min(chunk.length - off, this.#slotSize - this.#fill);
      this.#current.set(chunk.subarray(off, off + n), this.#fill);
      this.#fill += n;
      off += n;
      if (this.#fill === this.#slotSize) this.#flush();
    }
  }

  /**
   * Read straight into the buffer being filled (a file: no copy, no allocation per chunk):
   * `read` gets its free part and returns how many bytes it put there, 0 at the end.
   */
  async fill(read: (into: Buffer) => Promise<number>): Promise<number> {
    this.#throwIfFailed();
    this.#current ??= await this.#take();
    const buf = this.#current;
    this.#reading = true;
    let n: number;
    try {
      n = await read(buf.subarray(this.#fill));
    } finally {
      this.#reading = false;
    }
    this.#throwIfFailed();
    this.#fill += n;
    if (this.#fill === this.#slotSize) this.#flush();
    return n;
  }

  /** Hand over what is left and wait for the sink to finish everything; throws its first failure. */
  async end(): Promise<void> {
    if (!this.#failure && this.#fill > 0) this.#flush();
    await Promise.allSettled([...this.#atSink]);
    this.#release();
    this.#throwIfFailed();
  }

  /** Stop early (the transfer failed elsewhere): buffers go back to the pool once the sink lets go of them. */
  async abort(error: unknown): Promise<void> {
    this.#failure ??= { error };
    this.#wake();
    await Promise.allSettled([...this.#atSink]);
    this.#release();
  }

  #throwIfFailed(): void {
    if (this.#failure) throw this.#failure.error;
  }

  #flush(): void {
    const buf = this.#current!;
    const len = this.#fill;
    this.#current = undefined;
    this.#fill = 0;
    const done = this.#sink(buf.subarray(0, len)).then(
      () => this.#giveBack(buf),
      (e: unknown) => {
        this.#failure ??= { error: e };
        this.#giveBack(buf);
      },
    );
    this.#atSink.add(done);
    void done.finally(() => this.#atSink.delete(done));
  }

  async #take(): Promise<Buffer> {
    for (;;) {
      this.#throwIfFailed();
      const buf = this.#free.pop();
      if (buf) return buf;
      if (this.#taken < this.#slots) {
        this.#taken++;
        return this.#pool.take(this.#slotSize);
      }
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
  }

  #giveBack(buf: Buffer): void {
    if (this.#released) this.#pool.give(buf);
    else this.#free.push(buf);
    this.#wake();
  }

  #wake(): void {
    for (const w of this.#waiters.splice(0)) w();
  }

  #release(): void {
    this.#released = true;
    for (const b of this.#free.splice(0)) this.#pool.give(b);
    if (this.#current && !this.#reading) this.#pool.give(this.#current);
    this.#current = undefined;
  }
}
