/**
 * Issue 19: the update's writing stage keeps nothing per file that it does not need. Guards
 * without timing or RSS: the executor's bookkeeping of staged content (heap bytes still held per
 * fetched file when the fetch phase is over, after a full collection), and the xattr restore
 * input made in batches as its source is read, never for the whole tree at once.
 */
import assert from 'node:assert/strict';
import { lstat, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import {
  executePlan,
  flattenLayers,
  openerProvider,
  type Action,
  type Plan,
  type TreeEntry,
} from '../../src/deploy/apply/index.ts';
import { ContentIndex } from '../../src/deploy/apply/scan.ts';
import type { ContentProvider } from '../../src/deploy/apply/content.ts';
import { comparePaths } from '../../src/layer/paths.ts';
import { SkipTally } from '../../src/deploy/apply/reserved.ts';
import { applyTransfer, ContentStore, type DeltaTransfer } from '../../src/deploy/delta/index.ts';
import { restoreBatches, type XattrSet } from '../../src/host/xattr.ts';
import { sha256 } from '../../src/oci/digest.ts';

/** V8's gc, reachable from a test without a node flag. */
function collector(): () => void {
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
}

const T = 1_700_000_000_000_000_000n;
const contentOf = (i: number) => `file ${i}\n`;

function entry(path: string, type: 'dir' | 'reg', content = ''): TreeEntry {
  const e: TreeEntry = {
    path,
    type,
    mode: type === 'dir' ? 0o755 : 0o644,
    uid: process.getuid?.() ?? 0,
    gid: process.getgid?.() ?? 0,
    mtimeNs: T,
    xattrs: {},
    size: Buffer.byteLength(content),
  };
  if (type === 'reg') {
    e.digest = sha256(content);
    e.source = { layer: 0, offset: 0, endOffset: 1 };
  }
  return e;
}

/** File f<i>'s content (its number from its path). */
function contentFor(e: TreeEntry): Buffer {
  return Buffer.from(contentOf(Number(e.path.split('/f')[1])));
}

/**
 * Carry out in a new directory `root` a plan that writes `files` files into 40 directories (its
 * actions in path order, as a planner gives them), content from `provider`; checks what it wrote.
 */
async function runWrites(
  root: string,
  files: number,
  provider: ContentProvider,
  onPhase: NonNullable<Parameters<typeof executePlan>[3]>['onPhase'],
): Promise<void> {
  await mkdir(root);
  const actions: Action[] = [{ kind: 'create', entry: entry('', 'dir') }];
  for (let d = 0; d < 40; d++) actions.push({ kind: 'create', entry: entry(`d${d}`, 'dir') });
  for (let i = 0; i < files; i++)
    actions.push({ kind: 'write', entry: entry(`d${i % 40}/f${i}`, 'reg', contentOf(i)) });
  actions.sort((a, b) => comparePaths(a.entry.path, b.entry.path));
  const plan = { actions, deletes: [] } as unknown as Plan;
  const report = await executePlan(root, plan, provider, onPhase ? { onPhase } : {});
  assert.equal(report.written.count, files);
  assert.equal(await readFile(join(root, 'd7', 'f447'), 'utf8'), contentOf(447));
}

/** The heap in use after a full collection, each time it is called. */
function heapAfterCollection(): () => number {
  const gc = collector();
  return () => {
    gc();
    return process.memoryUsage().heapUsed;
  };
}

/**
 * Heap bytes a file that `held` measures for 1,000 and 6,000 files: a first run compiles the
 * code, then the difference of two sizes leaves out what does not grow with them.
 */
async function perFileHeld(dir: string, held: (root: string, files: number) => Promise<number>): Promise<number> {
  await held(join(dir, 'warm'), 1000);
  const small = await held(join(dir, 'small'), 1000);
  const large = await held(join(dir, 'large'), 6000);
  return (large - small) / 5000;
}

describe('writing stage memory (issue 19)', function () {
  this.timeout(120_000);
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tiu-writing-memory-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('holds a few bytes per fetched file between fetching and writing the tree', async () => {
    const heap = heapAfterCollection();
    /** Heap bytes still held when the fetch phase is over (after a full collection), for `files` files. */
    async function heldAfterFetch(root: string, files: number): Promise<number> {
      const provider = openerProvider((e) => Readable.from([contentFor(e)]));
      let before = 0;
      let after = 0;
      await runWrites(root, files, provider, (phase) => {
        if (phase === 'fetch') before = heap();
        if (phase === 'reflink') after = heap();
      });
      return after - before;
    }
    const perFile = await perFileHeld(dir, heldAfterFetch);
    // ~33 bytes now; a map of paths to staging names and the map of entries to fetch kept ~185.
    assert.ok(perFile < 64, `${perFile.toFixed(1)} heap bytes held per fetched file`);
  });

  it('holds a few bytes per file to fetch while the provider delivers them (a map of paths and a list of entries held ~72)', async () => {
    const heap = heapAfterCollection();
    /** Heap bytes held while the provider is at work (after a full collection), for `files` files to fetch. */
    async function heldWhileDelivering(root: string, files: number): Promise<number> {
      let before = 0;
      let during = 0;
      const provider: ContentProvider = {
        async deliver(entries, take) {
          during = heap();
          for (const e of entries) await take(e, Readable.from([contentFor(e)]));
        },
      };
      await runWrites(root, files, provider, (phase) => {
        if (phase === 'fetch') before = heap();
      });
      return during - before;
    }
    const perFile = await perFileHeld(dir, heldWhileDelivering);
    // The actions' indices (4 bytes each) and the staging states.
    assert.ok(perFile < 24, `${perFile.toFixed(1)} heap bytes held per file to fetch`);
  });

  it('makes the setfattr input in bounded batches, reading its source as it goes', () => {
    const total = 3000;
    let pulled = 0;
    function* items(): Generator<XattrSet> {
      for (let i = 0; i < total; i++) {
        pulled++;
        yield { path: `/root/usr/lib/some/where/file-${i}`, set: { 'security.selinux': Buffer.alloc(150, i % 251) } };
      }
    }
    const max = 64 * 1024;
    const batches: string[] = [];
    const pulledAtBatch: number[] = [];
    for (const b of restoreBatches(items(), max)) {
      batches.push(b);
      pulledAtBatch.push(pulled);
    }
    assert.ok(batches.length > 5, `${batches.length} batches`);
    for (const b of batches) assert.ok(b.length < max + 1024, `a batch of ${b.length} bytes`);
    // The source was read only as far as each batch needed, not whole before the first one.
    assert.ok(pulledAtBatch[0]! < total / 4, `${pulledAtBatch[0]} of ${total} items read for the first batch`);
    // Batched or not, the same input, file blocks never cut.
    const whole = [...restoreBatches(items(), Infinity)];
    assert.equal(whole.length, 1);
    assert.equal(batches.join(''), whole[0]);
    for (const b of batches)
      assert.match(b, /^# file: \/root\/[^\n]+\nsecurity\.selinux=0s[A-Za-z0-9+/=]+\n\n(# file: |$)/);
    assert.equal(whole[0]!.split('# file: ').length - 1, total);
  });

  it('refuses a bad name before its batch is made', () => {
    const bad: XattrSet[] = [{ path: '/x', set: { 'user.ok\n# file: /etc/shadow': Buffer.from('x') } }];
    assert.throws(() => [...restoreBatches(bad)], /XATTR|xattr/i);
    assert.throws(() => [...restoreBatches([{ path: 'relative', set: { 'user.a': Buffer.from('x') } }])], /absolute/);
  });

  it("records the new tree in the content index without growing the old rows' table", async () => {
    // A first install: the index knows many files of the old tree, the executor writes many new
    // ones. The index's arrays made in the index phase must be one table for the new tree's
    // files, not the old table grown by every new file and compacted after (copies of it all).
    const oldRows = 6000;
    const files = 8000;
    const root = join(dir, 'root');
    await mkdir(root);
    const actions: Action[] = [{ kind: 'create', entry: entry('', 'dir') }];
    for (let d = 0; d < 20; d++) actions.push({ kind: 'create', entry: entry(`d${d}`, 'dir') });
    for (let i = 0; i < files; i++)
      actions.push({ kind: 'write', entry: entry(`d${i % 20}/f${i}`, 'reg', contentOf(i)) });
    const index = new ContentIndex(root);
    for (let i = 0; i < oldRows; i++)
      index.remember({ ino: BigInt(1e9 + i), size: i, mtimeNs: 1n, ctimeNs: 2n }, sha256(`old ${i}`));
    const provider = openerProvider((e) => Readable.from([Buffer.from(contentOf(Number(e.path.split('/f')[1])))]));
    // The table's keys are a BigInt64Array (32 bytes a row): count what is made while indexing.
    const Real = globalThis.BigInt64Array;
    let made = 0;
    let counting = false;
    globalThis.BigInt64Array = new Proxy(Real, {
      construct(target, args: unknown[]) {
        const a = Reflect.construct(target, args) as BigInt64Array;
        if (counting) made += a.byteLength;
        return a;
      },
    });
    // The event loop's turns while the index phase runs: an awaited lstat per file was one each
    // (and ~3 KiB of garbage a file); one lstat after the other on this thread makes none.
    let turns = 0;
    let done = false;
    const spin = () => {
      if (done) return;
      turns++;
      setImmediate(spin);
    };
    try {
      await executePlan(root, { actions, deletes: [] } as unknown as Plan, provider, {
        index,
        onPhase: (phase) => {
          if (phase !== 'index') return;
          counting = true;
          setImmediate(spin);
        },
      });
    } finally {
      done = true;
      globalThis.BigInt64Array = Real;
    }
    assert.equal(turns, 0, `the index phase went through the event loop ${turns} times for ${files} files`);
    assert.equal(index.size, files, 'the index holds the new tree and nothing else');
    const st = await lstat(join(root, 'd7', 'f447'), { bigint: true });
    const known = { path: 'd7/f447', ino: st.ino, size: Number(st.size), mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs };
    assert.equal(await index.digestOf(known as never), sha256(contentOf(447)));
    assert.equal(index.hashedFiles, 0, 'known from the index, not read');
    assert.ok(made >= 32 * files, `the new rows' keys were made in the index phase (${made} bytes)`);
    // Growing by half from the old rows and compacting made ~4.5x this; one sized table is 1x.
    assert.ok(made <= 32 * files * 1.1, `${made} bytes of keys made for ${files} files`);
  });

  it("records the new tree in the booted tree's index arrays, not in a second table (applyTransfer)", async () => {
    // The apply plans with the index of the tree it writes into (its rows answer which files are
    // unchanged), then records the new tree's files: in the arrays of the rows it loaded, which
    // have room for them, not in a table made beside them at the end of the writing.
    const root = join(dir, 'root');
    await mkdir(root);
    await writeFile(join(root, 'kept'), 'kept\n');
    const st = await lstat(join(root, 'kept'), { bigint: true });
    const booted = new ContentIndex(root);
    booted.remember({ ino: st.ino, size: Number(st.size), mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs }, sha256('kept\n'));
    const indexFile = join(dir, 'booted-index.json');
    await booted.save(indexFile);
    const store = await ContentStore.open(join(dir, 'store'));
    await store.put(sha256('new\n'), Buffer.from('new\n'));

    // The table's keys are a BigInt64Array: count what is made once the writing has begun (the
    // provider asks the store while the executor fetches).
    const Real = globalThis.BigInt64Array;
    let made = 0;
    let writing = false;
    globalThis.BigInt64Array = new Proxy(Real, {
      construct(target, args: unknown[]) {
        const a = Reflect.construct(target, args) as BigInt64Array;
        if (writing) made += a.byteLength;
        return a;
      },
    });
    const has = store.has.bind(store);
    store.has = (d: string) => {
      writing = true;
      return has(d);
    };
    const t = {
      path: 'delta',
      source: {},
      manifest: { layers: [] },
      tree: flattenLayers([[entry('', 'dir'), entry('kept', 'reg', 'kept\n'), entry('new', 'reg', 'new\n')]]),
      skip: new SkipTally().report(),
      top: {},
      fetch: [],
      sources: [],
      frames: [],
      ranges: [],
      coalesce: {},
      report: {},
    } as unknown as DeltaTransfer;
    const saved = join(dir, 'new-index.json');
    let report;
    // What V8's gc() receives: one last-resort collection before the writing, which hands the
    // freed heap pages back (a regular one keeps them pooled beside the writing's first allocations).
    const gcCalls: unknown[] = [];
    const savedGc = globalThis.gc;
    globalThis.gc = ((options?: unknown) => void gcCalls.push({ options, writing })) as NodeJS.GCFunction;
    try {
      ({ report } = await applyTransfer(t, root, store, { preserve: [], indexFile, saveIndexTo: saved }));
    } finally {
      globalThis.BigInt64Array = Real;
      globalThis.gc = savedGc;
    }
    assert.deepEqual(gcCalls, [
      { options: { type: 'major', execution: 'sync', flavor: 'last-resort' }, writing: false },
    ]);
    assert.ok(writing, 'the executor fetched from the store');
    assert.equal(made, 0, `${made} bytes of index keys made while writing`);
    assert.equal(report.written.count, 1);
    assert.equal(report.kept.count + report.metadataFixed.count, 2, 'the root and the unchanged file');
    assert.equal(await readFile(join(root, 'new'), 'utf8'), 'new\n');
    // The new tree's index knows both files, as they are on disk now.
    const next = await ContentIndex.load(root, saved);
    for (const [name, content] of [
      ['kept', 'kept\n'],
      ['new', 'new\n'],
    ] as const) {
      const s = await lstat(join(root, name), { bigint: true });
      const e = { path: name, ino: s.ino, size: Number(s.size), mtimeNs: s.mtimeNs, ctimeNs: s.ctimeNs };
      assert.equal(await next.digestOf(e as never), sha256(content));
    }
    assert.equal(next.hashedFiles, 0, 'both known from the saved index, none read');
  });
});
