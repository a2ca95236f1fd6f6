import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  fstatSync,
  ftruncateSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LayerEntries, tocToEntries } from '../../src/deploy/apply/toc.ts';
import { RowSpill } from '../../src/deploy/apply/row-spill.ts';
import { TocFile } from '../../src/deploy/apply/toc-files.ts';
import type { ExistingEntry, TreeEntry } from '../../src/deploy/apply/types.ts';
import { ScanEntries } from '../../src/deploy/apply/scan-entries.ts';
import { ContentIndex, scanTree } from '../../src/deploy/apply/scan.ts';
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
    const spill = RowSpill.open(dir, undefined, 3)!;
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
    const spill = RowSpill.open(dir, undefined, 1)!;
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

  it("gives a scan's rows back exactly from the spill, a few blocks in memory", function () {
    const row = (i: number): ExistingEntry => ({
      path: `usr/lib/f${i}`,
      type: i % 5 === 0 ? 'dir' : 'reg',
      mode: i & 0o7777,
      uid: i,
      gid: i % 3 === 0 ? 2 ** 32 - 1 : i + 1,
      size: i * 7,
      mtimeNs: BigInt(i) * 1_000_000_007n - 5n,
      ctimeNs: -BigInt(i),
      ino: 2n ** 64n - 1n - BigInt(i % 1000), // inodes shared by rows 1000 apart: hardlinks
      dev: 1n,
      nlink: i % 1000 === i ? 1 : 3,
      rdev: 0n,
      xattrs: i % 11 === 0 ? { 'user.n': Buffer.from([i & 255]) } : {},
    });
    const n = 3000;
    const plain = new ScanEntries();
    const spill = RowSpill.open(dir, undefined, 2)!;
    try {
      const spilt = new ScanEntries(spill);
      for (let i = 0; i < n; i++) {
        plain.set(row(i));
        spilt.set(row(i));
      }
      spilt.finish();
      // A row set again after its block left memory keeps the new values.
      plain.set({ ...row(3), size: 12345 });
      spilt.set({ ...row(3), size: 12345 });
      for (const i of shuffled(n)) {
        const p = `usr/lib/f${i}`;
        assert.deepEqual(spilt.get(p), plain.get(p));
        assert.deepEqual(spilt.peek(p), plain.peek(p));
        assert.equal(spilt.keyIs(i, plain.keyPartsAt(i)), true);
        assert.ok(spill.inMemory <= 2, `${spill.inMemory} blocks in memory`);
      }
      const files = (s: ScanEntries) => {
        const out: unknown[] = [];
        s.forEachFile((r, nlink, ino) => out.push([r, nlink, ino, s.sizeAt(r)]));
        return out;
      };
      assert.deepEqual(files(spilt), files(plain));
      const [a, b] = [spilt.inodeLookup(), plain.inodeLookup()];
      for (const [ino, rows] of [
        [2n ** 64n - 2n, [1, 1001, 2001]],
        [2n ** 64n - 7n, [6, 1006, 2006]],
        [5n, []],
      ] as const) {
        const x: number[] = [];
        const y: number[] = [];
        a(ino, (r) => x.push(r));
        b(ino, (r) => y.push(r));
        assert.deepEqual([x, y], [rows, rows]);
      }
      spilt.release();
      assert.throws(() => spilt.get('usr/lib/f1'), /released/);
    } finally {
      spill.close();
    }
  });

  it('keeps the digests of a content index loaded beside a spilled scan in the spill too, also those hashed later', async function () {
    const tree = join(dir, 'tree');
    mkdirSync(tree);
    const n = 1600;
    const sha = (i: number) => `sha256:${createHash('sha256').update(`file ${i}`).digest('hex')}`;
    for (let i = 0; i < n; i++) writeFileSync(join(tree, `f${i}`), `file ${i}`);
    const spill = RowSpill.open(dir, undefined, 2)!;
    try {
      const old = await scanTree(tree, { noXattrs: true, spill });
      const scan = old.entries as ScanEntries;
      // An index of the first half, saved as planning saves it; the rest is hashed when asked.
      const saving = new ContentIndex(tree);
      for (let i = 0; i < n / 2; i++) saving.remember(scan.get(`f${i}`)!, sha(i));
      await saving.save(join(dir, 'index.json'));
      // The first file's key once more at the end, with another digest: the last one met is taken,
      // by then in a block that has left memory (it must be written again).
      const text = readFileSync(join(dir, 'index.json'), 'latin1');
      const first = /"([0-9:]+)":"sha256:[0-9a-f]{64}"/.exec(text)!;
      writeFileSync(join(dir, 'index.json'), text.replace(/\}\}$/, `,"${first[1]}":"${sha(-1)}"}}`), 'latin1');
      const index = await ContentIndex.load(tree, join(dir, 'index.json'), scan);
      assert.equal(index.size, n / 2);
      assert.equal(await index.digestOf(scan.get('f0')!), sha(-1));
      for (let i = n / 2; i < n; i++) assert.equal(await index.digestOf(scan.get(`f${i}`)!), sha(i));
      assert.equal(index.hashedFiles, n / 2);
      // Asked again, in any order, after their blocks left memory: the same digests, none hashed again.
      for (const i of shuffled(n)) {
        assert.equal(await index.digestOf(scan.get(`f${i}`)!), sha(i === 0 ? -1 : i), `f${i}`);
        assert.ok(spill.inMemory <= 2, `${spill.inMemory} blocks in memory`);
      }
      assert.equal(index.hashedFiles, n / 2);
    } finally {
      spill.close();
    }
  });

  it('is not made where it cannot be (a missing directory, no room above the reserve): the rows then stay in memory', function () {
    assert.equal(RowSpill.open(join(dir, 'missing')), undefined);
    assert.equal(RowSpill.open(dir, { bytes: 2 ** 52 }), undefined);
    assert.deepEqual(readdirSync(dir), []);
  });

  it('takes no more of the disk than it was given: past that, blocks stay in memory', function () {
    const path = join(dir, 'rows');
    const fd = openSync(path, 'w+');
    // Room for three blocks of TOC rows (19,968 bytes each).
    const spill = new RowSpill(fd, 2, 3 * 19_968);
    try {
      const toc = tocOf(2560);
      const want = tocToEntries({ version: 1, entries: toc }, 2).map(fields);
      const got = spilled(toc, spill);
      assert.equal(fstatSync(fd).size, 3 * 19_968);
      assert.equal(spill.inMemory, 7, 'the blocks that did not fit stayed');
      for (const i of shuffled(got.length)) assert.deepEqual(fields(got[i]!), want[i]);
    } finally {
      spill.close();
    }
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
