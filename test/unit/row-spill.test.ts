import assert from 'node:assert/strict';
import { ftruncateSync, mkdtempSync, openSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LayerEntries, tocToEntries } from '../../src/deploy/apply/toc.ts';
import { RowSpill } from '../../src/deploy/apply/row-spill.ts';
import { TocFile } from '../../src/deploy/apply/toc-files.ts';
import type { TreeEntry } from '../../src/deploy/apply/types.ts';
import type { TocEntry } from '../../src/layer/toc.ts';

const digest = (i: number) => `sha256:${i.toString(16).padStart(64, '0')}`;

/** `n` files with fields that differ from row to row (10 blocks of 256 rows at 2,560). */
function tocOf(n: number): TocEntry[] {
  const toc: TocEntry[] = [];
  for (let i = 0; i < n; i++)
    toc.push({
      type: 'reg',
      name: `usr/f${i}`,
      mode: i & 0o7777,
      uid: i % 7 === 0 ? 2 ** 33 + i : i,
      gid: i + 1,
      size: i * 3,
      modtime: `2020-01-01T00:00:${String(i % 60).padStart(2, '0')}.${String(i).padStart(9, '0').slice(-9)}Z`,
      digest: digest(i),
      offset: i * 100,
      endOffset: i * 100 + 50,
    });
  return toc;
}

function fields(e: TreeEntry): unknown[] {
  return [e.path, e.mode, e.uid, e.gid, e.size, e.mtimeNs, e.digest, e.source];
}

function spilled(toc: TocEntry[], spill: RowSpill): TreeEntry[] {
  const out = new LayerEntries(2, undefined, spill);
  for (const t of toc) out.add(t);
  return out.finish();
}

/** A random order of 0..n-1 (fixed seed). */
function shuffled(n: number): number[] {
  const order = [...Array(n).keys()];
  let s = 12345;
  for (let i = n - 1; i > 0; i--) {
    s = (s * 1103515245 + 12345) >>> 0;
    const j = s % (i + 1);
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  return order;
}

describe('TOC rows set aside on disk (row-spill.ts)', function () {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'tiu-spill-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('keeps at most its window of blocks in memory and gives every row back exactly', function () {
    const toc = tocOf(2560);
    const want = tocToEntries({ version: 1, entries: toc }, 2).map(fields);
    const spill = RowSpill.open(dir, 3)!;
    try {
      const got = spilled(toc, spill);
      assert.ok(got.every((e) => e instanceof TocFile));
      assert.equal(spill.inMemory, 3);
      // In order (as the planner reads), then in a random order (hardlink targets, a size's candidates).
      for (let i = 0; i < got.length; i++) assert.deepEqual(fields(got[i]!), want[i]);
      for (const i of shuffled(got.length)) {
        assert.deepEqual(fields(got[i]!), want[i]);
        assert.ok(spill.inMemory <= 3, `${spill.inMemory} blocks in memory`);
      }
    } finally {
      spill.close();
    }
    // Unlinked as it was made: nothing of it in the directory, even before it is closed.
    assert.deepEqual(readdirSync(dir), []);
  });

  it('writes a block again when a row changed after it left memory', function () {
    const spill = RowSpill.open(dir, 1)!;
    try {
      const got = spilled(tocOf(1024), spill) as TocFile[];
      const first = got[0]!;
      first.widenTo(999_999); // its block is read back, changed, and must not be dropped unwritten
      for (const e of got.slice(300)) void e.size; // the window moves on: block 0 leaves memory again
      assert.deepEqual(first.source, { layer: 2, offset: 0, endOffset: 999_999 });
      assert.equal(got[1]!.source.endOffset, 150);
    } finally {
      spill.close();
    }
  });

  it('keeps the rows in memory when the disk takes no more (ENOSPC from /dev/full)', function () {
    const spill = new RowSpill(openSync('/dev/full', 'r+'), 2);
    try {
      const toc = tocOf(2560);
      const want = tocToEntries({ version: 1, entries: toc }, 2).map(fields);
      const got = spilled(toc, spill);
      assert.equal(spill.inMemory, 10, 'every block stayed');
      for (const i of shuffled(got.length)) assert.deepEqual(fields(got[i]!), want[i]);
    } finally {
      spill.close();
    }
  });

  it('says SPILL_LOST when a block cannot be read back', function () {
    const path = join(dir, 'rows');
    const fd = openSync(path, 'w+');
    const spill = new RowSpill(fd, 1);
    try {
      const got = spilled(tocOf(1024), spill);
      ftruncateSync(fd, 100);
      assert.throws(
        () => got[0]!.size,
        (e: Error & { code?: string }) =>
          e.code === 'SPILL_LOST' && /could not be read back: the file ended/.test(e.message),
      );
    } finally {
      spill.close();
    }
  });

  it('is not made where it cannot be (a missing directory): the rows then stay in memory', function () {
    assert.equal(RowSpill.open(join(dir, 'missing')), undefined);
  });

  it('gives its file back when closed', function () {
    const open = () => readdirSync('/proc/self/fd').length;
    const before = open();
    const spills = Array.from({ length: 20 }, () => RowSpill.open(dir)!);
    assert.equal(open(), before + 20);
    for (const s of spills) s.close();
    assert.equal(open(), before);
  });
});
