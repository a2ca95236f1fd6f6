/**
 * A coalesced request's bytes read through a window instead of whole. Its files' frames lie in
 * offset order, so the window holds only the bytes from the frame being decoded on, and grows
 * only for a frame larger than itself: a 4 MiB request of small files holds ~256 KiB, not
 * 4 MiB. A first install is made of such requests (every file of the image, 4 MiB at a time),
 * and their spans, read whole, were most of its download's memory.
 */
import type { BlobReader } from '../../content/blob-reader.ts';
import type { BufferPool } from '../../util/buffer-pool.ts';

/** The smallest window: fewer, larger reads than frame by frame. */
export const WINDOW_MIN = 256 * 1024;

/** One byte to read into once the range is complete: the reader's end (or its complaint about more). */
const END_PROBE = Buffer.alloc(1);

/** The window a request of [start, end) whose largest frame is `largestFrame` bytes starts with. */
export function windowSize(start: number, end: number, largestFrame: number): number {
  return Math.min(end - start, Math.max(WINDOW_MIN, largestFrame));
}

export class SpanWindow {
  readonly #reader: BlobReader;
  readonly #pool: BufferPool;
  readonly #onBytes: (n: number) => void;
  readonly #start: number;
  readonly #end: number;
  #buf: Buffer;
  /** Offset in the blob of #buf[0]. */
  #at: number;
  /** Bytes of #buf read. */
  #filled = 0;
  /** Bytes read from the reader in all (more than end - start when the source sent too many). */
  got = 0;

  constructor(
    reader: BlobReader,
    range: { start: number; end: number },
    size: number,
    pool: BufferPool,
    onBytes: (n: number) => void,
  ) {
    this.#reader = reader;
    this.#pool = pool;
    this.#onBytes = onBytes;
    this.#start = this.#at = range.start;
    this.#end = range.end;
    this.#buf = pool.takeFitting(Math.max(1, size));
  }

  /**
   * Bytes [s, e) of the blob, within the range and with `s` not before the previous call's: a
   * view valid until the next call. Undefined when the source ended before `e` (a short answer).
   */
  async bytes(s: number, e: number): Promise<Buffer | undefined> {
    if (s < this.#at || e > this.#end || e < s) throw new RangeError(`bytes ${s}-${e} are not ahead in the window`);
    // #buf holds bytes [#at, #at + #filled) of the blob, the reader stands at #at + #filled.
    while (this.#at + this.#filled < e) {
      if (e - this.#at > this.#buf.length) {
        // What lies before `s` is not wanted again (the frames come in offset order); a gap not
        // read yet is read into the window and dropped on the next turn.
        const drop = Math.min(s - this.#at, this.#filled);
        this.#buf.copyWithin(0, drop, this.#filled);
        this.#at += drop;
        this.#filled -= drop;
        if (this.#at === s && e - s > this.#buf.length) {
          const bigger = this.#pool.takeFitting(e - s);
          this.#buf.copy(bigger, 0, 0, this.#filled);
          this.#pool.give(this.#buf);
          this.#buf = bigger;
        }
      }
      // Read ahead as far as the window and the range go (fewer reads), never past the range's end.
      const room = Math.min(this.#buf.length, this.#end - this.#at);
      const n = await this.#reader.read(this.#buf.subarray(this.#filled, room));
      if (n === 0) return undefined;
      this.#onBytes(n);
      this.got += n;
      this.#filled += n;
    }
    return this.#buf.subarray(s - this.#at, e - this.#at);
  }

  /**
   * Bytes [s, e) in pieces of at most the window's size, for a frame decoded as it streams
   * (never held whole, however large). Each piece is a view valid until the next is asked for;
   * `short` is set when the source ended before `e`.
   */
  async *pieces(s: number, e: number): AsyncGenerator<Buffer> {
    for (let at = s; at < e;) {
      const to = Math.min(e, at + this.#buf.length);
      const b = await this.bytes(at, to);
      if (!b) {
        this.short = true;
        return;
      }
      yield b;
      at = to;
    }
  }

  /** Whether pieces() found the source ending before the range did. */
  short = false;

  /** Read what is left of the range and one byte beyond: the bytes the source sent in all. */
  async finish(): Promise<number> {
    while (this.got < this.#end - this.#start) {
      this.#at += this.#filled;
      this.#filled = 0;
      const n = await this.#reader.read(this.#buf.subarray(0, Math.min(this.#buf.length, this.#end - this.#at)));
      if (n === 0) return this.got;
      this.#onBytes(n);
      this.got += n;
      this.#filled = n;
    }
    if ((await this.#reader.read(END_PROBE)) > 0) this.got++;
    return this.got;
  }

  /** The window back to its pool; the reader is the caller's to close. */
  dispose(): void {
    this.#pool.give(this.#buf);
  }
}
