/**
 * Running the programs the benchmark compares: plain runs (setup) and measured runs (wall time
 * and peak RSS through GNU time's `%M`, the largest resident set of the process and the
 * descendants it waited for).
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface RunOpts {
  cwd?: string;
  env?: Record<string, string>;
  /** Data for stdin. */
  input?: string;
  /** Pass output through to the terminal instead of collecting it. */
  inherit?: boolean;
  okCodes?: number[];
}

export interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

export const verbose = process.env.TIU_BENCH_VERBOSE === '1';

export function sh(cmd: string, args: readonly string[], opts: RunOpts = {}): Promise<Ran> {
  if (verbose) process.stderr.write(`bench: $ ${cmd} ${args.join(' ')}\n`);
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: { ...process.env, ...opts.env },
      stdio: [
        opts.input === undefined ? 'ignore' : 'pipe',
        opts.inherit ? 'inherit' : 'pipe',
        opts.inherit ? 'inherit' : 'pipe',
      ],
    });
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr?.on('data', (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-8000);
    });
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    child.once('error', reject);
    child.once('close', (code, signal) => {
      const c = code ?? (signal ? 128 : 1);
      if (!(opts.okCodes ?? [0]).includes(c)) {
        reject(new Error(`${cmd} ${args.join(' ')} failed (${signal ?? c}): ${stderr.trim().slice(-2000)}`));
      } else {
        resolve({ code: c, stdout, stderr });
      }
    });
  });
}

export interface Measured extends Ran {
  /** Wall time in seconds. */
  wall: number;
  /** Peak RSS in bytes. */
  rss: number;
}

/** Run under GNU time; wall time is taken here (ms resolution), peak RSS from `%M`. */
export async function measured(cmd: string, args: readonly string[], opts: RunOpts = {}): Promise<Measured> {
  const dir = await mkdtemp(join(tmpdir(), 'tiu-bench-time-'));
  const out = join(dir, 'time');
  try {
    const t0 = process.hrtime.bigint();
    const r = await sh('/usr/bin/time', ['-f', '%M', '-o', out, cmd, ...args], opts);
    const wall = Number(process.hrtime.bigint() - t0) / 1e9;
    const text = (await readFile(out, 'utf8')).trim().split('\n');
    const kb = Number(text[text.length - 1]);
    if (!Number.isFinite(kb)) throw new Error(`GNU time gave no peak RSS for ${cmd}: ${text.join(' ')}`);
    return { ...r, wall, rss: kb * 1024 };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
