/**
 * Issue 19: row tables grow by moving their typed arrays, so a superseded array is not garbage
 * waiting for a full collection, and a scan's rows can be given back when its plan is made.
 * Guards read process.memoryUsage().arrayBuffers with no collection in between: memory still
 * counted there is memory still held.
 */
import assert from 'node:assert/strict';
import { ScanEntries } from '../../src/deploy/apply/scan-entries.ts';
import { freeArray, resized } from '../../src/util/typed-resize.ts';
import { collectNow } from '../../src/util/collect.ts';

const buffers = () => process.memoryUsage().arrayBuffers;

function fill(entries: ScanEntries, from: number, to: number): void {
  for (let i = from; i < to; i++)
    entries.set({
      path: `usr/share/file-number-${i}.txt`,
      type: 'reg',
      mode: 0o644,
      uid: 0,
      gid: 0,
      size: i,
      mtimeNs: 1n,
      ctimeNs: 2n,
      ino: BigInt(i + 1),
      dev: 1n,
      nlink: 1,
      rdev: 0n,
      xattrs: {},
    });
}

describe('typed array resizing (issue 19)', function () {
  it('moves an array that owns its buffer: contents kept, the rest zero, the old one empty', function () {
    const a = new BigInt64Array(4).fill(7n);
    const b = resized(a, 6);
    assert.deepEqual([...b], [7n, 7n, 7n, 7n, 0n, 0n]);
    assert.equal(a.length, 0);
    assert.ok(a.buffer.detached);
    const c = resized(b, 3);
    assert.deepEqual([...c], [7n, 7n, 7n]);
    const buf = Buffer.alloc(4 * 1024, 1);
    const grown = resized(buf, 8 * 1024);
    assert.ok(Buffer.isBuffer(grown));
    assert.equal(grown.length, 8 * 1024);
    assert.equal(grown[4095], 1);
    assert.equal(grown[4096], 0);
  });

  it('copies a view of a larger buffer and leaves the buffer alone', function () {
    const whole = new Uint32Array([1, 2, 3, 4]);
    const view = whole.subarray(1, 3);
    const out = resized(view, 3);
    assert.deepEqual([...out], [2, 3, 0]);
    assert.deepEqual([...whole], [1, 2, 3, 4]);
    freeArray(view);
    assert.deepEqual([...whole], [1, 2, 3, 4]);
  });

  it('grows a scan by a block of rows and a new table of slots, the old table freed at once (rows copied as arrays doubled held both, ~7.4 MB)', function () {
    const entries = new ScanEntries();
    // A table of 131,072 slots takes 98,304 rows (three quarters): the next one grows it.
    fill(entries, 0, 98_304);
    const before = buffers();
    fill(entries, 98_304, 98_305);
    const added = buffers() - before;
    // A new block (256 rows of 49 bytes) and a table of 262,144 slots of 4 bytes, less the old
    // table's 131,072: 536,832 bytes. Rows in arrays that doubled were copied at each growth.
    assert.ok(added >= 536_832 && added < 560_000, `${added} bytes of ArrayBuffers added by one growth`);
    assert.equal(entries.get('usr/share/file-number-98304.txt')?.size, 98_304);
    assert.equal(entries.get('usr/share/file-number-7.txt')?.ino, 8n);
  });

  it("gives a released scan's rows back at once, and refuses to be read after", function () {
    const entries = new ScanEntries();
    fill(entries, 0, 40_000);
    const before = buffers();
    entries.release();
    const freed = before - buffers();
    // 157 blocks of 256 rows of 49 bytes and 65,536 slots of 4 (at most three quarters full).
    assert.ok(freed >= 157 * 256 * 49 + 65_536 * 4, `${freed} bytes freed`);
    assert.throws(() => entries.get('usr/share/file-number-1.txt'), /released/);
    assert.throws(() => [...entries.keys()], /released/);
  });

  it('collects garbage on purpose (collectNow): an unreachable ArrayBuffer is freed by it', function () {
    for (let i = 0; i < 3; i++) collectNow();
    let whileHeld = 0;
    (() => {
      // Promoted before it dies, as a scan's rows are: only a full collection frees it.
      const held = [new Float64Array(1 << 20)];
      collectNow();
      whileHeld = buffers();
      assert.equal(held[0]!.length, 1 << 20);
    })();
    collectNow();
    const freed = whileHeld - buffers();
    assert.ok(freed >= 7 << 20, `${freed} bytes freed of the 8 MiB let go`);
  });
});
