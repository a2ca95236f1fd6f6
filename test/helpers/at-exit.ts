/**
 * Temporary things a test made (directories in /tmp, the loop device and mounts of a test
 * system, a registry process), undone when the test process ends however it ends. mocha's after
 * hooks miss three cases that left dozens of tiu-* directories in /tmp after CI runs: fixtures made
 * while a file loads (a describe whose tests --grep skips runs no hooks), an after hook that
 * throws before its later lines, and SIGINT/SIGTERM (a CI timeout), on which mocha runs no hook.
 *
 * Each helper registers its undo when it makes the thing and drops it once its own teardown ran:
 * only what a helper of this process made is ever touched. Undos run synchronously (an exit
 * handler cannot await), newest first, and one failing does not keep the others from running.
 */
const pending = new Map<number, () => void>();
let next = 0;
let installed = false;

function runAll(): void {
  const undos = [...pending.values()].reverse();
  pending.clear();
  for (const undo of undos) {
    try {
      undo();
    } catch {
      // At exit there is no one to tell; the other undos still run.
    }
  }
}

function install(): void {
  installed = true;
  process.once('exit', runAll);
  for (const signal of ['SIGINT', 'SIGTERM'] as const)
    process.once(signal, () => {
      runAll();
      // The default action (end with the signal) once this handler is gone.
      process.kill(process.pid, signal);
    });
}

/** Run `undo` when the process ends unless the returned function is called first (the normal teardown did it). */
export function atExit(undo: () => void): () => void {
  if (!installed) install();
  const id = next++;
  pending.set(id, undo);
  return () => {
    pending.delete(id);
  };
}
