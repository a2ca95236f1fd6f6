/**
 * An exclusive lock between processes (and between callers in one process) on a directory:
 * a lock file created with O_EXCL holding the owner's pid and host. A lock whose owner on this
 * host is gone (crashed) is taken over; a live owner is waited for, up to a timeout.
 */
import { open, readFile, stat, unlink } from 'node:fs/promises';
import { hostname } from 'node:os';
import { TiuError } from '../errors.ts';

export class LockTimeoutError extends TiuError {
  constructor(path: string, ms: number, owner: string) {
    super('LOCK_TIMEOUT', `could not lock ${path} within ${ms} ms (held by ${owner || 'unknown'})`, { path, owner });
  }
}

const inProcess = new Map<string, Promise<void>>();

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function acquireFile(path: string, timeoutMs: number): Promise<void> {
  const me = `${process.pid}\n${hostname()}\n`;
  const deadline = Date.now() + timeoutMs;
  let delay = 5;
  for (;;) {
    try {
      const fh = await open(path, 'wx', 0o644);
      try {
        await fh.writeFile(me);
      } finally {
        await fh.close();
      }
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    let owner = '';
    try {
      owner = await readFile(path, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw e;
    }
    const [pidText, host] = owner.split('\n');
    const pid = Number(pidText);
    // A complete lock file of a dead process on this host is stale. (An empty file is one
    // being written right now: wait for it.)
    if (host === hostname() && Number.isInteger(pid) && pid > 0 && !alive(pid)) {
      const again = await readFile(path, 'utf8').catch(() => '');
      if (again === owner) await unlink(path).catch(() => undefined);
      continue;
    }
    // An empty lock file older than 10 s belongs to a writer that died between create and write.
    if (owner === '') {
      const st = await stat(path).catch(() => undefined);
      if (st && Date.now() - st.mtimeMs > 10000) {
        await unlink(path).catch(() => undefined);
        continue;
      }
    }
    if (Date.now() > deadline) throw new LockTimeoutError(path, timeoutMs, owner.replace(/\n/g, ' ').trim());
    await new Promise((r) => setTimeout(r, delay + Math.random() * delay));
    delay = Math.min(delay * 2, 100);
  }
}

/** Run `fn` holding the lock file `path`. */
export async function withLock<T>(path: string, fn: () => Promise<T>, timeoutMs = 60000): Promise<T> {
  // Serialise callers in this process first, so they don't spin on the file.
  const prev = inProcess.get(path) ?? Promise.resolve();
  let release!: () => void;
  const mine = new Promise<void>((r) => (release = r));
  const chained = prev.then(() => mine);
  inProcess.set(path, chained);
  await prev;
  try {
    await acquireFile(path, timeoutMs);
    try {
      return await fn();
    } finally {
      await unlink(path).catch(() => undefined);
    }
  } finally {
    release();
    if (inProcess.get(path) === chained) inProcess.delete(path);
  }
}
