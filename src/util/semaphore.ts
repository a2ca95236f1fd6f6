/** At most `n` (at least 1) of the functions given to run() at a time; the others wait in order. */
export class Semaphore {
  #free: number;
  readonly #waiting: (() => void)[] = [];
  constructor(n: number) {
    this.#free = Math.max(1, n);
  }
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#free > 0) this.#free--;
    else await new Promise<void>((r) => this.#waiting.push(r));
    try {
      return await fn();
    } finally {
      const next = this.#waiting.shift();
      if (next) next();
      else this.#free++;
    }
  }
}

/**
 * `fn` for each item, at most `n` at a time, in the items' order. The first failure stops
 * handing out items (and goes to `onFailure`, to abort what is in flight); it is thrown once
 * every call has ended, so nothing is still running when this returns.
 */
export async function forEachBounded<T>(
  items: { readonly length: number; at(i: number): T | undefined },
  n: number,
  fn: (item: T) => Promise<void>,
  onFailure?: (e: unknown) => void,
): Promise<void> {
  let next = 0;
  let failure: { e: unknown } | undefined;
  const worker = async (): Promise<void> => {
    while (failure === undefined && next < items.length) {
      const item = items.at(next++)!;
      try {
        await fn(item);
      } catch (e) {
        if (failure === undefined) {
          failure = { e };
          onFailure?.(e);
        }
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(Math.max(1, n), items.length) }, () => worker()));
  if (failure) throw failure.e;
}
