import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { acquireFileLock, type FileLock } from '../../src/host/file-lock.ts';

const script = fileURLToPath(new URL('../helpers/lock-user.ts', import.meta.url));

function lockUser(args: string[]): { exited: Promise<number | null>; locked: Promise<void>; kill(): void } {
  const child = spawn(process.execPath, ['--disable-warning=ExperimentalWarning', script, ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise<number | null>((r) => child.once('exit', r));
  const locked = new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => d.toString().includes('locked') && resolve());
    void exited.then((c) => reject(new Error(`lock user exited with ${c}`)));
  });
  locked.catch(() => undefined);
  return { exited, locked, kill: () => child.kill('SIGKILL') };
}

function held(l: FileLock | { busy: true; holder: string }): FileLock {
  assert.ok(!('busy' in l), 'the lock should have been free');
  return l;
}

describe('file lock (flock)', function () {
  this.timeout(60000);
  let dir: string;
  beforeEach(async () => (dir = await mkdtemp(join(tmpdir(), 'tiu-lock-'))));
  afterEach(() => rm(dir, { recursive: true, force: true }));

  it('two waiters on a lock whose holder died cannot both win', async () => {
    const path = join(dir, 'x.lock');
    const log = join(dir, 'log');
    const holder = lockUser([path, 'hold']);
    await holder.locked;
    // Both wait while the holder lives, then the holder dies without releasing.
    const a = lockUser([path, 'turn', 'a', '300', log]);
    const b = lockUser([path, 'turn', 'b', '300', log]);
    await new Promise((r) => setTimeout(r, 300));
    holder.kill();
    await holder.exited;
    assert.deepEqual(await Promise.all([a.exited, b.exited]), [0, 0]);
    const lines = (await readFile(log, 'utf8')).trim().split('\n');
    assert.equal(lines.length, 4, lines.join(' | '));
    // One after the other: each "start" is followed by its own "end".
    assert.match(lines[0]!, /^start [ab]$/);
    assert.equal(lines[1], lines[0]!.replace('start', 'end'));
    assert.match(lines[2]!, /^start [ab]$/);
    assert.notEqual(lines[2], lines[0]);
    assert.equal(lines[3], lines[2]!.replace('start', 'end'));
  });

  it('a busy lock names its holder, without waiting or after the wait', async () => {
    const path = join(dir, 'y.lock');
    const mine = held(await acquireFileLock(path, 0));
    assert.deepEqual(await acquireFileLock(path, 0), { busy: true, holder: String(process.pid) });
    const started = Date.now();
    assert.deepEqual(await acquireFileLock(path, 300), { busy: true, holder: String(process.pid) });
    assert.ok(Date.now() - started >= 250, `waited ${Date.now() - started} ms`);
    await mine.release();
    const again = held(await acquireFileLock(path, 0));
    await again.release();
    await assert.rejects(stat(path), /ENOENT/);
  });

  it('a waiter gets the lock when its holder releases it, also after the file was unlinked', async () => {
    const path = join(dir, 'z.lock');
    const first = held(await acquireFileLock(path, 0));
    const waiting = acquireFileLock(path, 10_000);
    await new Promise((r) => setTimeout(r, 200));
    await first.release();
    const second = held(await waiting);
    // The waiter holds the file the path names now, so a third one finds it busy.
    assert.equal('busy' in (await acquireFileLock(path, 0)), true);
    await second.release();
  });
});
