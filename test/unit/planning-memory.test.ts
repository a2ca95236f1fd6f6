/**
 * Issue 19: the device's planning data stays small per file and the TOC is read entry by entry.
 * Guards without timing or RSS: the reader hands entries out before the document ends (so it
 * never builds the array), it reads JSON as JSON.parse does, and the compact forms (shared empty
 * xattrs, path-not-list for unique sizes, no inode groups of one, digests as raw bytes) hold.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import {
  flattenLayers,
  LayerEntries,
  planApply,
  type ExistingEntry,
  type TreeEntry,
} from '../../src/deploy/apply/index.ts';
import { PathTable } from '../../src/deploy/apply/path-table.ts';
import { TocFile } from '../../src/deploy/apply/toc-files.ts';
import { NO_XATTRS } from '../../src/layer/entry.ts';
import { ContentIndex, indexOldTree, pathsOfSize, scanTree, sharePathsWith } from '../../src/deploy/apply/scan.ts';
import { ScanEntries } from '../../src/deploy/apply/scan-entries.ts';
import { MTIME_ONLY, type Action, type OldTree, type Plan } from '../../src/deploy/apply/types.ts';
import { PlanActions } from '../../src/deploy/apply/plan-actions.ts';
import { existingFile } from '../helpers/existing-entry.ts';
import { isTiuError } from '../../src/errors.ts';
import { zstdCompressSync } from 'node:zlib';
import { forEachCompressedTocEntry, forEachTocEntry, parseToc, type TocEntry } from '../../src/layer/toc.ts';
import { encodeTocJson, parseTocJson, readTocJson, TocJsonStream } from '../../src/layer/toc-json.ts';

const digestOf = (i: number) => `sha256:${i.toString(16).padStart(64, '0')}`;

function tocEntry(i: number): TocEntry {
  return {
    type: 'reg',
    name: `usr/share/doc/package-${i % 500}/file-number-${i}.txt`,
    mode: 0o644,
    size: 100 + i,
    modtime: `2024-01-0${1 + (i % 3)}T00:00:00Z`,
    digest: digestOf(i),
    offset: 1000 * i,
    endOffset: 1000 * i + 500,
  };
}

function existing(path: string, size: number, ino: bigint, nlink = 1): ExistingEntry {
  return existingFile(path, size, ino, { nlink });
}

/** A TOC of n entries as JSON (made in a function of its own: nothing of the source objects stays reachable). */
function tocJsonOf(n: number): Buffer {
  return encodeTocJson({ version: 1, entries: Array.from({ length: n }, (_, i) => tocEntry(i)) });
}

/**
 * What a content index is given for n files (made in a function of its own: its temporaries
 * would stay reachable from the test's frame, and be freed during the measurement).
 */
function indexInputs(n: number): { files: Parameters<ContentIndex['remember']>[0][]; digests: string[] } {
  const files = Array.from({ length: n }, (_, i) => ({
    ino: BigInt(1_000_000 + i),
    size: 1000 + i,
    mtimeNs: 1_733_400_000_123_456_789n + BigInt(i),
    ctimeNs: 1_733_400_000_923_456_789n + BigInt(i),
  }));
  // Flat strings (through JSON): the index would flatten concatenated ones, freeing their parts meanwhile.
  const digests = JSON.parse(JSON.stringify(Array.from({ length: n }, (_, i) => digestOf(i)))) as string[];
  return { files, digests };
}

/**
 * A tree of n entries (three directories, then files) and its scan, naming every path with the
 * same string (sharing paths frees nothing here), every file unchanged: a plan that keeps all.
 */
function keptTree(n: number, treeMtimeNs = 1n): { tree: PathTable; entries: ScanEntries } {
  const tree = new PathTable(n);
  const entries = new ScanEntries();
  const dirs = ['', 'usr', 'usr/share'];
  for (let i = 0; i < n; i++) {
    const dir = i < dirs.length;
    const path = dir ? dirs[i]! : `usr/share/file-number-${i}.txt`;
    const size = dir ? 0 : i;
    const base = { path, mode: dir ? 0o755 : 0o644, uid: 0, gid: 0, size, mtimeNs: 1n, xattrs: NO_XATTRS };
    const wanted = { ...base, mtimeNs: treeMtimeNs };
    tree.set(path, dir ? { ...wanted, type: 'dir' } : { ...wanted, type: 'reg', digest: digestOf(i) });
    entries.set({ ...base, type: dir ? 'dir' : 'reg', ctimeNs: 2n, ino: BigInt(i + 1), dev: 1n, nlink: 1, rdev: 0n });
  }
  entries.finish();
  return { tree, entries };
}

/**
 * keptTree's new tree as a TOC would give it (the directories, then regular files read into
 * rows: toc-files.ts), flattened into the table the device plans with (made in a function of its
 * own: nothing of the layer's list stays reachable).
 */
function tocTree(n: number): PathTable {
  return tocTreeWatched(n).table;
}

