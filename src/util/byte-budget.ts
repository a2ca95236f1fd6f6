/**
 * A memory budget for parallel work whose items differ in size: a request of 4 MiB and one of
 * 4 KiB must not count the same, or a count-bounded pool holds n times the largest item.
 * run(bytes, fn) starts `fn` when the bytes it declares fit beside those of the calls running;
 * callers are served in order (a large one is not starved by small ones behind it), and a call
 * declaring more than the whole budget runs once nothing else does, alone.
 */
export class ByteBudget {
  readonly limit: number;
  #used = 0;
  #peak = 0;
  readonly #waiting: { bytes: number; go: () => void }[] = [];

  constructor(limit: number) {
    this.limit = Math.max(1, limit);
  }

  /** Bytes declared by the calls running now. */
  get used(): number {
    return this.#used;
  }

  /** The most bytes declared at once so far. */
  get peak(): number {
    return this.#peak;
  }

  async run<T>(bytes: number, fn: () => Promise<T>): Promise<T> {
    const n = Math.max(0, bytes);
    if (this.#waiting.length === 0 && this.#fits(n)) this.#take(n);
    else await new Promise<void>((go) => this.#waiting.push({ bytes: n, go }));
    try {
      return await fn();
    } finally {
      this.#used -= n;
      this.#wake();
    }
  }

  #fits(n: number): boolean {
    return this.#used === 0 || this.#used + n <= this.limit;
  }

  #take(n: number): void {
    this.#used += n;
    this.#peak = Math.max(this.#peak, this.#used);
  }

  #wake(): void {
    while (this.#waiting.length > 0 && this.#fits(this.#waiting[0]!.bytes)) {
      const w = this.#waiting.shift()!;
      this.#take(w.bytes);
      w.go();
    }
  }
}
