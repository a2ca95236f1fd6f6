/**
 * Health-check programs: run one, with a timeout, and report how it ended. A check is any
 * executable; it passes when it exits 0. Its output (the tail) goes into the result, not into
 * an error: a failing check is an answer, not a failure of tiu.
 */
import { loadExeca } from './exec.ts';

export interface CheckRun {
  exitCode?: number;
  timedOut: boolean;
  /** Set when the program could not be started at all (not executable, missing interpreter). */
  startError?: string;
  output: string;
}

const OUTPUT_TAIL = 4000;

/**
 * Run `path args` in its own process group; past the timeout the whole group is killed (a
 * shell script's children included, so nothing keeps its output open).
 */
export async function runCheckProgram(path: string, args: readonly string[], timeoutMs: number): Promise<CheckRun> {
  const { execa } = await loadExeca();
  const child = execa(path, args, { all: true, reject: false, stdin: 'ignore', detached: true });
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }, timeoutMs);
  const r = await child.finally(() => clearTimeout(timer));
  const all = typeof r.all === 'string' ? r.all.trim() : '';
  const output = all.length > OUTPUT_TAIL ? '…' + all.slice(-OUTPUT_TAIL) : all;
  if (timedOut) return { timedOut: true, output };
  if (r.exitCode === undefined) return { timedOut: false, startError: r.originalMessage ?? r.shortMessage, output };
  return { exitCode: r.exitCode, timedOut: false, output };
}
