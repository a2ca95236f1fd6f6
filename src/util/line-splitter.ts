/**
 * Lines out of a byte stream as its pieces come: each complete line (without its `\n`) goes to
 * `onLine` at once, and only the unfinished last line is kept between pieces, so a program's
 * output of any size is read in the memory of its longest line. A line longer than `maxLine`
 * bytes calls `tooLong` (which throws) instead of growing without bound.
 */
export class LineSplitter {
  readonly #onLine: (line: Buffer) => void;
  readonly #maxLine: number;
  readonly #tooLong: (bytes: number) => never;
  #carry: Buffer = Buffer.alloc(0);
  /** The most bytes kept between pieces so far (tests check the bound). */
  maxHeld = 0;

  constructor(opts: { onLine: (line: Buffer) => void; maxLine: number; tooLong: (bytes: number) => never }) {
    this.#onLine = opts.onLine;
    this.#maxLine = opts.maxLine;
    this.#tooLong = opts.tooLong;
  }

  push(piece: Buffer): void {
    let start = 0;
    let nl = piece.indexOf(0x0a);
    if (nl >= 0 && this.#carry.length > 0) {
      // The line begun in earlier pieces ends here: only it is joined, never the whole piece.
      this.#emit(Buffer.concat([this.#carry, piece.subarray(0, nl)]));
      this.#carry = Buffer.alloc(0);
      start = nl + 1;
      nl = piece.indexOf(0x0a, start);
    }
    while (nl >= 0) {
      this.#emit(piece.subarray(start, nl));
      start = nl + 1;
      nl = piece.indexOf(0x0a, start);
    }
    if (start < piece.length) {
      const rest = piece.subarray(start);
      if (this.#carry.length + rest.length > this.#maxLine) this.#tooLong(this.#carry.length + rest.length);
      // A copy: keeping a view would keep the whole piece alive.
      this.#carry = Buffer.concat([this.#carry, rest]);
      this.maxHeld = Math.max(this.maxHeld, this.#carry.length);
    }
  }

  /** The end of the stream: a last line without `\n` is a line too. */
  end(): void {
    if (this.#carry.length > 0) this.#emit(this.#carry);
    this.#carry = Buffer.alloc(0);
  }

  #emit(line: Buffer): void {
    if (line.length > this.#maxLine) this.#tooLong(line.length);
    this.#onLine(line);
  }
}
