import assert from 'node:assert/strict';
import { downloadProgress } from '../../src/deploy/download-progress.ts';

describe('downloadProgress', () => {
  it('prints at most one line per interval, with the share of the total', () => {
    let t = 0;
    const lines: string[] = [];
    const count = downloadProgress(4 * 1024 * 1024, (l) => lines.push(l), { everyMs: 2000, now: () => t });
    count(1024 * 1024);
    assert.deepEqual(lines, [], 'nothing before the first interval');
    t = 2500;
    count(1024 * 1024);
    t = 3000;
    count(1024 * 1024);
    assert.deepEqual(lines, ['downloading: 2.0 MiB of 4.0 MiB (50%)']);
    t = 4600;
    count(1024 * 1024);
    assert.deepEqual(lines.at(-1), 'downloading: 4.0 MiB of 4.0 MiB (100%)');
    assert.equal(lines.length, 2);
  });

  it('without a known total it counts bytes only', () => {
    const lines: string[] = [];
    const count = downloadProgress(undefined, (l) => lines.push(l), { everyMs: 0 });
    count(2048);
    assert.deepEqual(lines, ['downloading: 2.0 KiB']);
  });
});
