/**
 * The delta download's pure and in-memory parts: range coalescing, TOCs by range (verified,
 * or the reason for the whole-layer path), and downloading files' frames with every file
 * verified by sha256 before it is stored.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { zstdCompressSync } from 'node:zlib';
import type { TreeEntry as BuildEntry } from '../../src/layer/entry.ts';
import { writeLayer } from '../../src/bundle/layer-writer.ts';
import { ZstdChunkedAnnotation } from '../../src/layer/toc.ts';
import { MemoryTarget } from '../helpers/memory-target.ts';
import { isVerifiedFile, type TreeEntry, type VerifiedFile } from '../../src/deploy/apply/index.ts';
import { plainEntry } from '../helpers/plain-entry.ts';
import { ScanEntries } from '../../src/deploy/apply/scan-entries.ts';
import { PathTable } from '../../src/deploy/apply/path-table.ts';
import {
  coalesce,
  applyTransfer,
  ContentStore,
  downloadRanges,
  fetchLayerTocs,
  frameless,
  prepareTransfer,
  rangeBytes,
  storeProvider,
} from '../../src/deploy/delta/index.ts';
import { isTiuError, type ErrorCode } from '../../src/errors.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import type { Descriptor, ImageManifest } from '../../src/oci/types.ts';

const code = (c: ErrorCode) => (e: unknown) => isTiuError(e, c);

function entry(path: string, layer: number, offset: number, endOffset: number, size = 100): TreeEntry {
  return {
    path,
    type: 'reg',
    mode: 0o644,
    uid: 0,
    gid: 0,
    mtimeNs: 0n,
    xattrs: {},
    size,
    digest: `sha256:${'0'.repeat(64)}`,
    source: { layer, offset, endOffset },
  };
}

describe('delta: coalescing frames into requests', () => {
  it('joins neighbours within the gap, splits at larger gaps, other layers and the span limit', () => {
    const es = [
      entry('c', 0, 5000, 6000),
      entry('a', 0, 0, 1000),
      entry('b', 0, 1100, 2000),
      entry('d', 1, 0, 10),
      entry('e', 0, 6050, 9000),
    ];
    const r = coalesce(es, { maxGap: 200, maxSpan: 1_000_000 });
    assert.deepEqual(
      r.map((x) => [x.layer, x.start, x.end, x.entries.map((e) => e.path).join('')]),
      [
        [0, 0, 2000, 'ab'],
        [0, 5000, 9000, 'ce'],
        [1, 0, 10, 'd'],
      ],
    );
    assert.equal(rangeBytes(r), 2000 + 4000 + 10);
    const capped = coalesce(es, { maxGap: 10_000, maxSpan: 2500 });
    assert.deepEqual(
      capped.map((x) => [x.start, x.end]),
      [
        [0, 2000],
        [5000, 6000],
        [6050, 9000],
        [0, 10],
      ],
    );
  });
  it('leaves empty files out and finds files with content but no frame', () => {
    const empty = { ...entry('z', 0, 0, 0, 0) };
    const noFrame = { ...entry('n', 0, 0, 0, 10) };
    assert.deepEqual(coalesce([empty, noFrame]), []);
    assert.deepEqual(
      frameless([empty, noFrame]).map((e) => e.path),
      ['n'],
    );
  });
});

describe('delta: TOCs and verified downloads from a tiu layer', () => {
  let dir: string;
  let target: MemoryTarget;
  let layer: Descriptor;
  let manifest: ImageManifest;
  const files: Record<string, Buffer> = {
    'usr/a': Buffer.from('alpha '.repeat(1000)),
    'usr/b': Buffer.from('beta '.repeat(3000)),
    'usr/c': Buffer.concat([Buffer.from('gamma '.repeat(50_000)), randomBytes(5000)]),
    'usr/empty': Buffer.alloc(0),
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tiu-delta-unit-'));
    const dirEntry = (path: string): BuildEntry => ({
      path,
      type: 'dir',
      mode: 0o755,
      uid: 0,
      gid: 0,
      mtimeNs: 0n,
      size: 0,
      xattrs: {},
    });
    const entries: BuildEntry[] = [
      dirEntry('usr'),
      ...Object.entries(files).map(([path, data]): BuildEntry => ({
        path,
        type: 'reg',
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtimeNs: 0n,
        size: data.length,
        xattrs: {},
        content: { data },
      })),
    ];
    const r = await writeLayer(entries, join(dir, 'layer'), { compression: 'zstd' });
    layer = r.descriptor;
    target = new MemoryTarget();
    await target.push(layer, Readable.from([await readFile(join(dir, 'layer'))]));
    manifest = {
      schemaVersion: 2,
      mediaType: MediaType.OciManifest,
      config: { mediaType: MediaType.OciConfig, digest: `sha256:${'1'.repeat(64)}`, size: 2 },
      layers: [layer],
    };
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const tocEntries = async (): Promise<TreeEntry[]> => {
    const t = await fetchLayerTocs(target, manifest);
    assert.ok(t.ok);
    return t.layers[0]!;
  };

  it('reads the TOC by range, verified against the annotation', async () => {
    const t = await fetchLayerTocs(target, manifest);
    assert.ok(t.ok);
    assert.equal(t.requests, 1);
    assert.equal(t.tocBytes, Number(layer.annotations![ZstdChunkedAnnotation.ManifestPosition]!.split(':')[1]));
    const c = t.layers[0]!.find((e) => e.path === 'usr/c')!;
    assert.equal(c.digest, `sha256:${createHash('sha256').update(files['usr/c']!).digest('hex')}`);
  });

  it('lets each TOC go once its entries are read when its bytes are not wanted (keepBytes: false), the same entries', async () => {
    const kept = await fetchLayerTocs(target, manifest);
    const dropped = await fetchLayerTocs(target, manifest, undefined, { keepBytes: false });
    assert.ok(kept.ok && dropped.ok);
    assert.equal(kept.bytes.length, 1);
    assert.deepEqual(dropped.bytes, []);
    assert.deepEqual(dropped.layers, kept.layers);
    assert.equal(dropped.tocBytes, kept.tocBytes);
  });

  it('gives the reason for the whole-layer path: gzip, no TOC, no ranges; refuses a TOC that does not match', async () => {
    const gz = await fetchLayerTocs(target, { ...manifest, layers: [{ ...layer, mediaType: MediaType.OciLayerGzip }] });
    assert.deepEqual(gz.ok ? null : /not a zstd:chunked layer/.test(gz.reason), true);
    const noToc = await fetchLayerTocs(target, { ...manifest, layers: [{ ...layer, annotations: {} }] });
    assert.deepEqual(noToc.ok ? null : /no table of contents/.test(noToc.reason), true);
    const noRange = await fetchLayerTocs(
      { ...target, name: 'plain', fetch: target.fetch.bind(target), fetchRange: undefined } as never,
      manifest,
    );
    assert.deepEqual(noRange.ok ? null : /does not serve byte ranges/.test(noRange.reason), true);
    const bad = {
      ...layer,
      annotations: { ...layer.annotations, [ZstdChunkedAnnotation.ManifestChecksum]: `sha256:${'2'.repeat(64)}` },
    };
    await assert.rejects(fetchLayerTocs(target, { ...manifest, layers: [bad] }), code('TOC_CHECKSUM_MISMATCH'));
  });

  it('fetches the next TOCs while the paths to name entries with are coming, then reads every entry through them', async () => {
    const three = { ...manifest, layers: [layer, layer, layer] };
    let requests = 0;
    const counting = Object.assign(Object.create(target) as MemoryTarget, {
      fetchRange: (d: Descriptor, s: number, e: number) => {
        requests++;
        return target.fetchRange(d, s, e);
      },
    });
    let give: (f: (p: string) => string | undefined) => void = () => undefined;
    const ownPaths = new Promise<(p: string) => string | undefined>((r) => (give = r));
    const reading = fetchLayerTocs(counting, three, undefined, { ownPaths });
    // Far below the prefetch bound: all three TOCs come before the paths do.
    for (let k = 0; k < 400 && requests < 3; k++) await new Promise((r) => setTimeout(r, 5));
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(requests, 3);
    const asked: string[] = [];
    give((p) => {
      asked.push(p);
      return p === 'usr/a' ? p : undefined;
    });
    const t = await reading;
    assert.ok(t.ok);
    assert.equal(requests, 3);
    const paths = ['usr', ...Object.keys(files)];
    for (const l of t.layers) assert.deepEqual(l.map((e) => e.path).sort(), [...paths].sort());
    assert.deepEqual(asked.sort(), [...paths, ...paths, ...paths].sort());
  });

  it("prepareTransfer reads the TOCs with the booted tree's scan's path strings (one string per path, not two until a full GC)", async () => {
    const old = join(dir, 'old-root-shared');
    await mkdir(join(old, 'usr'), { recursive: true });
    await writeFile(join(old, 'usr/a'), files['usr/a']!);
    const asked: [string, string | undefined][] = [];
    const proto = ScanEntries.prototype;
    const ownPath = Object.getOwnPropertyDescriptor(proto, 'ownPath')!.value as ScanEntries['ownPath'];
    proto.ownPath = function (this: ScanEntries, p: string) {
      const own = ownPath.call(this, p);
      asked.push([p, own]);
      return own;
    };
    try {
      const t = await prepareTransfer({ source: target, manifest, oldRoot: old, preserve: [] });
      assert.equal(t.path, 'delta');
    } finally {
      proto.ownPath = ownPath;
    }
    // Every entry of the TOC asked; those the booted tree has answered with its string of them.
    assert.deepEqual(asked.map(([p]) => p).sort(), ['usr', ...Object.keys(files)].sort());
    assert.deepEqual(
      asked
        .filter(([, own]) => own !== undefined)
        .map(([p]) => p)
        .sort(),
      ['usr', 'usr/a'],
    );
  });

  it("applyTransfer scans the new snapshot with the plan's tree strings of its paths (one string per path, not a second copy until the plan)", async () => {
    const old = join(dir, 'old-root-apply');
    await mkdir(join(old, 'usr'), { recursive: true });
    await writeFile(join(old, 'usr/a'), files['usr/a']!);
    await writeFile(join(old, 'usr/gone'), 'not in the image');
    const t = await prepareTransfer({ source: target, manifest, oldRoot: old, preserve: [] });
    assert.ok(t.path === 'delta');
    const store = await ContentStore.open(join(dir, 'store-apply'));
    // Each path the scan records, and whether the lookup just before it was of that very path
    // (the tree's string asked for); a scan keeping the string it read asks nothing.
    const recorded: [string, boolean][] = [];
    let asked: unknown;
    // The tree is flattenLayers' table of paths (apply/path-table.ts), made once by prepareTransfer:
    // the transfer carries it, not the layers' lists (a TocFile per file through the download).
    assert.ok(!('layers' in t));
    const prepared = t.tree;
    assert.ok(prepared instanceof PathTable);
    const ownPath = Object.getOwnPropertyDescriptor(PathTable.prototype, 'ownPath')!.value as PathTable['ownPath'];
    const addStats = Object.getOwnPropertyDescriptor(ScanEntries.prototype, 'addStats')!
      .value as ScanEntries['addStats'];
    const tables = new Set<PathTable>();
    PathTable.prototype.ownPath = function (this: PathTable, k: string) {
      asked = k;
      tables.add(this);
      return ownPath.call(this, k);
    };
    ScanEntries.prototype.addStats = function (this: ScanEntries, ...a: Parameters<ScanEntries['addStats']>) {
      recorded.push([a[0], asked === a[0]]);
      return addStats.apply(this, a);
    };
    try {
      await applyTransfer(t, old, store, { preserve: [], allowCopyFallback: true });
    } finally {
      PathTable.prototype.ownPath = ownPath;
      ScanEntries.prototype.addStats = addStats;
    }
    const scanned = recorded.filter(([p]) => p !== '');
    assert.deepEqual(scanned.map(([p]) => p).sort(), ['usr', 'usr/a', 'usr/gone']);
    // The apply planned the prepared tree again (not one flattened anew) and then let it go.
    assert.deepEqual([...tables], [prepared]);
    assert.equal(t.tree, undefined);
    assert.deepEqual(
      scanned.filter(([, viaTree]) => !viaTree),
      [],
    );
    assert.deepEqual((await readdir(join(old, 'usr'))).sort(), ['a', 'b', 'c', 'empty']);
  });

  it('prepareTransfer scans the old root while the TOCs download; either failing is reported, not crashed on', async () => {
    const old = join(dir, 'old-root');
    await mkdir(join(old, 'usr'), { recursive: true });
    await writeFile(join(old, 'usr/a'), files['usr/a']!);
    // TOC requests that answer late: the scan (local) finishes or fails first
    const slow = Object.assign(Object.create(target) as MemoryTarget, {
      fetchRange: async (d: Descriptor, s: number, e: number) => {
        await new Promise((r) => setTimeout(r, 200));
        return target.fetchRange(d, s, e);
      },
    });
    const t = await prepareTransfer({ source: slow, manifest, oldRoot: old, preserve: [] });
    assert.equal(t.path, 'delta');
    assert.ok(t.path === 'delta');
    assert.deepEqual(t.fetch.map((e) => e.path).sort(), ['usr/b', 'usr/c', 'usr/empty'], 'usr/a is already there');
    await assert.rejects(
      prepareTransfer({ source: slow, manifest, oldRoot: join(dir, 'no-such-root'), preserve: [] }),
      code('APPLY_ROOT_INVALID'),
    );
    const bad = {
      ...layer,
      annotations: { ...layer.annotations, [ZstdChunkedAnnotation.ManifestChecksum]: `sha256:${'2'.repeat(64)}` },
    };
    await assert.rejects(
      prepareTransfer({
        source: slow,
        manifest: { ...manifest, layers: [bad] },
        oldRoot: join(dir, 'no-such-root'),
        preserve: [],
      }),
      code('TOC_CHECKSUM_MISMATCH'),
    );
    const gz = await prepareTransfer({
      source: slow,
      manifest: { ...manifest, layers: [{ ...layer, mediaType: MediaType.OciLayerGzip }] },
      oldRoot: join(dir, 'no-such-root'),
      preserve: [],
    });
    assert.equal(gz.path, 'whole-layer');
  });

  it('downloads files (coalesced and streamed large ones), each verified before it is stored', async () => {
    const es = await tocEntries();
    for (const maxSpan of [1_000_000, 1000]) {
      const store = await ContentStore.open(join(dir, `store-${maxSpan}`));
      const ranges = coalesce(es, { maxGap: 1024, maxSpan });
      const s = await downloadRanges(target, manifest.layers, ranges, store, { concurrency: 2, maxSpan });
      assert.equal(s.files, 3, JSON.stringify(ranges.map((r) => [r.start, r.end, r.entries.map((e) => e.path)])));
      assert.equal(s.requests, ranges.length);
      // One request for all at a large span; at 100 bytes the large file streams alone.
      if (maxSpan > 1000) assert.equal(ranges.length, 1);
      else assert.ok(ranges.some((r) => r.entries.length === 1 && r.end - r.start > maxSpan));
      assert.equal(s.bytes, rangeBytes(ranges));
      for (const e of es.filter((x) => x.size > 0))
        assert.deepEqual(await readFile(store.path(e.digest!)), files[e.path]);
      assert.equal((await readdir(store.dir)).length, 3, 'no temporary files left');
    }
  });

  it('bounds the requests in flight by the bytes they hold, not only by their number', async () => {
    const es = await tocEntries();
    let inFlight = 0;
    let most = 0;
    const counting = Object.assign(Object.create(target) as MemoryTarget, {
      async fetchRange(d: Descriptor, start: number, end: number): Promise<Readable> {
        most = Math.max(most, ++inFlight);
        const body = await target.fetchRange(d, start, end);
        body.once('close', () => inFlight--);
        return body;
      },
    });
    const ranges = coalesce(es, { maxGap: 0, maxSpan: 1 });
    assert.ok(ranges.length >= 3, `${ranges.length} requests`);
    const run = async (name: string, memoryBudget?: number) => {
      most = 0;
      const store = await ContentStore.open(join(dir, name));
      const s = await downloadRanges(counting, manifest.layers, ranges, store, {
        concurrency: 4,
        maxSpan: 1,
        ...(memoryBudget ? { memoryBudget } : {}),
      });
      assert.equal(s.files, 3);
      return most;
    };
    // Every request costs more than one byte: with that budget they run one at a time.
    assert.equal(await run('budget-1', 1), 1);
    assert.ok((await run('budget-default')) > 1, 'small requests still run in parallel');
  });

  it('a frame that does not match its TOC digest is refused and nothing of it is stored', async () => {
    for (const maxSpan of [1_000_000, 1000]) {
      const es = (await tocEntries()).map((e) =>
        e.path === 'usr/c' ? { ...plainEntry(e), digest: `sha256:${'3'.repeat(64)}` } : e,
      );
      const store = await ContentStore.open(join(dir, `store-bad-${maxSpan}`));
      await assert.rejects(
        downloadRanges(
          target,
          manifest.layers,
          coalesce(
            es.filter((e) => e.path === 'usr/c'),
            { maxSpan },
          ),
          store,
          { maxSpan },
        ),
        code('DELTA_FILE_MISMATCH'),
      );
      assert.deepEqual(await readdir(store.dir), []);
    }
  });

  it('a response shorter or longer than the range asked for is DELTA_RANGE_SHORT; the files before the cut are whole', async () => {
    const es = await tocEntries();
    const ranges = coalesce(es, { maxGap: 1024, maxSpan: 1_000_000 });
    assert.equal(ranges.length, 1);
    const r = ranges[0]!;
    const firstEnd = Math.min(...r.entries.map((e) => e.source!.endOffset!));
    for (const [what, reshape] of [
      ['cut after the first file', (b: Buffer) => b.subarray(0, firstEnd - r.start)],
      ['one byte too many', (b: Buffer) => Buffer.concat([b, Buffer.from([0])])],
    ] as const) {
      const odd = Object.assign(Object.create(target) as MemoryTarget, {
        fetchRange: async (d: Descriptor, s: number, e: number) => {
          const chunks: Buffer[] = [];
          for await (const c of await target.fetchRange(d, s, e)) chunks.push(c as Buffer);
          return Readable.from([reshape(Buffer.concat(chunks))]);
        },
      });
      const store = await ContentStore.open(join(dir, `store-odd-${what.length}`));
      await assert.rejects(
        downloadRanges(odd, manifest.layers, ranges, store),
        (e: unknown) => isTiuError(e, 'DELTA_RANGE_SHORT') && /got \d+ of \d+/.test((e as Error).message),
        what,
      );
      for (const f of await readdir(store.dir)) {
        const e = es.find((x) => x.digest === `sha256:${f}`)!;
        assert.deepEqual(await readFile(store.path(e.digest!)), files[e.path], `${what}: ${e.path} is whole`);
      }
    }
  });
});

describe('delta: ContentStore', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tiu-store-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

  it('resuming keeps the files that hash to their names and drops the rest; a plain open starts empty', async () => {
    const at = join(dir, 'store');
    const good = Buffer.concat([Buffer.from('good content '), Buffer.alloc(70_000)]);
    const first = await ContentStore.open(at);
    await first.put(sha(good), good);
    // What else an interrupted run (or someone else) may leave: a file that does not match its
    // name, a temporary file, a directory.
    const forged = sha(Buffer.from('the real thing'));
    await writeFile(first.path(forged), 'something else');
    await writeFile(join(at, '.tmp-1-1'), 'half');
    await mkdir(join(at, 'sub'));

    const resumed = await ContentStore.open(at, { resume: true });
    assert.equal(resumed.has(sha(good)), true);
    assert.equal(resumed.has(forged), false);
    assert.deepEqual(resumed.resumed, { files: 1, bytes: good.length });
    assert.deepEqual(await readdir(at), [sha(good).slice(7)]);
    assert.deepEqual(await readFile(resumed.path(sha(good))), good);

    const fresh = await ContentStore.open(at);
    assert.equal(fresh.has(sha(good)), false);
    assert.deepEqual(await readdir(at), []);
  });

  it('remove takes the store away with whatever is in it, entry by entry; a missing one is no error', async () => {
    const at = join(dir, 'removed');
    const store = await ContentStore.open(at);
    for (let i = 0; i < 300; i++) {
      const b = Buffer.from(`file ${i}`);
      await store.put(sha(b), b);
    }
    await writeFile(join(at, '.tmp-1-1'), 'half');
    await mkdir(join(at, 'sub', 'deeper'), { recursive: true });
    await writeFile(join(at, 'sub', 'deeper', 'x'), 'x');
    // Left by a run before: a plain open empties it the same way.
    assert.deepEqual(await readdir(await ContentStore.open(at).then((s) => s.dir)), []);
    await writeFile(join(at, 'again'), 'x');
    await store.remove();
    await assert.rejects(readdir(at), (e: NodeJS.ErrnoException) => e.code === 'ENOENT');
    await store.remove();
  });
});

describe("delta: the apply's content provider (storeProvider)", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tiu-delta-provider-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('fetches what its store lacks, neighbouring frames in one request, and hands over each file decoded', async () => {
    // A blob of one zstd frame per file, then a far-away file beyond the gap.
    const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
    const files = ['alpha', 'beta', 'gamma', 'delta'].map((n) => ({ n, data: Buffer.from(n.repeat(100)) }));
    const frames: Buffer[] = [];
    const entries: TreeEntry[] = [];
    let off = 0;
    const reg = (path: string, data: Buffer, offset: number, endOffset: number): TreeEntry => ({
      path,
      type: 'reg',
      mode: 0o644,
      uid: 0,
      gid: 0,
      mtimeNs: 0n,
      xattrs: {},
      size: data.length,
      digest: sha(data),
      source: { layer: 0, offset, endOffset },
    });
    for (const f of files) {
      const fr = zstdCompressSync(f.data);
      entries.push(reg(f.n, f.data, off, off + fr.length));
      frames.push(fr);
      off += fr.length;
    }
    const pad = Buffer.alloc(200_000);
    const farData = Buffer.from('far away');
    const far = zstdCompressSync(farData);
    entries.push(reg('far', farData, off + pad.length, off + pad.length + far.length));
    const blob = Buffer.concat([...frames, pad, far]);
    const target = new MemoryTarget();
    const desc: Descriptor = {
      mediaType: MediaType.OciLayerZstd,
      digest: sha(blob) as Descriptor['digest'],
      size: blob.length,
    };
    await target.push(desc, Readable.from([blob]));
    const requests: string[] = [];
    const fetchRange = target.fetchRange.bind(target);
    target.fetchRange = (d, s, e, o) => {
      requests.push(`${s}-${e}`);
      return fetchRange(d, s, e, o);
    };
    const empty: TreeEntry = { ...reg('empty', Buffer.alloc(0), 0, 0) };
    const store = await ContentStore.open(join(dir, 'store'));
    const got = new Map<string, string>();
    const take = async (e: TreeEntry, content: AsyncIterable<Buffer | Uint8Array> | VerifiedFile): Promise<void> => {
      if (isVerifiedFile(content)) {
        got.set(e.path, await readFile(content.verifiedFile, 'utf8'));
        return;
      }
      const parts: Buffer[] = [];
      for await (const c of content) parts.push(Buffer.from(c));
      got.set(e.path, Buffer.concat(parts).toString());
    };
    const p = storeProvider(target, [desc], store);
    await p.deliver([entries[0]!, entries[2]!, entries[3]!, entries[4]!, empty], take);
    assert.equal(requests.length, 2, requests.join(' '));
    assert.deepEqual(p.extra, {
      bytes: rangeBytes(coalesce([entries[0]!, entries[2]!, entries[3]!, entries[4]!])),
      requests: 2,
      files: 4,
    });
    assert.deepEqual(Object.fromEntries(got), {
      alpha: 'alpha'.repeat(100),
      gamma: 'gamma'.repeat(100),
      delta: 'delta'.repeat(100),
      far: 'far away',
      empty: '',
    });
    // What the store holds is not fetched again.
    got.clear();
    const again = storeProvider(target, [desc], store);
    await again.deliver([entries[2]!, entries[4]!], take);
    assert.equal(requests.length, 2);
    assert.deepEqual(again.extra, { bytes: 0, requests: 0, files: 0 });
    assert.deepEqual([...got.keys()].sort(), ['far', 'gamma']);
    // A file with content but no frame can't be served: a typed error, nothing handed over.
    got.clear();
    const noFrame: TreeEntry = { ...reg('noframe', Buffer.from('x'), 0, 0) };
    await assert.rejects(storeProvider(target, [desc], store).deliver([noFrame], take), code('DELTA_CONTENT_MISSING'));
    assert.equal(got.size, 0);
  });
});