/** tocTree, and a WeakRef to each TocFile the layer's reading made (to see whether anything keeps them). */
function tocTreeWatched(n: number): { table: PathTable; files: WeakRef<TreeEntry>[] } {
  const layer = new LayerEntries(0);
  const modtime = '1970-01-01T00:00:00.000000001Z'; // 1 ns: keptTree's scan has the same mtime
  for (let i = 1; i < n; i++) {
    const dir = i < 3;
    const name = dir ? ['', 'usr', 'usr/share'][i]! : `usr/share/file-number-${i}.txt`;
    layer.add(
      dir
        ? { type: 'dir', name, mode: 0o755, modtime }
        : {
            type: 'reg',
            name,
            mode: 0o644,
            size: i,
            modtime,
            digest: digestOf(i),
            offset: 10 * i,
            endOffset: 10 * i + 7,
          },
    );
  }
  const entries = layer.finish();
  const files = entries.filter((e) => e instanceof TocFile).map((e) => new WeakRef(e));
  return { table: flattenLayers([entries]), files };
}

/**
 * Bytes a plan holds per entry (bytesHeldPerEntry) for keptTree(n, treeMtimeNs) against its own
 * scan; `check` looks at the plan and the tree.
 */
function keptPlanBytes(n: number, treeMtimeNs: bigint, check: (plan: Plan, tree: PathTable) => void): Promise<number> {
  const { tree, entries } = keptTree(n, treeMtimeNs);
  const old = indexOldTree('/x', entries);
  const hasher = { digestOf: (x: ExistingEntry) => Promise.resolve(digestOf(x.size)) };
  return bytesHeldPerEntry(
    n,
    () => planApply(tree, old, hasher),
    (plan) => check(plan, tree),
  );
}

/** V8's gc, reachable from a test without a node flag. */
function collector(): () => void {
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
}

/**
 * Bytes a plan holds per entry after forced collections, each plan made in a frame of its own
 * (nothing of it outlives the call); `check` looks at it while it is still held. A first plan
 * frees what the setup left (its figure is of no use), then the least of three.
 */
async function bytesHeldPerEntry(
  n: number,
  makePlan: () => Promise<Plan>,
  check: (plan: Plan) => void,
): Promise<number> {
  const held = () => process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers;
  const gc = collector();
  const once = async (): Promise<number> => {
    for (let i = 0; i < 3; i++) gc();
    const before = held();
    const plan = await makePlan();
    for (let i = 0; i < 3; i++) gc();
    const perEntry = (held() - before) / n;
    check(plan);
    return perEntry;
  };
  await once();
  return Math.min(await once(), await once(), await once());
}

