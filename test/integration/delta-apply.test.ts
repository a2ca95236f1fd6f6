/**
 * The file-level delta path (src/deploy/delta: prepareTransfer -> downloadTransfer ->
 * applyTransfer, the content from its store) on real btrfs, through its public functions:
 *
 * - a bundle of three zstd:chunked layers installed into an empty subvolume, and a snapshot of
 *   it updated to the next bundle, give the tree GNU tar extracts from the layers, file by file;
 *   the update downloads exactly the frames of the files the old tree lacks (as prepareTransfer
 *   said), reflinks the moved file, costs little exclusive disk and leaves the old tree as it was;
 * - an identical image downloads and writes nothing;
 * - content the store lacks at apply time is fetched then, verified; content in the store that
 *   does not match is refused by the executor;
 * - whiteouts and opaque directories are honoured by range as by whole layers, and whited-out
 *   files are not downloaded;
 * - hostile TOC entries are refused before a byte of content is fetched and nothing is written;
 *   a frame that does not match its TOC is refused before it is stored.
 *
 * The whole-layer path, the registry, the counting proxy and the update sequence around it are
 * in delta.test.ts; the planner and executor on their own in apply.test.ts.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { buildBundle, type BuildResult } from '../../src/bundle/build.ts';
import type { TreeEntry as BuildEntry } from '../../src/layer/entry.ts';
import { compareBytes as comparePaths } from '../../src/layer/paths.ts';
import { writeLayer } from '../../src/bundle/layer-writer.ts';
import type { FetchOptions } from '../../src/content/interfaces.ts';
import { MemoryTarget } from '../helpers/memory-target.ts';
import { applyTarLayers } from '../../src/deploy/apply/index.ts';
import {
  applyTransfer,
  ContentStore,
  downloadTransfer,
  prepareTransfer,
  rangeBytes,
  type DeltaTransfer,
} from '../../src/deploy/delta/index.ts';
import { layerOpeners } from '../../src/layer/openers.ts';
import { isTiuError, type ErrorCode } from '../../src/errors.ts';
import { run } from '../../src/host/exec.ts';
import type { Descriptor, ImageManifest } from '../../src/oci/types.ts';
import { chunkedLayer, pushLayers, type CraftedEntry } from '../helpers/chunked-layer.ts';
import { requireRoot } from '../helpers/env.ts';
import { exclusiveBytes, makeBtrfs, snapshot, subvolume, type TestBtrfs } from '../helpers/btrfs.ts';
import { makeTar, type TarSpec } from '../helpers/tarball.ts';
import { diffTrees, listing } from '../helpers/treecmp.ts';

const T = 1_700_000_000;
const big = randomBytes(768 * 1024);
const lib = randomBytes(96 * 1024);
const f = (name: string, content: Buffer | string, extra: Partial<TarSpec> = {}): TarSpec => ({
  name,
  content,
  mtime: T,
  ...extra,
});
const d = (name: string): TarSpec => ({ name, type: '5', mode: 0o755, mtime: T });
const common: TarSpec[] = [
  d('etc'),
  d('usr'),
  d('usr/bin'),
  d('usr/lib'),
  d('var'),
  d('var/lib'),
  f('usr/lib/libc.so', lib),
  f('usr/bin/sh', 'shell', { mode: 0o755 }),
];
const v1: TarSpec[] = [
  ...common,
  f('etc/os-release', 'ID=test\nVERSION_ID=1\n'),
  f('etc/motd', 'hello v1\n'),
  f('usr/lib/data.bin', big),
  f('var/lib/state', 'factory\n'),
];
const v2: TarSpec[] = [
  ...common,
  f('etc/os-release', 'ID=test\nVERSION_ID=2\n'),
  f('etc/motd', 'hello v2!\n'),
  d('usr/share'),
  f('usr/share/data.bin', big),
  f('usr/bin/new', randomBytes(10_000), { mode: 0o755 }),
  f('var/lib/state', 'factory\n'),
];

const sha = (b: Buffer | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const code = (c: ErrorCode) => (e: unknown) => isTiuError(e, c);
const nothing = { bytes: 0, requests: 0, files: 0 };

/** A source whose ranged reads are counted. */
class CountingTarget extends MemoryTarget {
  ranges: string[] = [];
  override fetchRange(
    desc: Descriptor,
    start: number,
    end: number,
    opts?: FetchOptions,
  ): ReturnType<MemoryTarget['fetchRange']> {
    this.ranges.push(`${desc.digest.slice(7, 15)}:${start}-${end}`);
    return super.fetchRange(desc, start, end, opts);
  }
}

