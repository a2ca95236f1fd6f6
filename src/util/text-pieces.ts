/**
 * Text written as bytes into one buffer reused for the whole document, and handed to a sink a
 * piece at a time: for a document made line by line and kept nowhere whole (a layer's TOC JSON,
 * its tar-split lines). Neither the strings nor a Buffer per piece outlive the write, so nothing
 * waits for a full garbage collection.
 */
import { freeNow } from './buffer-pool.ts';

export class TextPieces {
  #buf: Buffer;
  #used = 0;
  readonly #encoding: 'latin1' | 'utf8';
  readonly #handAt: number;
  readonly #sink: (bytes: Buffer) => void;
  /** Bytes handed to the sink so far. */
  handed = 0;

  /**
   * `size`: the buffer's (it grows only for a text larger than it). A piece is handed on once it
   * holds `handAt` bytes (default: when the next text would not fit). `sink` must be done with
   * the bytes when it returns: the buffer is reused.
   */
  constructor(opts: { size: number; encoding: 'latin1' | 'utf8'; sink: (bytes: Buffer) => void; handAt?: number }) {
    this.#buf = Buffer.allocUnsafeSlow(opts.size);
    this.#encoding = opts.encoding;
    this.#sink = opts.sink;
    this.#handAt = opts.handAt ?? opts.size;
  }

  write(text: string): void {
    // UTF-8 takes at most 3 bytes per UTF-16 unit; counted only where that bound does not fit.
    let bytes = this.#encoding === 'latin1' ? text.length : 3 * text.length;
    if (this.#used + bytes > this.#buf.length && this.#encoding === 'utf8') bytes = Buffer.byteLength(text, 'utf8');
    if (this.#used + bytes > this.#buf.length) {
      this.flush();
      if (bytes > this.#buf.length) {
        freeNow(this.#buf);
        this.#buf = Buffer.allocUnsafeSlow(bytes);
      }
    }
    this.#used += this.#buf.write(text, this.#used, this.#encoding);
    if (this.#used >= this.#handAt) this.flush();
  }

  /** Hand on what is written and not yet handed. */
  flush(): void {
    if (this.#used === 0) return;
    const piece = this.#buf.subarray(0, this.#used);
    this.handed += this.#used;
    this.#used = 0;
    this.#sink(piece);
  }

  /** Hand on the rest and free the buffer now (the object is not used after). */
  end(): void {
    this.flush();
    freeNow(this.#buf);
    this.#buf = Buffer.alloc(0);
  }
}
