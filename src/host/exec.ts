/**
 * The one wrapper through which tiu runs programs: argv (never a shell), a timeout, an
 * AbortSignal, optional stdin, and the tail of stderr in the error when the program fails.
 */
import { execa } from 'execa';
import { TiuError } from '../errors.ts';

export interface ExecOptions {
  input?: string | Buffer;
  timeoutMs?: number;
  signal?: AbortSignal;
  env?: Record<string, string | undefined>;
  cwd?: string;
  /** Return non-zero exits instead of throwing (the program still has to start). */
  allowFailure?: boolean;
}

export interface ExecResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

export class CommandFailedError extends TiuError {
  constructor(argv0: string, why: string, details: Record<string, unknown>) {
    super('COMMAND_FAILED', `${argv0} ${why}`, { program: argv0, ...details });
  }
}

function tail(s: string, n = 800): string {
  const t = s.trim();
  return t.length > n ? '…' + t.slice(-n) : t;
}

/**
 * Run `file args...`. Exits other than 0 throw COMMAND_FAILED with the stderr tail; stdout is
 * never put in the error (it may hold secrets, e.g. a credential helper's answer).
 */
export async function run(file: string, args: string[], opts: ExecOptions = {}): Promise<ExecResult> {
  const r = await execa(file, args, {
    reject: false,
    stripFinalNewline: false,
    ...(opts.input !== undefined ? { input: opts.input } : { stdin: 'ignore' as const }),
    ...(opts.timeoutMs ? { timeout: opts.timeoutMs } : {}),
    ...(opts.signal ? { cancelSignal: opts.signal } : {}),
    ...(opts.env ? { env: opts.env } : {}),
    ...(opts.cwd ? { cwd: opts.cwd } : {}),
  });
  const stdout = String(r.stdout ?? '');
  const stderr = String(r.stderr ?? '');
  if (r.failed && !(opts.allowFailure && r.exitCode !== undefined && !r.timedOut && !r.isCanceled)) {
    const why = r.timedOut
      ? `timed out after ${opts.timeoutMs} ms`
      : r.isCanceled
        ? 'was cancelled'
        : r.exitCode === undefined
          ? `could not run: ${r.code ?? r.originalMessage ?? 'unknown error'}`
          : `exited with ${r.exitCode}`;
    throw new CommandFailedError(file, `${why}${stderr.trim() ? ': ' + tail(stderr) : ''}`, {
      args,
      exitCode: r.exitCode,
      stderr: tail(stderr),
    });
  }
  return { stdout, stderr, exitCode: r.exitCode ?? 0 };
}
