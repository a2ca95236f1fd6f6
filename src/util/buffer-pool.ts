/**
 * Reusable Buffers in power-of-two size classes, for a hot path that needs many short-lived
 * buffers of varying size (a build reads every small file whole into one). A Buffer's memory is
 * outside the V8 heap and only returned when a garbage collection finds it; reusing them keeps
 * the resident set flat and spares the collector. Buffers given back are kept up to
 * `maxFreeBytes` in all (the rest are left to the collector), so an idle pool stays small.
 */
export class BufferPool {
  readonly #free = new Map<number, Buffer[]>();
  #freeBytes = 0;
  /** Buffers this pool has allocated (not handed out again from its free lists). */
  allocated = 0;
  readonly #minSize: number;
  readonly #maxFreeBytes: number;
  constructor(minSize: number, maxFreeBytes: number) {
    this.#minSize = minSize;
    this.#maxFreeBytes = maxFreeBytes;
  }

  /** The size class of `size`: the next power of two, at least minSize. */
  classOf(size: number): number {
    return Math.max(this.#minSize, 2 ** Math.ceil(Math.log2(Math.max(1, size))));
  }

  /** A buffer of at least `size` bytes (its size class); contents are whatever it held before. */
  take(size: number): Buffer {
    const cls = this.classOf(size);
    const buf = this.#free.get(cls)?.pop();
    if (buf) {
      this.#freeBytes -= buf.length;
      return buf;
    }
    this.allocated++;
    return Buffer.allocUnsafeSlow(cls);
  }

  /** Give back a buffer from take(); the caller must not use it afterwards. */
  give(buf: Buffer): void {
    if (buf.length !== this.classOf(buf.length) || this.#freeBytes + buf.length > this.#maxFreeBytes) return;
    let list = this.#free.get(buf.length);
    if (!list) this.#free.set(buf.length, (list = []));
    list.push(buf);
    this.#freeBytes += buf.length;
  }

  /** Bytes held for reuse. */
  get freeBytes(): number {
    return this.#freeBytes;
  }
}
