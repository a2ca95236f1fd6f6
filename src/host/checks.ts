/**
 * Health-check programs: run one, with a timeout, and report how it ended. A check is any
 * executable; it passes when it exits 0. Its output (the tail) goes into the result, not into
 * an error: a failing check is an answer, not a failure of tiu.
 */
import { spawn } from 'node:child_process';
import { childEnded } from './exec.ts';

export interface CheckRun {
  exitCode?: number;
  timedOut: boolean;
  /** Set when the program could not be started at all (not executable, missing interpreter). */
  startError?: string;
  output: string;
}

const OUTPUT_TAIL = 4000;

/** The last bytes of stdout and stderr together, in the order they arrived; older output is dropped. */
class OutputTail {
  private chunks: Buffer[] = [];
  private bytes = 0;
  add = (chunk: Buffer): void => {
    this.chunks.push(chunk);
    this.bytes += chunk.length;
    // Keep a margin over OUTPUT_TAIL characters (UTF-8 takes up to 4 bytes each).
    while (this.chunks.length > 1 && this.bytes - this.chunks[0]!.length > OUTPUT_TAIL * 4) {
      this.bytes -= this.chunks.shift()!.length;
    }
  };
  text(): string {
    const all = Buffer.concat(this.chunks).toString('utf8').trim();
    return all.length > OUTPUT_TAIL ? '…' + all.slice(-OUTPUT_TAIL) : all;
  }
}

/**
 * Run `path args` in its own process group; past the timeout the whole group is killed (a
 * shell script's children included, so nothing keeps its output open).
 */
export async function runCheckProgram(path: string, args: readonly string[], timeoutMs: number): Promise<CheckRun> {
  const child = spawn(path, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  const output = new OutputTail();
  child.stdout.on('data', output.add);
  child.stderr.on('data', output.add);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }, timeoutMs);
  const ended = await childEnded(child).finally(() => clearTimeout(timer));
  if (timedOut) return { timedOut: true, output: output.text() };
  if ('error' in ended) return { timedOut: false, startError: ended.error.message, output: output.text() };
  if (ended.code === null) {
    return { timedOut: false, startError: `killed by ${child.signalCode ?? 'a signal'}`, output: output.text() };
  }
  return { exitCode: ended.code, timedOut: false, output: output.text() };
}
