/**
 * Callers in this process that use the same key run one after another, in the order they came:
 * an in-process queue in front of a lock between processes, so that callers of one process
 * wait here instead of each holding a file open and a program waiting on it.
 */
const tails = new Map<string, Promise<void>>();

export async function inTurn<T>(key: string, fn: () => Promise<T>): Promise<T> {
  const prev = tails.get(key) ?? Promise.resolve();
  let done!: () => void;
  const mine = new Promise<void>((r) => (done = r));
  const tail = prev.then(() => mine);
  tails.set(key, tail);
  await prev;
  try {
    return await fn();
  } finally {
    done();
    if (tails.get(key) === tail) tails.delete(key);
  }
}
