// A process that takes a file lock (src/host/file-lock.ts) and logs what it does to stdout:
//   lock-user.ts PATH hold            take it, print "locked", keep it until killed
//   lock-user.ts PATH turn NAME MS    wait for it, log "start NAME", hold MS ms, log "end NAME", release
import { appendFile } from 'node:fs/promises';
import { acquireFileLock } from '../../src/host/file-lock.ts';

const [path, mode, name, ms] = process.argv.slice(2);
if (!path) throw new Error('usage: lock-user.ts PATH hold|turn NAME MS LOG');
const lock = await acquireFileLock(path, 30_000);
if ('busy' in lock) throw new Error(`still busy (holder ${lock.holder})`);
if (mode === 'hold') {
  process.stdout.write('locked\n');
  setInterval(() => undefined, 1000);
} else {
  const log = process.argv[6]!;
  await appendFile(log, `start ${name}\n`);
  await new Promise((r) => setTimeout(r, Number(ms)));
  await appendFile(log, `end ${name}\n`);
  await lock.release();
}
