/**
 * The one wrapper through which tiu runs programs. Logs the argv (never stdin), enforces a
 * timeout, honours an AbortSignal, and puts the tail of stderr into the error it throws.
 *
 * Written on node:child_process rather than execa: execa and its dependencies are ~170 modules,
 * about 20 MiB of RSS once loaded, which every device command that runs btrfs or snapper paid
 * (the device commands must stay under 100 MiB, see bench/). What tiu needs is small: argv, env,
 * stdin bytes, collected output, a timeout, cancellation and extra inherited fds.
 */
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
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
  /** Added to (and, where a value is undefined, removed from) tiu's own environment. */
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
  /**
   * Hand stdout to this function piece by piece as it arrives instead of collecting it (the
   * result's stdout is then empty): output of any size, held only as long as the consumer keeps it.
   */
  onStdout?: (chunk: Buffer) => void;
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

const STDERR_TAIL = 2000;
function tail(s: string): string {
  const t = s.trim();
  return t.length > STDERR_TAIL ? '…' + t.slice(-STDERR_TAIL) : t;
}

/** More output than this from one program is an error, not a reason to run out of memory. */
export const MAX_OUTPUT_BYTES = 100 * 1024 * 1024;
/** How long a program gets to exit after SIGTERM (timeout, cancellation) before SIGKILL. */
const KILL_GRACE_MS = 5000;

/** Children still running, so that tiu exiting (an error, a signal) does not leave them behind. */
const running = new Set<ChildProcess>();
let exitHookInstalled = false;
function track(child: ChildProcess): void {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', () => {
      for (const c of running) c.kill('SIGTERM');
    });
  }
  running.add(child);
  child.once('close', () => running.delete(child));
}

/** Collects a stream's bytes up to MAX_OUTPUT_BYTES; `overflow` says the program wrote more. */
class OutputCollector {
  private readonly chunks: Buffer[] = [];
  private bytes = 0;
  overflow = false;
  constructor(stream: Readable | null, onOverflow: () => void) {
    stream?.on('data', (chunk: Buffer) => {
      if (this.overflow) return;
      this.bytes += chunk.length;
      if (this.bytes > MAX_OUTPUT_BYTES) {
        this.overflow = true;
        this.chunks.length = 0;
        onOverflow();
        return;
      }
      this.chunks.push(chunk);
    });
  }
  buffer(): Buffer {
    return Buffer.concat(this.chunks);
  }
  text(): string {
    return this.buffer().toString('utf8');
  }
}

/** SIGTERM now, SIGKILL if it is still there after the grace period. */
function terminate(child: ChildProcess): void {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const force = setTimeout(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }, KILL_GRACE_MS);
  force.unref();
  child.once('exit', () => clearTimeout(force));
}

/** How a child ended: its exit code (null: killed by a signal), or the error that kept it from starting. */
export type ChildEnd = { code: number | null } | { error: NodeJS.ErrnoException };

/** The child's end, once its output streams are closed too. */
export function childEnded(child: ChildProcess): Promise<ChildEnd> {
  return new Promise((resolve) => {
    child.once('error', (error: NodeJS.ErrnoException) => resolve({ error }));
    child.once('close', (code: number | null) => resolve({ code }));
  });
}

/**
 * A started child watched until it ends: its timeout (0: none) and cancellation stop it;
 * `why` is the first reason it was stopped for, `ended` settles when it is gone.
 */
class Supervised {
  why: string | undefined;
  readonly ended: Promise<ChildEnd>;
  readonly #child: ChildProcess;

  constructor(child: ChildProcess, timeout: number, signal: AbortSignal | undefined) {
    this.#child = child;
    track(child);
    const timer = timeout > 0 ? setTimeout(() => this.stop(`timed out after ${timeout} ms`), timeout) : undefined;
    const onAbort = (): void => this.stop('was cancelled');
    signal?.addEventListener('abort', onAbort, { once: true });
    this.ended = childEnded(child).finally(() => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    });
  }

  stop = (reason: string): void => {
    this.why ??= reason;
    terminate(this.#child);
  };

  /** The failure of an end that is not an exit code to judge (not started, stopped, killed), else undefined. */
  failure(argv: readonly string[], end: ChildEnd, stderr: string): CommandFailedError | undefined {
    if ('error' in end) return new CommandFailedError(argv, undefined, tail(stderr), startFailure(end.error));
    if (this.why) return new CommandFailedError(argv, undefined, tail(stderr), this.why);
    // Killed by a signal tiu did not send.
    if (end.code === null)
      return new CommandFailedError(
        argv,
        undefined,
        tail(stderr),
        `was killed by ${this.#child.signalCode ?? 'a signal'}`,
      );
    return undefined;
  }
}

