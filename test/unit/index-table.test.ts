import assert from 'node:assert/strict';
import { IndexTable, type IndexKeyParts } from '../../src/deploy/apply/index-table.ts';

const digestOf = (i: number) => `sha256:${i.toString(16).padStart(64, '0')}`;
const parts = (i: number): IndexKeyParts => ({
  ino: BigInt(i) * 7919n,
  size: i % 97,
  mtimeNs: -5n + BigInt(i),
  ctimeNs: 1_733_400_000_000_000_000n,
});

describe('IndexTable (the content index as rows)', function () {
  it('finds every row again past its first sizes, in the order rows were added, keys spelled as saved', function () {
    const t = new IndexTable();
    const n = 3000;
    for (let i = 0; i < n; i++) assert.equal(t.set(parts(i), digestOf(i)), i);
    assert.equal(t.size, n);
    for (let i = 0; i < n; i++) {
      const r = t.find(parts(i));
      assert.equal(r, i);
      assert.equal(t.digestAt(r), digestOf(i));
    }
    assert.equal(t.keyAt(6), '47514:6:1:1733400000000000000');
    assert.equal(t.keyAt(0), '0:0:-5:1733400000000000000');
    assert.equal(t.find({ ...parts(5), ctimeNs: 1n }), -1, 'every part is compared');
    // Setting again updates the digest in place.
    assert.equal(t.set(parts(5), digestOf(9)), 5);
    assert.equal(t.digestAt(5), digestOf(9));
    assert.equal(t.size, n);
  });

  it("tells a row's digest from any other text without making a string, and keeps keys apart by every 32-bit half", function () {
    const t = new IndexTable();
    const d = `sha256:${'0123456789abcdef'.repeat(4)}`;
    const r = t.set(parts(1), d);
    assert.equal(t.digestIs(r, d), true);
    for (const other of [
      d.slice(0, -1) + '0', // last hex digit
      'sha256:1' + d.slice(8), // first hex digit
      d.toUpperCase().replace('SHA256', 'sha256'), // hex the TOC never has
      d.replace('sha256:', 'sha512:'),
      d + '0',
      d.slice(0, -2),
    ])
      assert.equal(t.digestIs(r, other), false, other);
    // Sizes and inodes equal in their low 32 bits are different keys.
    const low: IndexKeyParts = { ino: 5n, size: 5, mtimeNs: 0n, ctimeNs: 0n };
    const a = t.set(low, digestOf(10));
    const b = t.set({ ...low, size: 5 + 2 ** 32 }, digestOf(11));
    const c = t.set({ ...low, ino: 5n + (1n << 32n) }, digestOf(12));
    assert.deepEqual(new Set([a, b, c]).size, 3);
    assert.equal(t.digestAt(t.find({ ...low, size: 5 + 2 ** 32 })), digestOf(11));
    assert.equal(t.digestAt(t.find({ ...low, ino: 5n + (1n << 32n) })), digestOf(12));
    assert.equal(t.keyAt(b), `5:${5 + 2 ** 32}:0:0`);
  });

  it('keeps the whole range of each part exactly, and records nothing for parts that cannot be a row', function () {
    const t = new IndexTable();
    const top: IndexKeyParts = {
      ino: (1n << 64n) - 1n,
      size: Number.MAX_SAFE_INTEGER,
      mtimeNs: -(1n << 63n),
      ctimeNs: (1n << 63n) - 1n,
    };
    const r = t.set(top, digestOf(1));
    assert.equal(t.keyAt(r), `${(1n << 64n) - 1n}:${Number.MAX_SAFE_INTEGER}:${-(1n << 63n)}:${(1n << 63n) - 1n}`);
    assert.equal(t.find(top), r);
    for (const bad of [
      { ...top, ino: 1n << 64n },
      { ...top, ino: -1n },
      { ...top, size: 2 ** 53 },
      { ...top, size: -1 },
      { ...top, mtimeNs: 1n << 63n },
      { ...top, ctimeNs: -(1n << 63n) - 1n },
    ]) {
      assert.equal(t.set(bad, digestOf(2)), -1);
      assert.equal(t.find(bad), -1);
    }
    assert.equal(t.size, 1);
  });

  it('retains the kept rows in their order, renumbered, with their digests and hashed-here marks', function () {
    const t = new IndexTable();
    for (let i = 0; i < 2000; i++) t.set(parts(i), digestOf(i), i % 5 === 0);
    // A later set of a row read here does not unmark it.
    t.set(parts(10), digestOf(10));
    const keep = new Set<number>();
    for (let i = 0; i < 2000; i++) if (i % 3 === 1) keep.add(i);
    t.retain(keep);
    assert.equal(t.size, keep.size);
    let r = 0;
    for (let i = 0; i < 2000; i++) {
      if (i % 3 !== 1) {
        assert.equal(t.find(parts(i)), -1);
        continue;
      }
      assert.equal(t.find(parts(i)), r);
      assert.equal(t.digestAt(r), digestOf(i));
      assert.equal(t.hashedHereAt(r), i % 5 === 0);
      r++;
    }
    assert.equal(t.hashedHereAt(t.find(parts(10))), true);
    // And it grows on after, also once trimmed to its rows.
    assert.equal(t.set(parts(5000), digestOf(5000)), keep.size);
    assert.equal(t.find(parts(5000)), keep.size);
    t.trim();
    assert.equal(t.digestAt(t.find(parts(5000))), digestOf(5000));
    assert.equal(t.digestAt(t.find(parts(1))), digestOf(1));
    assert.equal(t.set(parts(5001), digestOf(5001)), keep.size + 1);
    assert.equal(t.find(parts(5001)), keep.size + 1);
  });
});
