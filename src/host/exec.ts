/**
 * The one wrapper through which tiu runs programs. Logs the argv (never stdin), enforces a
 * timeout, honours an AbortSignal, and puts the tail of stderr into the error it throws.
 */
import type { Options as ExecaOptions, execa as ExecaFn } from 'execa';
import type { Readable, Writable } from 'node:stream';
import { TiuError } from '../errors.ts';

/**
 * A program that failed: COMMAND_FAILED, or DISK_FULL when its stderr says the disk is full (a
 * program's ENOSPC reaches tiu only as text), so callers see a full disk by its code.
 */
export class CommandFailedError extends TiuError {
  constructor(argv: readonly string[], exitCode: number | undefined, stderrTail: string, why?: string) {
    const shown = argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : JSON.stringify(a))).join(' ');
    super(
      /No space left on device|ENOSPC|Disk quota exceeded/.test(stderrTail) ? 'DISK_FULL' : 'COMMAND_FAILED',
      `${shown} ${why ?? `exited with ${exitCode ?? 'no code'}`}${stderrTail ? `: ${stderrTail}` : ''}`,
      { argv: [...argv], exitCode, stderr: stderrTail },
    );
  }
}

export interface RunOptions {
  cwd?: string;
  env?: Record<string, string | undefined>;
  /** Milliseconds; default 10 minutes. */
  timeout?: number;
  signal?: AbortSignal;
  /** Data for stdin. Not logged. */
  input?: string | Uint8Array;
  /** Exit codes that are not failures (default [0]). */
  okExitCodes?: number[];
  /** Return any exit code instead of throwing (the program must still start and finish in time). */
  allowFailure?: boolean;
  /** Keep stdout as a Buffer instead of text. */
  binary?: boolean;
  /** Open file descriptors of this process to pass on as the child's fds 3, 4, ... (e.g. for flock(1)). */
  passFds?: number[];
}

export interface RunResult {
  stdout: string;
  stdoutBytes?: Uint8Array;
  stderr: string;
  exitCode: number;
}

/** The argv of every program run, on stderr with TIU_DEBUG set. */
function logger(line: string): void {
  if (process.env.TIU_DEBUG) process.stderr.write(`tiu: run ${line}\n`);
}

/**
 * execa, loaded on first use: it is ~170 modules (about 20 MiB of RSS at start-up) that
 * commands which never run a program (copy, build, inspect) need not pay for.
 */
let execaModule: Promise<{ execa: typeof ExecaFn }> | undefined;
export function loadExeca(): Promise<{ execa: typeof ExecaFn }> {
  execaModule ??= import('execa');
  return execaModule;
}

const STDERR_TAIL = 2000;
function tail(s: string): string {
  const t = s.trim();
  return t.length > STDERR_TAIL ? '…' + t.slice(-STDERR_TAIL) : t;
}

export async function run(file: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const argv = [file, ...args];
  logger(argv.join(' '));
  const stdinOpts: ExecaOptions = opts.passFds?.length
    ? {
        stdio: [
          opts.input !== undefined ? 'pipe' : 'ignore',
          'pipe',
          'pipe',
          ...opts.passFds,
        ] as unknown as ExecaOptions['stdio'],
        ...(opts.input !== undefined ? { input: opts.input } : {}),
      }
    : opts.input !== undefined
      ? { input: opts.input }
      : { stdin: 'ignore' };
  const options: ExecaOptions = {
    cwd: opts.cwd,
    env: opts.env,
    extendEnv: true,
    timeout: opts.timeout ?? 600_000,
    cancelSignal: opts.signal,
    reject: false,
    stripFinalNewline: false,
    encoding: opts.binary ? 'buffer' : 'utf8',
    ...stdinOpts,
  };
  const { execa } = await loadExeca();
  const r = await execa(file, args, options);
  const stderr = typeof r.stderr === 'string' ? r.stderr : Buffer.from(r.stderr as Uint8Array).toString();
  if (r.timedOut) throw new CommandFailedError(argv, undefined, tail(stderr), `timed out after ${options.timeout} ms`);
  if (r.isCanceled) throw new CommandFailedError(argv, undefined, tail(stderr), 'was cancelled');
  if (r.failed && r.exitCode === undefined) {
    const why = r.originalMessage ?? 'could not be started';
    throw new CommandFailedError(argv, undefined, tail(stderr), why.includes('ENOENT') ? 'is not installed' : why);
  }
  const exitCode = r.exitCode ?? 0;
  if (!opts.allowFailure && !(opts.okExitCodes ?? [0]).includes(exitCode))
    throw new CommandFailedError(argv, exitCode, tail(stderr));
  if (opts.binary) {
    const bytes = r.stdout as unknown as Uint8Array;
    return { stdout: '', stdoutBytes: bytes, stderr, exitCode };
  }
  return { stdout: r.stdout as string, stderr, exitCode };
}

/**
 * A program as a stream filter (decompressors, tar): bytes in on stdin, out on stdout.
 * The returned promise settles when the program exits; failures carry the stderr tail.
 */
export async function spawnFilter(
  file: string,
  args: readonly string[],
  opts: { signal?: AbortSignal; timeout?: number } = {},
): Promise<{ stdin: Writable; stdout: Readable; done: Promise<void> }> {
  const argv = [file, ...args];
  logger(argv.join(' '));
  const { execa } = await loadExeca();
  const child = execa(file, args, {
    stdin: 'pipe',
    stdout: 'pipe',
    stderr: 'pipe',
    buffer: { stdout: false, stderr: true },
    reject: false,
    cancelSignal: opts.signal,
    timeout: opts.timeout ?? 0,
  });
  const done = child.then((r) => {
    if (r.exitCode === 0) return;
    const stderr = typeof r.stderr === 'string' ? r.stderr : '';
    throw new CommandFailedError(
      argv,
      r.exitCode,
      tail(stderr),
      r.exitCode === undefined ? (r.originalMessage ?? 'failed to start') : undefined,
    );
  });
  return { stdin: child.stdin, stdout: child.stdout, done };
}