describe('planning memory (issue 19)', function () {
  it('hands each TOC entry out as it is read, before the end of the document', function () {
    const entries = [tocEntry(1), tocEntry(2), tocEntry(3)];
    const good = encodeTocJson({ version: 1, entries });
    // The same document cut off before its end: the entries come out, then the refusal.
    const cut = good.subarray(0, good.length - 2);
    const seen: string[] = [];
    assert.throws(
      () => forEachTocEntry(cut, (e) => seen.push(e.name)),
      (e) => isTiuError(e, 'TOC_INVALID'),
    );
    assert.deepEqual(
      seen,
      entries.map((e) => e.name),
    );
    const rest = forEachTocEntry(good, () => undefined);
    assert.deepEqual(rest, { version: 1 });
  });

  it('reads a TOC cut into pieces anywhere (escapes, numbers, literals split) as the whole', async function () {
    // A name with \u escapes (one a surrogate pair), an escaped quote and backslash, in JSON text.
    const oddName = '"a/\\u00e9\\ud83d\\ude42\\"\\\\x"';
    const doc = Buffer.from(
      '{ "version" : 1, "tarSplitDigest": "sha256:00", "entries" : [ ' +
        JSON.stringify({ ...tocEntry(1), xattrs: { 'user.k': 'AA==' } }).replace(
          /"name":"[^"]*"/,
          `"name":${oddName}`,
        ) +
        ' , ' +
        JSON.stringify({ ...tocEntry(22), size: 1234567890 }) +
        ',{"type":"dir","name":"x/","uid":0}\n ], "other": [true, false, null, -1.5e3], "n": 12345 }  ',
    );
    const whole: unknown[] = [];
    const expected = readTocJson(doc, (e) => whole.push(e));
    assert.deepEqual(whole, (parseTocJson(doc) as { entries: unknown[] }).entries);
    assert.equal((whole[0] as TocEntry).name, 'a/\xc3\xa9\xf0\x9f\x99\x82"\\x');
    for (const size of [1, 2, 3, 7, 64]) {
      const got: unknown[] = [];
      const s = new TocJsonStream((e) => got.push(e));
      for (let i = 0; i < doc.length; i += size) s.push(doc.subarray(i, i + size));
      assert.deepEqual(s.end(), expected, `pieces of ${size}`);
      assert.deepEqual(got, whole, `pieces of ${size}`);
    }
    // From the compressed TOC, decompressed piece by piece: the same entries, and its length is checked.
    const json = tocJsonOf(5000);
    const fromZstd: string[] = [];
    await forEachCompressedTocEntry(zstdCompressSync(json), json.length, (e) => fromZstd.push(e.name));
    assert.deepEqual(
      fromZstd,
      parseToc(json).entries.map((e) => e.name),
    );
    await assert.rejects(
      forEachCompressedTocEntry(zstdCompressSync(json), json.length - 1, () => undefined),
      (e) => isTiuError(e, 'TOC_INVALID'),
    );
    await assert.rejects(
      forEachCompressedTocEntry(Buffer.from('not zstd'), 8, () => undefined),
      (e) => isTiuError(e, 'TOC_INVALID'),
    );
  });

  it('reads JSON as JSON.parse does, and refuses what it refuses', function () {
    const docs = [
      '{"a":[1,-2.5,3e2,0.125E-1,true,false,null,"x\\ty"],"b":{},"c":[],"d":{"e":{"f":[[]]}}}',
      ' [ 1 , 2 ]\n',
      '"\\"\\\\\\/\\b\\f\\n\\r\\t"',
      '{"__proto__":{"x":1},"k":2,"k":3}',
      '-0',
    ];
    for (const d of docs) assert.deepEqual(parseTocJson(Buffer.from(d)), JSON.parse(d), d);
    const bad = ['{"a":1,}', '[1,]', '01', '{a:1}', '"\u0001"', 'tru', '1 2', '{"a" 1}', '', '[1', '"\\x"', '+1', '.5'];
    for (const d of bad) {
      assert.throws(() => JSON.parse(d), SyntaxError, `JSON.parse accepts ${d}`);
      assert.throws(() => parseTocJson(Buffer.from(d)), SyntaxError, d);
    }
  });

  it('checks the document around the entries: version, an entries array, one of them', function () {
    const bad = (doc: string) =>
      assert.throws(
        () => forEachTocEntry(Buffer.from(doc), () => undefined),
        (e) => isTiuError(e, 'TOC_INVALID'),
        doc,
      );
    bad('{"version":2,"entries":[]}');
    bad('{"version":1}');
    bad('{"version":1,"entries":{}}');
    bad('{"version":1,"entries":[],"entries":[]}');
    bad('[]');
    bad('{"version":1,"entries":[{"type":"reg"}]}');
    // The version may come after the entries (JSON members have no order).
    assert.equal(parseToc(Buffer.from('{"entries":[{"type":"dir","name":"a/"}],"version":1}')).entries.length, 1);
    assert.deepEqual(
      readTocJson(Buffer.from('{"entries":[]}'), () => undefined),
      { rest: {}, entries: 0 },
    );
  });

  it('keeps a layer of 20,000 TOC entries in under 260 bytes each with their rows (objects with digest strings made 350, the parsed TOC 620), entries without xattrs sharing one object', function () {
    const n = 20_000;
    const json = tocJsonOf(n);
    const gc = collector();
    // The files' rows are typed arrays, outside V8's heap: counted too.
    const held = () => process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers;
    gc();
    const before = held();
    const layer = new LayerEntries(0);
    forEachTocEntry(json, (e) => layer.add(e));
    gc();
    const perEntry = (held() - before) / n;
    assert.equal(layer.entries.length, n);
    assert.ok(perEntry < 260, `${perEntry.toFixed(0)} bytes per entry`);
    const [a, b] = layer.entries;
    assert.equal(a!.xattrs, b!.xattrs);
    assert.ok(Object.isFrozen(a!.xattrs));
    // Files of one modtime share its BigInt (a BigInt is a heap object of 24 bytes).
    assert.equal(layer.entries[0]!.mtimeNs, layer.entries[3]!.mtimeNs);
    assert.equal(a!.digest, digestOf(0));
    assert.deepEqual(b!.source, { layer: 0, offset: 1000, endOffset: 1500 });
  });

  it("scans a tree of 20,000 files with the plan's strings of their paths: the read copies die young (~80 bytes a file were held twice)", async function () {
    this.timeout(60_000);
    const n = 20_000;
    const dir = await mkdtemp(join(tmpdir(), 'tiu-scan-paths-'));
    try {
      const name = (i: number) => `usr/share/doc/package-${i % 60}/file-number-${i}-with-a-longer-name.txt`;
      for (let d = 0; d < 60; d++) await mkdir(join(dir, `usr/share/doc/package-${d}`), { recursive: true });
      for (let i = 0; i < n; i++) writeFileSync(join(dir, name(i)), '');
      // The plan's tree as a TOC reader makes it: strings of its own, not the scan's.
      const paths = JSON.parse(JSON.stringify(Array.from({ length: n }, (_, i) => name(i)))) as string[];
      const tree = new Map(paths.map((p) => [p, { path: p }]));
      const gc = collector();
      const held = () => process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers;
      // Every scan kept to the end: one let go meanwhile would be freed inside another's measurement.
      const scans: OldTree[] = [];
      const heldByScan = async (ownPath?: (p: string) => string | undefined): Promise<number> => {
        for (let i = 0; i < 3; i++) gc();
        const before = held();
        scans.push(await scanTree(dir, { noXattrs: true, ...(ownPath ? { ownPath } : {}) }));
        for (let i = 0; i < 3; i++) gc();
        return (held() - before) / n;
      };
      await heldByScan(); // the walk's code compiled and its buffer pool made: not counted below
      const own = await heldByScan();
      const shared = await heldByScan((p) => tree.get(p)?.path);
      assert.ok(own - shared > 60, `${(own - shared).toFixed(0)} bytes a file saved`);
      const [, ownScan, sharedScan] = scans;
      // The same scan either way; the directories the tree lacks keep the read strings.
      assert.deepEqual([...sharedScan!.entries.keys()].sort(), [...ownScan!.entries.keys()].sort());
      assert.equal(sharedScan!.entries.size, n + 64);
      assert.equal(sharedScan!.entries.get(name(7))?.type, 'reg');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("reads a layer of 20,000 TOC entries with the scan's path strings: its own copies die young (~60 bytes an entry were held twice)", function () {
    const n = 20_000;
    const json = tocJsonOf(n);
    // The scan's paths as a scan makes them: strings of their own, not the TOC's.
    const scanPaths = JSON.parse(JSON.stringify(Array.from({ length: n }, (_, i) => tocEntry(i).name))) as string[];
    const scan = new ScanEntries();
    for (const [i, p] of scanPaths.entries()) scan.set(existing(p, i, BigInt(i)));
    scanPaths.length = 0;
    const gc = collector();
    const held = () => process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers;
    const heldByLayer = (ownPath?: (p: string) => string | undefined): { perEntry: number; layer: LayerEntries } => {
      for (let i = 0; i < 3; i++) gc();
      const before = held();
      const layer = new LayerEntries(0, ownPath);
      forEachTocEntry(json, (e) => layer.add(e));
      for (let i = 0; i < 3; i++) gc();
      return { perEntry: (held() - before) / n, layer };
    };
    const own = heldByLayer();
    const shared = heldByLayer((p) => scan.ownPath(p));
    assert.ok(
      own.perEntry - shared.perEntry > 45,
      `${(own.perEntry - shared.perEntry).toFixed(0)} bytes an entry saved`,
    );
    // The same entries either way; a path the scan lacks keeps the TOC's string.
    assert.deepEqual(
      shared.layer.entries.slice(0, 50).map((e) => [e.path, e.digest, e.size]),
      own.layer.entries.slice(0, 50).map((e) => [e.path, e.digest, e.size]),
    );
    assert.equal(scan.ownPath('usr/not/scanned'), undefined);
    const partial = new LayerEntries(0, (p) => (p.endsWith('-1.txt') ? scan.ownPath(p) : undefined));
    forEachTocEntry(tocJsonOf(3), (e) => partial.add(e));
    assert.deepEqual(
      partial.entries.map((e) => e.path),
      [0, 1, 2].map((i) => tocEntry(i).name),
    );
  });

  it('holds the scan of 20,000 files (3,000 sizes) by size in under 12 bytes a file (~7 here: its rows by size and each distinct size once, its sizes read once so that spilled rows are not read back per comparison; sorted copies of sizes and paths held ~17, a Map of path-or-list ~41)', function () {
    const n = 20_000;
    const entries = new ScanEntries();
    for (let i = 0; i < n; i++) entries.set(existing(`usr/lib/file-${i}`, i % 3000, BigInt(i)));
    const gc = collector();
    const held = () => process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers;
    for (let i = 0; i < 3; i++) gc();
    const before = held();
    const old = indexOldTree('/x', entries);
    for (let i = 0; i < 3; i++) gc();
    const perFile = (held() - before) / n;
    assert.ok(perFile < 12, `${perFile.toFixed(1)} bytes a file`);
    assert.equal(old.bySize.size, n);
    assert.deepEqual(
      pathsOfSize(old, 7),
      [0, 1, 2, 3, 4, 5, 6].map((k) => `usr/lib/file-${7 + 3000 * k}`),
    );
  });

  it("peeks at a scan's rows through one reused object, each time with exactly what get makes of the row", function () {
    const scan = new ScanEntries();
    const xattrs = { 'user.a': Buffer.from('1') };
    scan.set({ ...existing('a', 10, 1n), xattrs, uid: 7, mtimeNs: -3n });
    scan.set({ ...existing('link', 0, 2n), type: 'symlink', linkname: 'a', mode: 0o777 });
    scan.set({ ...existing('dev', 0, 3n), type: 'char', rdev: 0x10203n, dev: 9n });
    scan.set(existing('b', 2 ** 40, (1n << 64n) - 1n, 3));
    const first = scan.peek('a');
    for (const p of ['a', 'link', 'dev', 'b', 'a']) {
      const seen = scan.peek(p)!;
      assert.equal(seen, first, 'one object');
      const made = scan.get(p)!;
      assert.notEqual(made, first);
      // A row without a link target reads as undefined there (the reused object keeps the field).
      assert.deepEqual({ ...seen }, { linkname: undefined, ...made }, p);
    }
    assert.equal(scan.peek('nowhere'), undefined);
    scan.release();
    assert.throws(() => scan.peek('a'), /released/);
  });

  it('indexes the scan by size (files of one size in scan order), only multi-link inodes form groups; a Map and scan rows alike', function () {
    const files = [
      existing('a', 10, 1n),
      existing('b', 20, 2n, 2),
      { ...existing('dir', 0, 9n), type: 'dir' as const },
      existing('c', 20, 2n, 2),
      existing('d', 30, 3n),
      existing('e', 20, 4n),
      { ...existing('link', 20, 8n), type: 'symlink' as const, linkname: 'a' },
      existing('f', 0, 5n),
    ];
    const rows = new ScanEntries();
    for (const f of files) rows.set(f);
    for (const entries of [new Map(files.map((f) => [f.path, f])), rows]) {
      const old = indexOldTree('/x', entries);
      assert.deepEqual(
        [...old.bySize],
        [
          [0, 'f'],
          [10, 'a'],
          [20, 'b'],
          [20, 'c'],
          [20, 'e'],
          [30, 'd'],
        ],
      );
      assert.deepEqual(pathsOfSize(old, 10), ['a']);
      assert.deepEqual(pathsOfSize(old, 20), ['b', 'c', 'e']);
      assert.deepEqual(pathsOfSize(old, 30), ['d']);
      assert.deepEqual(pathsOfSize(old, 0), ['f']);
      assert.deepEqual(pathsOfSize(old, 15), []);
      assert.deepEqual(pathsOfSize(old, 99), []);
      assert.deepEqual([...old.byIno], [[2n, ['b', 'c']]]);
    }
    // The size index reads the scan's rows: once they are released it says so, not a wrong answer.
    const old = indexOldTree('/x', rows);
    rows.release();
    assert.throws(() => pathsOfSize(old, 20), /released/);
  });

  it("keeps every row's inode, device and device number exactly, though it stores one device for most rows", function () {
    const scan = new ScanEntries();
    const rows = [
      existing('a', 1, 5n),
      { ...existing('other-fs', 1, 5n), dev: 2n },
      { ...existing('tty', 0, (1n << 64n) - 1n), type: 'char' as const, rdev: (1n << 64n) - 2n },
      { ...existing('disk', 0, 7n), type: 'block' as const, rdev: 0x800n, dev: 0n },
      existing('b', 1, 6n),
    ];
    for (const r of rows) scan.set(r);
    for (const r of rows) assert.deepEqual(scan.get(r.path), r, r.path);
    // A row set again takes the new values, back to the common device and no device number.
    scan.set(existing('disk', 0, 7n));
    scan.set({ ...existing('a', 1, 5n), dev: 3n });
    assert.deepEqual(scan.get('disk'), existing('disk', 0, 7n));
    assert.equal(scan.get('a')!.dev, 3n);
    assert.equal(scan.get('b')!.dev, 1n);
  });

  it("lets a scan of 20,000 files name them with the new tree's strings: its own copies (a string each, ~65 bytes here) are freed, nothing else changes", function () {
    const n = 20_000;
    const pathOf = (i: number) => `usr/share/doc/package-${i % 500}/file-number-${i}.txt`;
    // Two strings of every path, as the TOC and the scan read them (flat strings, through JSON).
    const scanPaths = JSON.parse(JSON.stringify(Array.from({ length: n }, (_, i) => pathOf(i)))) as string[];
    const treePaths = JSON.parse(JSON.stringify(Array.from({ length: n }, (_, i) => pathOf(i)))) as string[];
    const entries = new ScanEntries();
    for (let i = 0; i < n; i++) entries.set(existing(scanPaths[i]!, i % 3000, BigInt(i % 19_000), i >= 18_000 ? 2 : 1));
    scanPaths.length = 0;
    const old = indexOldTree('/x', entries);
    // As text: arrays of the scan's own strings would keep them alive.
    const shapeOf = () =>
      JSON.stringify([[...entries.keys()], [...old.bySize], [...old.byIno].map(([ino, ps]) => [String(ino), ps])]);
    const before = shapeOf();
    const tree = new Map(treePaths.map((path) => [path, { path }]));
    treePaths.length = 0;
    const gc = collector();
    const held = () => process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers;
    // Collections until the figure settles: one leaves some of the setup's garbage to the next.
    const settled = () => {
      for (let i = 0; i < 3; i++) gc();
      return held();
    };
    // A tree with none of the paths first: it shares nothing, so nothing may be freed by it. Twice:
    // in this test, the first iteration of the just-built size index let ~70 bytes a file go.
    sharePathsWith(old, new Map());
    const untouched = settled();
    sharePathsWith(old, new Map());
    const unshared = settled();
    // Within the noise of the heap's own figures: after the file's other tests, 8-16 bytes a file
    // were seen here between two such calls (a shared path frees ~65).
    assert.ok(Math.abs(untouched - unshared) / n < 24, `${((untouched - unshared) / n).toFixed(0)} bytes a file`);
    sharePathsWith(old, tree);
    const freedPerFile = (unshared - settled()) / n;
    assert.equal(shapeOf(), before);
    assert.deepEqual(entries.get(pathOf(7)), existing(pathOf(7), 7, 7n));
    assert.ok(freedPerFile > 45, `${freedPerFile.toFixed(0)} bytes freed per file`);
  });

  it('holds a plan that keeps 20,000 entries in under 8 bytes each (an action object apiece held ~50)', async function () {
    const n = 20_000;
    const perEntry = await keptPlanBytes(n, 1n, (plan, tree) => {
      assert.equal(plan.summary.keep.count, n);
      assert.equal(plan.actions.length, n);
      const a = plan.actions.at(7)!;
      assert.equal(a.kind, 'keep');
      assert.equal(a.entry, tree.get(a.entry.path));
      assert.deepEqual([...plan.actions].map((x) => x.entry.path).slice(0, 4), [
        '',
        'usr',
        'usr/share',
        'usr/share/file-number-10.txt',
      ]);
    });
    // The tree's row of its entry (4 bytes) and a code (1): no reference or object per action.
    assert.ok(perEntry < 8, `${perEntry.toFixed(0)} bytes per entry`);
  });

  it('holds a plan that sets the mtime of 20,000 entries in under 8 bytes each (a {kind, entry, fix} object and its fix held ~90)', async function () {
    const n = 20_000;
    const perEntry = await keptPlanBytes(n, 5_000_000_000n, (plan, tree) => {
      assert.equal(plan.summary.meta.count, n);
      const a = plan.actions.at(7)!;
      assert.deepEqual(a, { kind: 'meta', entry: tree.get(a.entry.path), fix: { mtime: true } });
      assert.equal(a.fix, MTIME_ONLY);
    });
    assert.ok(perEntry < 8, `${perEntry.toFixed(0)} bytes per entry`);
  });

  it('holds a plan that creates 20,000 entries on an empty tree in under 8 bytes each (a {kind, entry, replace} object apiece held ~56)', async function () {
    const n = 20_000;
    const tree = new PathTable(n);
    for (let i = 0; i < n; i++) {
      const path = i === 0 ? '' : `d-${i}`;
      tree.set(path, { path, type: 'dir', mode: 0o755, uid: 0, gid: 0, size: 0, mtimeNs: 1n, xattrs: NO_XATTRS });
    }
    const empty = new ScanEntries();
    empty.finish();
    const old = indexOldTree('/x', empty);
    const hasher = { digestOf: () => Promise.reject(new Error('nothing to hash')) };
    const perEntry = await bytesHeldPerEntry(
      n,
      () => planApply(tree, old, hasher),
      (plan) => {
        assert.equal(plan.summary.create.count, n);
        const a = plan.actions.at(7)!;
        assert.deepEqual(a, { kind: 'create', entry: tree.get(a.entry.path), replace: false });
        assert.equal(a.entry, tree.get(a.entry.path));
      },
    );
    assert.ok(perEntry < 8, `${perEntry.toFixed(0)} bytes per entry`);
  });

  it("keeps a TOC's files in the new tree's table as their paths and rows, not an object each (a TocFile apiece held 56 bytes)", async function () {
    const gc = collector();
    const { table, files } = tocTreeWatched(2_000);
    // A WeakRef keeps its target until the task that made it ends.
    await new Promise((resolve) => setImmediate(resolve));
    for (let i = 0; i < 3; i++) gc();
    assert.equal(table.size, 1_999);
    // Every TocFile the TOC's reading made is gone while the table still has every file.
    assert.equal(files.length, 1_997);
    assert.equal(files.filter((f) => f.deref() !== undefined).length, 0);
    assert.equal(table.get('usr/share/file-number-1999.txt')!.size, 1999);
    // Each file is made again when asked for, equal to what the TOC said.
    const small = tocTree(50);
    const f = small.get('usr/share/file-number-42.txt')!;
    assert.ok(f instanceof TocFile);
    assert.notEqual(f, small.get(f.path));
    assert.deepEqual(
      [f.type, f.size, f.mode, f.mtimeNs, f.digest, f.source],
      ['reg', 42, 0o644, 1n, digestOf(42), { layer: 0, offset: 420, endOffset: 427 }],
    );
    assert.equal(small.rowHolding(f), small.rowOf(f.path));
    assert.equal(small.get('usr/share')!.type, 'dir');
  });

  it("holds a plan over a TOC's table in under 8 bytes an entry (an entry reference apiece held 9 and kept each TocFile)", async function () {
    const n = 20_000;
    const { entries } = keptTree(n);
    const old = indexOldTree('/x', entries);
    const hasher = { digestOf: (x: ExistingEntry) => Promise.resolve(digestOf(x.size)) };
    const tree = tocTree(n);
    const perEntry = await bytesHeldPerEntry(
      n,
      () => planApply(tree, old, hasher),
      (plan) => {
        assert.equal(plan.summary.keep.count, n);
        const a = plan.actions.at(7)!;
        assert.equal(a.kind, 'keep');
        const want = tree.get(a.entry.path)!;
        assert.deepEqual([a.entry.path, a.entry.digest, a.entry.source], [want.path, want.digest, want.source]);
      },
    );
    assert.ok(perEntry < 8, `${perEntry.toFixed(1)} bytes per entry`);
  });

  it('reads every action back as it was set: kinds, replace true, false or absent, and the ones kept as objects', function () {
    const entry = (path: string): TreeEntry => ({
      path,
      type: 'reg',
      mode: 0o644,
      uid: 0,
      gid: 0,
      size: 1,
      mtimeNs: 1n,
      xattrs: NO_XATTRS,
      digest: digestOf(1),
    });
    const actions: Action[] = [
      { kind: 'keep', entry: entry('a') },
      { kind: 'write', entry: entry('b'), replace: false },
      { kind: 'write', entry: entry('c'), replace: true },
      { kind: 'create', entry: entry('d'), replace: true },
      { kind: 'link', entry: entry('e'), replace: false },
      { kind: 'meta', entry: entry('f'), fix: { mode: true } },
      { kind: 'meta', entry: entry('f2'), fix: MTIME_ONLY },
      { kind: 'meta', entry: entry('f3'), fix: { mtime: true } },
      { kind: 'reflink', entry: entry('g'), from: 'a', replace: true },
      { kind: 'reflink', entry: entry('h'), from: 'b', fromNew: true, replace: false },
      { kind: 'clone', entry: entry('i'), from: 'i' },
      { kind: 'create', entry: entry('j') },
    ];
    const list = new PlanActions();
    list.reserve();
    for (const a of actions) list.push(a);
    list.set(0, { kind: 'link', entry: entry('z'), replace: true });
    assert.deepEqual([...list], [{ kind: 'link', entry: entry('z'), replace: true }, ...actions]);
    for (const [i, a] of actions.entries()) {
      assert.deepEqual(list.at(i + 1), a);
      // Stored whole only where it says more than a kind, an entry and replace (or the shared
      // mtime-only fix; an equal fix of its own is another object, kept as it is).
      const asObject = 'from' in a || ('fix' in a && a.fix !== MTIME_ONLY);
      assert.equal(list.at(i + 1) === a, asObject, a.entry.path);
      if ('fix' in a) assert.equal(list.at(i + 1)!.fix, a.fix, a.entry.path);
      // Read without making the action: its kind, its entry, and the object where it is one.
      assert.equal(list.kindAt(i + 1), a.kind, a.entry.path);
      assert.equal(list.entryAt(i + 1), a.entry, a.entry.path);
      assert.equal(list.objectAt(i + 1), asObject ? a : undefined, a.entry.path);
    }
    assert.equal(list.at(-1)!.entry, actions.at(-1)!.entry);
    const reserved = new PlanActions();
    reserved.reserve();
    assert.equal(reserved.at(0), undefined);
    assert.throws(() => [...reserved], /plan action 0 was reserved and never set/);
  });

  it('holds a scan of 16,385 paths in blocks of rows at their size (doubled arrays held up to 32,768 rows)', function () {
    const n = 16_385;
    const { entries } = keptTree(n);
    const gc = collector();
    const buffers = () => {
      for (let i = 0; i < 3; i++) gc();
      return process.memoryUsage().arrayBuffers;
    };
    const before = buffers();
    const grown = new ScanEntries();
    for (const e of entries.values()) grown.set(e);
    const held = buffers() - before;
    // 65 blocks of 256 rows at 49 bytes a row, and a table of 32,768 slots of 4 bytes (at most three quarters full).
    const rows = Math.ceil(n / 256) * 256 * 49;
    assert.ok(held >= rows + 32_768 * 4 && held < rows + 32_768 * 4 + 64 * 1024, `${held} bytes of rows and slots`);
    assert.deepEqual(grown.get('usr/share/file-number-99.txt'), entries.get('usr/share/file-number-99.txt'));
    assert.equal(grown.size, n);
    // It takes more rows after the walk is over.
    grown.finish();
    grown.set({ ...grown.get('usr')!, path: 'usr/new' });
    assert.equal(grown.get('usr/new')?.type, 'dir');
    assert.equal(grown.get('usr/share/file-number-16384.txt')?.size, 16_384);
  });

  it('remembers the digests of 20,000 files in a content index in under 110 bytes each (string keys held ~170, made by a template literal ~365)', function () {
    const n = 20_000;
    const { files, digests } = indexInputs(n);
    const held = () => process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers;
    const gc = collector();
    // The least of three tries: after the other tests, a collection now and then leaves MiBs of
    // their garbage to a later one, which would count against a single measurement.
    let perFile = Infinity;
    for (let attempt = 0; attempt < 3; attempt++) {
      gc();
      const before = held();
      const idx = new ContentIndex('/x');
      for (let i = 0; i < n; i++) idx.remember(files[i]!, digests[i]!);
      gc();
      perFile = Math.min(perFile, (held() - before) / n);
      assert.equal(idx.size, n);
    }
    // Used after the measurement: dead, the inputs' own bytes would count against the index.
    assert.equal(files.length + digests.length, 2 * n);
    assert.ok(perFile < 110, `${perFile.toFixed(0)} bytes per file`);
  });

  it('keeps exactly the kept keys of a content index, each with its own digest, and grows on after', async function () {
    const dir = await mkdtemp(join(tmpdir(), 'tiu-index-'));
    try {
      const idx = new ContentIndex(dir);
      const key = (i: number) => ({ ino: BigInt(i), size: i, mtimeNs: 1n, ctimeNs: 2n });
      const keep = new Set<number>();
      for (let i = 0; i < 3000; i++) {
        const k = idx.remember(key(i), digestOf(i));
        if (i % 3 === 1) keep.add(k);
      }
      idx.retainKeys(keep);
      assert.equal(idx.size, 1000);
      for (let i = 3000; i < 3010; i++) idx.remember(key(i), digestOf(i));
      const file = join(dir, 'index.json');
      await idx.save(file);
      const saved = (JSON.parse(await readFile(file, 'utf8')) as { entries: Record<string, string> }).entries;
      const want: Record<string, string> = {};
      for (let i = 0; i < 3010; i++) if (i % 3 === 1 || i >= 3000) want[`${i}:${i}:1:2`] = digestOf(i);
      assert.deepEqual(saved, want);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('loads a saved index of 20,000 files into a table made once at its size (grown row by row and trimmed, it was made ~12 times, ~4x the rows in garbage)', async function () {
    const dir = await mkdtemp(join(tmpdir(), 'tiu-index-'));
    try {
      const n = 20_000;
      const { files, digests } = indexInputs(n);
      const saved = new ContentIndex(dir);
      for (let i = 0; i < n; i++) saved.remember(files[i]!, digests[i]!);
      assert.ok(saved.tableAllocations > 5, `${saved.tableAllocations}: remembering one by one grows the table`);
      const file = join(dir, 'index.json');
      await saved.save(file);
      const back = await ContentIndex.load(dir, file);
      assert.equal(back.size, n);
      assert.equal(back.tableAllocations, 1);
      for (const i of [0, 7, n - 1])
        assert.equal(
          await back.digestOf({ ...existing('x', files[i]!.size, files[i]!.ino), ...files[i]! }),
          digests[i],
        );
      assert.equal(back.hashedFiles, 0);
      // The planner's synchronous question: known, the same digest or another; unknown, no answer.
      for (const i of [0, 7, n - 1]) {
        const e = { ...existing('x', files[i]!.size, files[i]!.ino), ...files[i]! };
        assert.equal(back.knownMatch(e, digests[i]!), true);
        assert.equal(back.knownMatch(e, digests[(i + 1) % n]!), false);
        assert.equal(back.knownMatch(e, digests[i]!.replace('sha256:', 'sha512:')), false);
      }
      assert.equal(
        back.knownMatch({ ...existing('x', 1, 999_999_999n), ...files[0]!, ino: 999_999_999n }, digests[0]!),
        undefined,
      );
      // A file that claims more members than its bytes can hold reserves no more than they can.
      await writeFile(file, '{"version":1,"entries":{' + '"'.repeat(40_000) + '}}');
      const damaged = await ContentIndex.load(dir, file);
      assert.equal(damaged.size, 0);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('coalesces frames without an object per frame that outlives the young generation (joinSpans)', function () {
    this.timeout(30_000);
    // With the device's 1 MiB young generation (bin/tiu), what the call keeps alive while it works
    // is promoted: the old generation's growth per item, least of three calls. Adjacent 500-byte
    // frames over three blobs, given in reverse order: ~130 to a request.
    const script = `import { getHeapSpaceStatistics } from 'node:v8';
      import { joinSpans } from ${JSON.stringify(new URL('../../src/deploy/delta/ranges.ts', import.meta.url).href)};
      const n = 200000;
      const spans = Array.from({ length: n }, (_, i) => {
        const start = Math.floor((n - 1 - i) / 3) * 500;
        return { blob: i % 3, start, end: start + 500 };
      });
      const items = Array.from({ length: n }, (_, i) => i);
      const old = () => getHeapSpaceStatistics()
        .filter((s) => s.space_name === 'old_space' || s.space_name === 'large_object_space')
        .reduce((a, s) => a + s.space_used_size, 0);
      let perItem = Infinity, requests = 0, joined = 0;
      for (let k = 0; k < 3; k++) {
        gc(); gc();
        const before = old();
        const out = joinSpans(items, (i) => spans[i], { maxGap: 0, maxSpan: 64 * 1024 });
        perItem = Math.min(perItem, (old() - before) / n);
        requests = out.length;
        joined = out.reduce((m, r) => m + r.items.length, 0);
      }
      console.log(JSON.stringify({ perItem, requests, joined }));`;
    const got = JSON.parse(
      execFileSync(process.execPath, ['--max-semi-space-size=1', '--expose-gc', '--input-type=module', '-e', script], {
        encoding: 'utf8',
      }),
    ) as { perItem: number; requests: number; joined: number };
    assert.equal(got.joined, 200_000, 'every frame in a request');
    assert.ok(got.requests > 1000 && got.requests < 2000, `adjacent frames joined: ${got.requests} requests`);
    // The result's items arrays take ~8 bytes an item (and their growth); an object pairing each
    // item with its span, alive until the sort ended, took ~40 more (65 in all).
    assert.ok(got.perItem > 0 && got.perItem < 40, `${got.perItem.toFixed(1)} bytes promoted per item`);
  });

  it('saves and loads the content index in the JSON it always had; anything else loads empty', async function () {
    const dir = await mkdtemp(join(tmpdir(), 'tiu-index-'));
    try {
      const idx = new ContentIndex(dir);
      const n = 3000;
      for (let i = 0; i < n; i++)
        idx.remember({ ino: BigInt(i), size: i, mtimeNs: -5n, ctimeNs: BigInt(i) * 7n }, digestOf(i));
      const file = join(dir, 'index.json');
      await idx.save(file);
      const text = await readFile(file, 'utf8');
      const parsed = JSON.parse(text) as { version: number; entries: Record<string, string> };
      assert.equal(parsed.version, 1);
      assert.equal(Object.keys(parsed.entries).length, n);
      assert.equal(parsed.entries['7:7:-5:49'], digestOf(7));
      // What JSON.stringify of the same object wrote before is the same text.
      assert.equal(text, JSON.stringify(parsed));
      const back = await ContentIndex.load(dir, file);
      assert.equal(back.size, n);
      assert.equal(await back.digestOf({ ...existing('x', 7, 7n), mtimeNs: -5n, ctimeNs: 49n }), digestOf(7));
      assert.equal(back.hashedFiles, 0);
      for (const broken of [text.slice(0, -1), text + ' ', text.replace('"version":1', '"version":2'), '{}']) {
        await writeFile(file, broken);
        assert.equal((await ContentIndex.load(dir, file)).size, 0, broken.slice(-20));
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
