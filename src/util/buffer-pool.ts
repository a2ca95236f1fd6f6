/**
 * Reusable Buffers in power-of-two size classes, for a hot path that needs many short-lived
 * buffers of varying size (a build reads every small file whole into one). A Buffer's memory is
 * outside the V8 heap and only returned when a garbage collection finds it; reusing them keeps
 * the resident set flat and spares the collector. Buffers given back are kept up to
 * `maxFreeBytes` in all (the rest are left to the collector), so an idle pool stays small.
 */
export class BufferPool {
  readonly #free = new Map<number, Buffer[]>();
  /** The memory of the buffers this pool allocated: release() frees only those. */
  readonly #made = new WeakSet<ArrayBufferLike>();
  #freeBytes = 0;
  /** Buffers this pool has allocated (not handed out again from its free lists). */
  allocated = 0;
  readonly #minSize: number;
  readonly #maxFreeBytes: number;
  readonly #detachExcess: boolean;
  /**
   * `detachExcess`: a buffer of this pool given back beyond `maxFreeBytes` is detached at once
   * (see release()) instead of being left to the collector. Only for callers that hold no other
   * view of what they give back.
   */
  constructor(minSize: number, maxFreeBytes: number, opts: { detachExcess?: boolean } = {}) {
    this.#minSize = minSize;
    this.#maxFreeBytes = maxFreeBytes;
    this.#detachExcess = opts.detachExcess ?? false;
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
    const made = Buffer.allocUnsafeSlow(cls);
    this.#made.add(made.buffer);
    return made;
  }

  /**
   * A buffer of at least `size` bytes: the smallest free one that is large enough, of any
   * class, else a new one of `size`'s class. For callers that use only `subarray(0, size)` of it
   * and whose sizes vary (a download's spans): a free 4 MiB buffer serves a 1 MiB request
   * instead of a second buffer being allocated beside it, so the pool holds about what the
   * requests in flight at once need, not that for each size class.
   */
  takeFitting(size: number): Buffer {
    const want = this.classOf(size);
    let best: number | undefined;
    for (const [cls, list] of this.#free)
      if (cls >= want && list.length && (best === undefined || cls < best)) best = cls;
    if (best === undefined) return this.take(size);
    const buf = this.#free.get(best)!.pop()!;
    this.#freeBytes -= buf.length;
    return buf;
  }

  /**
   * `buf` (from take(), or none yet) if it holds `size` bytes, else a larger one from take() with
   * its first `used` bytes, `buf` given back: a buffer that grows as it is filled.
   */
  grow(buf: Buffer | undefined, used: number, size: number): Buffer {
    if (buf && size <= buf.length) return buf;
    const bigger = this.take(size);
    if (buf) {
      buf.copy(bigger, 0, 0, used);
      this.give(buf);
    }
    return bigger;
  }

  /** Give back a buffer from take(); the caller must not use it afterwards. */
  give(buf: Buffer): void {
    // Only a buffer that is its whole ArrayBuffer (as take() makes them) is kept: one that shares
    // it (a slice of Node's pool) must never be handed out twice, nor detached by release().
    const own = buf.length === this.classOf(buf.length) && buf.byteOffset === 0 && buf.buffer.byteLength === buf.length;
    if (!own) return;
    if (this.#freeBytes + buf.length > this.#maxFreeBytes) {
      if (this.#detachExcess && this.#made.has(buf.buffer)) detach(buf.buffer);
      return;
    }
    let list = this.#free.get(buf.length);
    if (!list) this.#free.set(buf.length, (list = []));
    list.push(buf);
    this.#freeBytes += buf.length;
  }

  /**
   * Free the buffers held for reuse now (the phase that used them is over). Their memory goes
   * back to the system at once (their ArrayBuffers are detached: ArrayBuffer.prototype.transfer
   * to length 0 frees the backing store), not at a collection that a phase allocating little may
   * not run for a while: a build's level-19 TOC compression, the peak of its memory, would
   * otherwise have them beside it. Only buffers this pool allocated and that were given back are
   * touched (the caller holds no view of those: give()'s rule); buffers handed out stay valid.
   */
  release(): void {
    for (const list of this.#free.values()) for (const buf of list) if (this.#made.has(buf.buffer)) detach(buf.buffer);
    this.#free.clear();
    this.#freeBytes = 0;
  }

  /** Bytes held for reuse. */
  get freeBytes(): number {
    return this.#freeBytes;
  }
}

/**
 * Free the memory of a Buffer from Buffer.allocUnsafeSlow (or of a view of it from its start)
 * now rather than at a later garbage collection: its ArrayBuffer is detached, so every view of
 * it reads as empty afterwards; the caller must be done with all of them. Anything that may be
 * a piece of Node's shared slab (Buffer.poolSize bytes or less, which other Buffers use) is left
 * alone.
 */
export function freeNow(buf: Buffer): void {
  if (buf.byteOffset === 0 && buf.buffer.byteLength > Buffer.poolSize) detach(buf.buffer);
}

/** Free `ab`'s memory now (it reads as empty afterwards), unless it is shared or already detached. */
export function detach(ab: ArrayBufferLike): void {
  if (ab instanceof ArrayBuffer && !ab.detached) ab.transfer(0);
}