describe('file-level delta path on btrfs: prepareTransfer, downloadTransfer, applyTransfer', function () {
  this.timeout(180_000);
  let fs: TestBtrfs;
  const target = new CountingTarget();
  let b1: BuildResult;
  let b2: BuildResult;
  let n = 0;

  /** Extract the layers of a build with GNU tar: the reference tree. */
  async function extractRef(b: BuildResult, into: string): Promise<void> {
    await mkdir(into, { recursive: true });
    for (const [i, l] of b.manifest.layers.entries()) {
      const file = join(fs.dir, `layer-${i}-${l.digest.slice(7, 19)}`);
      const chunks: Buffer[] = [];
      for await (const c of await target.fetch(l)) chunks.push(c as Buffer);
      await writeFile(file, Buffer.concat(chunks));
      await run('tar', ['--zstd', '--xattrs', '--xattrs-include=*', '--numeric-owner', '-xpf', file, '-C', into]);
    }
  }

  async function prepare(manifest: ImageManifest, oldRoot: string, maxGap?: number): Promise<DeltaTransfer> {
    const t = await prepareTransfer({
      source: target,
      manifest,
      oldRoot,
      preserve: [],
      mode: 'delta',
      ...(maxGap !== undefined ? { coalesce: { maxGap } } : {}),
    });
    assert.ok(t.path === 'delta');
    return t;
  }

  const newStore = (): Promise<ContentStore> => ContentStore.open(join(fs.dir, `store-${++n}`));

  before(async function () {
    requireRoot(this);
    fs = await makeBtrfs(384);
    for (const [name, spec] of [
      ['src1', v1],
      ['src2', v2],
    ] as const) {
      const dir = join(fs.dir, name);
      await mkdir(dir);
      await writeFile(dir + '.tar', makeTar(spec));
      await run('tar', ['--numeric-owner', '-xpf', dir + '.tar', '-C', dir]);
    }
    b1 = await buildBundle({ kind: 'directory', path: join(fs.dir, 'src1') }, target, 'v1', {
      layers: 3,
      sourceDateEpoch: T,
    });
    b2 = await buildBundle({ kind: 'directory', path: join(fs.dir, 'src2') }, target, 'v2', {
      layers: 3,
      sourceDateEpoch: T,
    });
    await extractRef(b1, join(fs.mnt, 'ref1'));
    await extractRef(b2, join(fs.mnt, 'ref2'));
  });
  after(async () => {
    await fs?.cleanup();
  });

  it('installs v1 into an empty subvolume by range: the tree GNU tar extracts from the layers', async () => {
    const sys1 = join(fs.mnt, 'sys1');
    await subvolume(sys1);
    const t = await prepare(b1.manifest, sys1);
    const store = await newStore();
    await downloadTransfer(t, store);
    const a = await applyTransfer(t, sys1, store, { preserve: [] });
    assert.deepEqual(a.extra, nothing);
    assert.deepEqual(await diffTrees(sys1, join(fs.mnt, 'ref1'), { ignoreRootMeta: true }), []);
  });

  it('updates a snapshot of v1 to v2 downloading exactly the frames v1 lacks: the GNU tar tree, the moved file reflinked, v1 untouched', async () => {
    const sys1 = join(fs.mnt, 'sys1');
    const v1before = await listing(sys1);
    const t = await prepare(b2.manifest, sys1, 0);
    // Only content v1 does not have is fetched, each once: the moved data.bin is not.
    const v1content = new Set(v1.filter((s) => s.content !== undefined).map((s) => sha(s.content!)));
    const v2new = new Set(
      v2.filter((s) => s.content !== undefined && !v1content.has(sha(s.content))).map((s) => sha(s.content!)),
    );
    assert.deepEqual(new Set(t.fetch.map((e) => e.digest)), v2new);
    // With no gap allowed, the ranges are the fetched files' frames and nothing else.
    const frames = new Map(
      t.fetch.map((e) => [`${e.source!.layer}:${e.source!.offset}`, e.source!.endOffset! - e.source!.offset!]),
    );
    assert.equal(
      rangeBytes(t.ranges),
      [...frames.values()].reduce((a, b) => a + b, 0),
    );
    assert.equal(t.report.downloadBytes, t.report.tocBytes + rangeBytes(t.ranges));

    target.ranges = [];
    const sys2 = join(fs.mnt, 'sys2');
    await snapshot(sys1, sys2);
    const store = await newStore();
    const got = await downloadTransfer(t, store);
    assert.deepEqual(got, { bytes: rangeBytes(t.ranges), requests: t.ranges.length, files: v2new.size });
    assert.equal(target.ranges.length, t.ranges.length, 'one request a range, no TOC fetched again');
    const layerBytes = b2.manifest.layers.reduce((a, l) => a + l.size, 0);
    assert.ok(t.report.downloadBytes < layerBytes / 3, `${t.report.downloadBytes} of ${layerBytes}`);

    const requests = t.ranges.length;
    const a = await applyTransfer(t, sys2, store, { preserve: [] });
    assert.deepEqual(a.extra, nothing, 'the download had all the apply needed');
    assert.equal(target.ranges.length, requests);
    // The apply used the transfer up: its entries do not outlive the apply in the update's run state.
    assert.deepEqual([t.tree, t.fetch, t.frames, t.ranges, t.sources], [undefined, [], [], [], []]);
    assert.deepEqual(await diffTrees(sys2, join(fs.mnt, 'ref2'), { ignoreRootMeta: true }), []);
    assert.ok(a.report.reflinked.bytes >= big.length, 'the moved data.bin is a reflink');
    assert.ok((await exclusiveBytes(sys2)) < 256 * 1024);
    assert.equal(await listing(sys1), v1before);
  });

  it('an identical image downloads nothing and writes nothing', async () => {
    const t = await prepare(b2.manifest, join(fs.mnt, 'sys2'));
    assert.deepEqual(t.ranges, []);
    assert.equal(t.report.contentBytes, 0);
    assert.equal(
      t.report.files?.changed,
      0,
      'nothing to change, not even an mtime (the executor sets them to the microsecond)',
    );
    target.ranges = [];
    const sys3 = join(fs.mnt, 'sys3');
    await snapshot(join(fs.mnt, 'sys2'), sys3);
    const store = await newStore();
    assert.deepEqual(await downloadTransfer(t, store), nothing);
    const a = await applyTransfer(t, sys3, store, { preserve: [] });
    const r = a.report;
    assert.equal(
      r.written.count + r.reflinked.count + r.deleted.count + r.created.count + r.linked.count + r.metadataFixed.count,
      0,
      JSON.stringify(r),
    );
    assert.deepEqual(a.extra, nothing);
    assert.deepEqual(target.ranges, []);
    assert.ok((await exclusiveBytes(sys3)) < 64 * 1024);
  });

  it('content the store lacks at apply time is fetched then, verified; files left in a store from before are not trusted', async () => {
    const t = await prepare(b2.manifest, join(fs.mnt, 'sys1'));
    const sys4 = join(fs.mnt, 'sys4');
    await snapshot(join(fs.mnt, 'sys1'), sys4);
    const fetched = t.fetch;
    const a = await applyTransfer(t, sys4, await newStore(), { preserve: [] });
    assert.equal(a.extra.files, new Set(fetched.map((e) => e.digest)).size);
    assert.equal(a.extra.bytes, t.report.contentBytes);
    assert.deepEqual(await diffTrees(sys4, join(fs.mnt, 'ref2'), { ignoreRootMeta: true }), []);

    // The apply reflinks store files without reading them again, so the store holds only what
    // this process verified: a file left under a digest's name (an interrupted run, or anyone
    // with access to /var) is gone once the store opens, and its content is fetched again.
    const dir = join(fs.dir, 'store-leftover');
    const earlier = await ContentStore.open(dir);
    const victim = fetched.find((e) => e.size > 0)!;
    await writeFile(earlier.path(victim.digest!), Buffer.alloc(victim.size, 0x41));
    const store = await ContentStore.open(dir);
    assert.equal(store.has(victim.digest!), false);
    assert.deepEqual(await readdir(dir), []);
    const sys5 = join(fs.mnt, 'sys5');
    await snapshot(join(fs.mnt, 'sys1'), sys5);
    // A transfer is used up by its apply: the same plan made again.
    const b = await applyTransfer(await prepare(b2.manifest, join(fs.mnt, 'sys1')), sys5, store, { preserve: [] });
    assert.equal(b.extra.files, a.extra.files);
    assert.deepEqual(await diffTrees(sys5, join(fs.mnt, 'ref2'), { ignoreRootMeta: true }), []);
  });

  it('whiteouts and opaque directories: the same tree by range as by whole layers, whited-out files not downloaded', async () => {
    const layer = async (i: number, files: [string, string | null][]): Promise<Descriptor> => {
      const entries = files.map(([path, content]): BuildEntry =>
        content === null
          ? { path, type: 'dir', mode: 0o755, uid: 0, gid: 0, mtimeNs: BigInt(T) * 1_000_000_000n, size: 0, xattrs: {} }
          : {
              path,
              type: 'reg',
              mode: 0o644,
              uid: 0,
              gid: 0,
              mtimeNs: BigInt(T) * 1_000_000_000n,
              size: Buffer.byteLength(content),
              xattrs: {},
              content: { data: Buffer.from(content) },
            },
      );
      entries.sort((x, y) => comparePaths(x.path, y.path));
      const file = join(fs.dir, `wh-layer-${i}`);
      const r = await writeLayer(entries, file, { compression: 'zstd' });
      await target.push(r.descriptor, createReadStream(file));
      return r.descriptor;
    };
    const layers = [
      await layer(0, [
        ['a', null],
        ['a/1', 'one'],
        ['a/2', 'two'],
        ['b', null],
        ['b/x', 'x'],
        ['b/y', 'y'],
        ['c', 'c'],
        ['d', null],
        ['d/deep', 'deep'],
      ]),
      await layer(1, [
        ['a', null],
        ['a/.wh.1', ''],
        ['b', null],
        ['b/.wh..wh..opq', ''],
        ['b/z', 'z'],
        ['.wh.c', ''],
        ['d', 'now a file'],
      ]),
      await layer(2, [
        ['c', 'c is back'],
        ['a', null],
        ['a/3', 'three'],
      ]),
    ];
    const manifest: ImageManifest = { ...b1.manifest, layers };
    const byRange = join(fs.mnt, 'wh-range');
    const byTar = join(fs.mnt, 'wh-tar');
    for (const root of [byRange, byTar]) {
      await subvolume(root);
      await writeFile(join(root, 'stale'), 'from the old tree');
    }
    const t = await prepare(manifest, byRange);
    assert.deepEqual(t.fetch.map((e) => e.path).sort(), ['a/2', 'a/3', 'b/z', 'c', 'd']);
    const store = await newStore();
    await downloadTransfer(t, store);
    await applyTransfer(t, byRange, store, { preserve: [] });
    assert.deepEqual((await readdir(byRange, { recursive: true })).sort(), ['a', 'a/2', 'a/3', 'b', 'b/z', 'c', 'd']);
    assert.equal(await readFile(join(byRange, 'c'), 'utf8'), 'c is back');
    assert.equal(await readFile(join(byRange, 'd'), 'utf8'), 'now a file');
    // The whole-layer path of the update (its verified layer streams, the tar engine): the same tree.
    await applyTarLayers(byTar, layerOpeners(target, manifest));
    assert.deepEqual(await diffTrees(byRange, byTar, { ignoreRootMeta: true }), []);
  });

  it('a file in several frames (containers/storage chunks) is fetched whole; a chunk with no frame of its own takes the whole-layer path', async () => {
    const parts = [randomBytes(3000), randomBytes(2000), Buffer.from('tail\n')];
    const whole = Buffer.concat(parts);
    const manifest = await pushLayers(target, [
      chunkedLayer([
        { toc: { type: 'reg', name: 'big', mode: 0o644, size: whole.length, digest: sha(whole) }, content: parts[0] },
        { toc: { type: 'chunk', name: 'big' }, content: parts[1] },
        { toc: { type: 'chunk', name: 'big' }, content: parts[2] },
        { toc: { type: 'reg', name: 'small', mode: 0o644 }, content: Buffer.from('small\n') },
      ]),
    ]);
    const root = join(fs.mnt, 'chunked');
    await subvolume(root);
    const t = await prepare(manifest, root);
    const big = t.fetch.find((e) => e.path === 'big')!;
    const small = t.fetch.find((e) => e.path === 'small')!;
    assert.equal(big.source!.endOffset, small.source!.offset, 'the range of big covers its three frames');
    const store = await newStore();
    await downloadTransfer(t, store);
    await applyTransfer(t, root, store, { preserve: [] });
    assert.deepEqual(await readFile(join(root, 'big')), whole);
    assert.equal(await readFile(join(root, 'small'), 'utf8'), 'small\n');

    const frameless = await pushLayers(target, [
      chunkedLayer([
        { toc: { type: 'reg', name: 'big', mode: 0o644, size: whole.length, digest: sha(whole) }, content: parts[0] },
        { toc: { type: 'chunk', name: 'big', chunkType: 'zeros' } },
      ]),
    ]);
    const w = await prepareTransfer({ source: target, manifest: frameless, oldRoot: root, preserve: [] });
    assert.equal(w.path, 'whole-layer');
    assert.match(w.report.reason ?? '', /chunk of big has no frame of its own/);
  });

  describe('hostile tables of contents are refused before any content is fetched, and nothing is written', () => {
    let outside: string;
    let before: string;
    let root: string;
    beforeEach(async () => {
      outside = join(fs.dir, 'outside');
      await mkdir(outside, { recursive: true });
      await writeFile(join(outside, 'passwd'), 'root:x:0:0::/root:/bin/sh\n');
      before = await listing(outside);
      root = join(fs.mnt, `hostile-${++n}`);
      await subvolume(root);
      await writeFile(join(root, 'old'), 'old tree\n');
    });
    const reg = (name: string, content: string): CraftedEntry => ({
      toc: { type: 'reg', name, mode: 0o644 },
      content: Buffer.from(content),
    });
    const cases: { name: string; entries: () => CraftedEntry[]; code: ErrorCode }[] = [
      { name: '../ escape', entries: () => [reg('../../outside/pwned', 'x')], code: 'PATH_UNSAFE' },
      { name: 'absolute path', entries: () => [reg('/tmp/pwned', 'x')], code: 'PATH_UNSAFE' },
      {
        name: 'absolute symlink then a write through it',
        entries: () => [{ toc: { type: 'symlink', name: 'l', linkName: outside } }, reg('l/passwd', 'pwned\n')],
        code: 'PATH_UNSAFE',
      },
      {
        name: 'relative symlink up then a write through it',
        entries: () => [
          { toc: { type: 'symlink', name: 'l', linkName: '../../../../../../../..' + outside } },
          reg('l/passwd', 'pwned\n'),
        ],
        code: 'PATH_UNSAFE',
      },
      {
        name: 'hardlink to a file outside (../)',
        entries: () => [{ toc: { type: 'hardlink', name: 'h', linkName: '../../outside/passwd' } }],
        code: 'PATH_UNSAFE',
      },
      {
        name: 'hardlink to an absolute path not in the tree',
        entries: () => [{ toc: { type: 'hardlink', name: 'h', linkName: join(outside, 'passwd') } }],
        code: 'HARDLINK_INVALID',
      },
      {
        name: 'the root itself as a symlink',
        entries: () => [{ toc: { type: 'symlink', name: './', linkName: outside } }, reg('passwd', 'pwned\n')],
        code: 'PATH_UNSAFE',
      },
      {
        name: 'device where a directory is expected',
        entries: () => [{ toc: { type: 'char', name: 'd', devMajor: 1, devMinor: 3 } }, reg('d/x', 'x')],
        code: 'PATH_UNSAFE',
      },
      {
        name: 'a chunk that is not the next frame of its file',
        entries: () => [reg('f', 'some content'), { toc: { type: 'chunk', name: 'f', offset: 1000, endOffset: 1010 } }],
        code: 'ENTRY_INVALID',
      },
      {
        name: 'a regular file without a digest',
        entries: () => [{ toc: { type: 'reg', name: 'f', size: 5, offset: 0, endOffset: 10 } }],
        code: 'ENTRY_INVALID',
      },
    ];
    for (const c of cases) {
      it(`${c.name} -> ${c.code}`, async () => {
        const manifest = await pushLayers(target, [chunkedLayer(c.entries())]);
        target.ranges = [];
        await assert.rejects(prepareTransfer({ source: target, manifest, oldRoot: root, preserve: [] }), code(c.code));
        assert.equal(target.ranges.length, 1, `only the TOC was read: ${target.ranges.join(' ')}`);
        assert.equal(await listing(outside), before);
        assert.deepEqual(await readdir(root), ['old']);
      });
    }

    it('a frame that does not match its TOC (digest or size) is refused before it is stored', async () => {
      for (const toc of [{ digest: sha('other content') }, { size: 3 }]) {
        const manifest = await pushLayers(target, [
          chunkedLayer([
            reg('good', 'good\n'),
            { toc: { type: 'reg', name: 'bad', mode: 0o644, ...toc }, content: Buffer.from('the real content\n') },
          ]),
        ]);
        const t = await prepare(manifest, root);
        const store = await newStore();
        await assert.rejects(downloadTransfer(t, store), code('DELTA_FILE_MISMATCH'));
        assert.ok(
          !(await readdir(store.dir)).some((x) => x === t.fetch.find((e) => e.path === 'bad')!.digest!.slice(7)),
          'the bad file is not in the store',
        );
        assert.deepEqual(await readdir(root), ['old']);
      }
    });

    it('a frame range outside the blob is refused before anything is stored', async () => {
      const manifest = await pushLayers(target, [
        chunkedLayer([
          {
            toc: { type: 'reg', name: 'far', mode: 0o644, offset: 1 << 20, endOffset: (1 << 20) + 10 },
            content: Buffer.from('far away\n'),
          },
        ]),
      ]);
      const t = await prepare(manifest, root);
      const store = await newStore();
      await assert.rejects(downloadTransfer(t, store), code('RANGE_INVALID'));
      assert.deepEqual(await readdir(store.dir), []);
      assert.deepEqual(await readdir(root), ['old']);
    });
  });
});
