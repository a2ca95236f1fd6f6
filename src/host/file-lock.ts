/**
 * The one lock between processes: flock(2) on a lock file, taken by flock(1) on a descriptor
 * of ours. The lock belongs to our open file description, so the kernel drops it when the
 * holder dies, even on SIGKILL: there is no stale owner to take over, and so no race between
 * waiters that both decide an owner is dead.
 *
 * The holder writes its pid into the file (shown to whoever finds the lock busy) and unlinks
 * the file on release, while still holding it. A waiter that then gets the lock holds an
 * unlinked file: it checks that the path still names the file it locked, and starts over if not.
 */
import { open, stat, unlink, type FileHandle } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { CommandFailedError } from './exec.ts';

export interface FileLock {
  readonly path: string;
  release(): Promise<void>;
}

/** The lock was not free within the wait; `holder` is what the holder wrote (its pid), maybe ''. */
export interface LockBusy {
  readonly busy: true;
  readonly holder: string;
}

const CONFLICT = 75;

/**
 * flock(1) on our `fd` (its fd 3): true when locked, false when still held by another after
 * `waitMs` (0: don't wait). node:child_process directly rather than run() (src/host/exec.ts): the
 * lock's fd goes in as fd 3 and only the exit status matters.
 */
function flockFd(fd: number, waitMs: number): Promise<boolean> {
  const wait = waitMs > 0 ? ['--timeout', (waitMs / 1000).toFixed(3)] : ['--nonblock'];
  return new Promise((resolve, reject) => {
    const child = spawn('flock', [...wait, '--conflict-exit-code', String(CONFLICT), '3'], {
      stdio: ['ignore', 'ignore', 'pipe', fd],
      timeout: waitMs + 60_000,
    });
    let stderr = '';
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-2000)));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (code === 0) resolve(true);
      else if (code === CONFLICT) resolve(false);
      else
        reject(
          new CommandFailedError(
            ['flock', ...wait, '3'],
            code ?? undefined,
            stderr,
            signal ? `was killed by ${signal}` : undefined,
          ),
        );
    });
  });
}

async function sameFile(fh: FileHandle, path: string): Promise<boolean> {
  const [held, named] = await Promise.all([fh.stat(), stat(path).catch(() => undefined)]);
  return named !== undefined && named.ino === held.ino && named.dev === held.dev;
}

/** Take the lock `path` (created if missing), waiting up to `waitMs` for its holder. */
export async function acquireFileLock(path: string, waitMs: number): Promise<FileLock | LockBusy> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    const fh = await open(path, 'a+', 0o600);
    let busy: LockBusy | undefined;
    try {
      if (!(await flockFd(fh.fd, Math.max(0, deadline - Date.now())))) {
        busy = { busy: true, holder: (await fh.readFile('utf8')).trim() };
      } else if (await sameFile(fh, path)) {
        await fh.truncate(0);
        await fh.write(`${process.pid}\n`, 0);
        return heldLock(path, fh);
      }
    } catch (e) {
      await fh.close();
      throw e;
    }
    await fh.close();
    if (busy) return busy;
    // Locked a file its last holder had already unlinked: try the one the path names now.
  }
}

function heldLock(path: string, fh: FileHandle): FileLock {
  let released = false;
  return {
    path,
    async release() {
      if (released) return;
      released = true;
      try {
        await unlink(path).catch(() => undefined);
      } finally {
        await fh.close();
      }
    },
  };
}
