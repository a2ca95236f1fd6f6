/**
 * Bytes gathered into one buffer of their own that doubles as they come. For what a writer keeps
 * a while (a layer's compressed tar-split until its end): a copy per piece would be a slice of
 * Node's shared 64 KiB allocation pool (Buffer.from of anything under 32 KiB), and each kept
 * slice keeps its whole slab (the larger bench tree: ~400 pieces of ~6 KB, up to ~25 MiB of
 * slabs until a full collection).
 */
import { freeNow } from './buffer-pool.ts';

export class GrowingBytes {
  #buf: Buffer;
  #length = 0;
  /** `initial`: the first buffer's size (not from Node's pool: at least Buffer.poolSize is best). */
  constructor(initial: number) {
    this.#buf = Buffer.allocUnsafeSlow(initial);
  }
  append(b: Uint8Array): void {
    const end = this.#length + b.length;
    if (end > this.#buf.length) {
      const bigger = Buffer.allocUnsafeSlow(Math.max(end, 2 * this.#buf.length));
      this.#buf.copy(bigger, 0, 0, this.#length);
      freeNow(this.#buf);
      this.#buf = bigger;
    }
    this.#buf.set(b, this.#length);
    this.#length = end;
  }
  get length(): number {
    return this.#length;
  }
  /** The bytes so far: a view, valid until the next append, clear or free. */
  get bytes(): Buffer {
    return this.#buf.subarray(0, this.#length);
  }
  /** Start again, keeping the buffer. */
  clear(): void {
    this.#length = 0;
  }
  /** Free the buffer now (the object is not used after). */
  free(): void {
    freeNow(this.#buf);
    this.#buf = Buffer.alloc(0);
    this.#length = 0;
  }
}
