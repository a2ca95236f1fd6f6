/**
 * The new tree's table of paths (apply/path-table.ts) against a Map doing the same: the planner
 * and flattenLayers rely on a Map's order and on forEach seeing what is added while it runs.
 */
import assert from 'node:assert/strict';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { PathTable } from '../../src/deploy/apply/path-table.ts';
import type { TreeEntry } from '../../src/deploy/apply/types.ts';
import { flattenLayers } from '../../src/deploy/apply/layers.ts';
import { NO_XATTRS } from '../../src/layer/entry.ts';

function entry(path: string, size = 0): TreeEntry {
  return { path, type: 'reg', mode: 0o644, uid: 0, gid: 0, size, mtimeNs: 0n, xattrs: NO_XATTRS };
}

/** A small deterministic generator (the same sequence each run). */
function numbers(seed: number): () => number {
  let s = seed;
  return () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0);
}

function sameAsMap(t: PathTable, m: Map<string, TreeEntry>, at: string): void {
  assert.equal(t.size, m.size, at);
  assert.deepEqual([...t.keys()], [...m.keys()], at);
  assert.deepEqual([...t.values()], [...m.values()], at);
  assert.deepEqual([...t], [...m], at);
}

describe('path table of the new tree', function () {
  it('does what a Map does through 20,000 random sets, replacements and deletes (order included), across its growth', function () {
    const next = numbers(7);
    const t = new PathTable();
    const m = new Map<string, TreeEntry>();
    for (let i = 0; i < 20_000; i++) {
      const p = `usr/lib/d${next() % 50}/f${next() % 800}`;
      const op = next() % 10;
      if (op < 2) assert.equal(t.delete(p), m.delete(p), `delete ${p}`);
      else {
        const e = entry(p, i);
        t.set(p, e);
        m.set(p, e);
      }
      assert.equal(t.get(p), m.get(p), p);
      assert.equal(t.has(p), m.has(p), p);
      if (i % 2_500 === 0) sameAsMap(t, m, `after ${i}`);
    }
    sameAsMap(t, m, 'at the end');
    // A path deleted and set again goes to the end, as in a Map; one replaced in place keeps its place.
    const [first] = t.keys();
    t.delete(first!);
    m.delete(first!);
    t.set(first!, entry(first!));
    m.set(first!, t.get(first!)!);
    const [second] = t.keys();
    t.set(second!, entry(second!, 1));
    m.set(second!, t.get(second!)!);
    sameAsMap(t, m, 'after a re-set');
    assert.equal([...t.keys()].at(-1), first);
    assert.equal([...t.keys()][0], second);
  });

  it('forEach visits what is added while it runs, also when the table grows meanwhile (addImplicitParents)', function () {
    const t = new PathTable();
    t.set('a/b/c/d', entry('a/b/c/d'));
    t.delete('a/b/c/d');
    t.set('x', entry('x'));
    const seen: string[] = [];
    t.forEach((_, p) => {
      seen.push(p);
      // A chain of 3,000 new paths, each added by the visit of the one before: the table grows several times.
      const n = p === 'x' ? 0 : Number(p.slice(1)) + 1;
      if (n < 3_000) t.set(`p${n}`, entry(`p${n}`));
    });
    assert.equal(seen.length, 3_001);
    assert.deepEqual(seen.slice(0, 3), ['x', 'p0', 'p1']);
    assert.equal(t.get('p2999')!.path, 'p2999');
    assert.equal(t.has('a/b/c/d'), false);
  });

  it('refuses an entry set at a path other than its own (the table keys each entry by its path)', function () {
    const t = new PathTable();
    assert.throws(() => t.set('usr/a', entry('usr/b')), /the entry of "usr\/b" set at "usr\/a"/);
    assert.equal(t.size, 0);
  });

  it('flattens layers into it as into a Map before: whiteouts, opaque directories, a file over a directory', function () {
    const dir = (path: string): TreeEntry => ({ ...entry(path), type: 'dir', mode: 0o755 });
    const tree = flattenLayers([
      [dir('usr'), dir('usr/a'), entry('usr/a/1'), entry('usr/a/2'), dir('usr/b'), entry('usr/b/1'), entry('usr/c')],
      [entry('usr/.wh.c'), dir('usr/a'), entry('usr/a/.wh..wh..opq'), entry('usr/a/3'), entry('usr/b', 9)],
      [entry('usr/c', 5)],
    ]);
    assert.ok(tree instanceof PathTable);
    assert.deepEqual(
      [...tree].map(([p, e]) => [p, e.type, e.size]),
      [
        ['usr', 'dir', 0],
        ['usr/a', 'dir', 0],
        ['usr/b', 'reg', 9],
        ['usr/a/3', 'reg', 0],
        ['usr/c', 'reg', 5],
      ],
    );
  });

  it('holds 20,000 paths in under 24 bytes each (~13-16 here; a Map of them, ~46 in a process of its own)', function () {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const n = 20_000;
    const entries = Array.from({ length: n }, (_, i) => entry(`usr/share/file-number-${i}`));
    const held = () => {
      for (let i = 0; i < 3; i++) gc();
      return process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers;
    };
    // One measure in a frame of its own: nothing of it is alive when the next begins. The made
    // table is read after it is measured (its size), so that it is alive while it is.
    const once = (make: () => { size: number }): number => {
      const before = held();
      const kept = make();
      const perPath = (held() - before) / n;
      assert.equal(kept.size, n);
      return perPath;
    };
    // The least of three: the first also holds what making the first one compiled and cached.
    const perPath = (make: () => { size: number }): number => Math.min(once(make), once(make), once(make));
    const asTable = perPath(() => {
      const t = new PathTable(n);
      for (const e of entries) t.set(e.path, e);
      return t;
    });
    assert.ok(asTable < 24, `${asTable.toFixed(1)} bytes a path`);
  });
});