function childEnv(extra: RunOptions['env']): NodeJS.ProcessEnv | undefined {
  return extra ? { ...process.env, ...extra } : undefined;
}

/** What spawn's 'error' event says, in the words of a failure message. */
function startFailure(err: NodeJS.ErrnoException): string {
  return err.code === 'ENOENT' ? 'is not installed' : `could not be started: ${err.message}`;
}

export async function run(file: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const argv = [file, ...args];
  logger(argv.join(' '));
  const timeout = opts.timeout ?? 600_000;
  if (opts.signal?.aborted) throw new CommandFailedError(argv, undefined, '', 'was cancelled');
  const stdio: StdioOptions = [opts.input !== undefined ? 'pipe' : 'ignore', 'pipe', 'pipe', ...(opts.passFds ?? [])];
  const child = spawn(file, args, { cwd: opts.cwd, env: childEnv(opts.env), stdio });
  const watch = new Supervised(child, timeout, opts.signal);
  const stop = watch.stop;
  const consume = opts.onStdout;
  let consumerFailed: Error | undefined;
  if (consume)
    child.stdout?.on('data', (chunk: Buffer) => {
      if (consumerFailed !== undefined) return;
      try {
        consume(chunk);
      } catch (e) {
        consumerFailed = e instanceof Error ? e : new Error(String(e));
        stop('had its output refused');
      }
    });
  const stdout = new OutputCollector(consume ? null : child.stdout, () =>
    stop(`wrote more than ${MAX_OUTPUT_BYTES} bytes of output`),
  );
  const stderr = new OutputCollector(child.stderr, () => stop(`wrote more than ${MAX_OUTPUT_BYTES} bytes to stderr`));
  if (child.stdin) {
    // A program may exit without reading all of its input: that is its exit status's business.
    child.stdin.on('error', () => {});
    child.stdin.end(opts.input);
  }

  const ended = await watch.ended;
  const errText = stderr.text();
  if (consumerFailed !== undefined) throw consumerFailed;
  const failed = watch.failure(argv, ended, errText);
  if (failed) throw failed;
  const exitCode = (ended as { code: number }).code;
  if (!opts.allowFailure && !(opts.okExitCodes ?? [0]).includes(exitCode))
    throw new CommandFailedError(argv, exitCode, tail(errText));
  if (opts.binary) return { stdout: '', stdoutBytes: stdout.buffer(), stderr: errText, exitCode };
  return { stdout: stdout.text(), stderr: errText, exitCode };
}

/**
 * A program as a stream filter (decompressors, tar): bytes in on stdin, out on stdout.
 * The returned promise settles when the program exits; failures carry the stderr tail.
 */
export function spawnFilter(
  file: string,
  args: readonly string[],
  opts: { signal?: AbortSignal; timeout?: number } = {},
): Promise<{ stdin: Writable; stdout: Readable; done: Promise<void> }> {
  const argv = [file, ...args];
  logger(argv.join(' '));
  if (opts.signal?.aborted) return Promise.reject(new CommandFailedError(argv, undefined, '', 'was cancelled'));
  const child = spawn(file, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  const watch = new Supervised(child, opts.timeout ?? 0, opts.signal);
  const stderr = new OutputCollector(child.stderr, () =>
    watch.stop(`wrote more than ${MAX_OUTPUT_BYTES} bytes to stderr`),
  );
  const done = watch.ended.then((end) => {
    const failed = watch.failure(argv, end, stderr.text());
    if (failed) throw failed;
    const code = (end as { code: number }).code;
    if (code !== 0) throw new CommandFailedError(argv, code, tail(stderr.text()));
  });
  // Callers attach to `done` after they start streaming; an early failure must not be unhandled.
  done.catch(() => {});
  return Promise.resolve({ stdin: child.stdin, stdout: child.stdout, done });
}
