import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { zstdCompressSync } from 'node:zlib';
import { zstdDecompressStream } from '../../src/layer/zstd-frames.ts';
import { writeLayer } from '../../src/bundle/layer-writer.ts';
import { readTocFromFooter } from '../../src/layer/toc.ts';
import { readTar } from '../../src/layer/tar.ts';
import { scanDirectory } from '../../src/bundle/source-dir.ts';
import { planLayers } from '../../src/bundle/layers.ts';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { run } from '../../src/host/exec.ts';
import { isTiuError, type ErrorCode } from '../../src/errors.ts';
import {
  applyFromToc,
  applyTarLayers,
  entriesFromTar,
  tarLayerProvider,
  openerProvider,
  tocToEntries,
  scanTree,
  planApply,
  ContentIndex,
  flattenLayers,
  executePlan,
  type ContentProvider,
  type TreeEntry,
} from '../../src/deploy/apply/index.ts';
import {
  ContentStore,
  downloadTransfer,
  prepareTransfer,
  applyTransfer,
  storeProvider,
} from '../../src/deploy/delta/index.ts';
import { MemoryTarget } from '../helpers/memory-target.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import type { Descriptor, ImageManifest } from '../../src/oci/types.ts';
import { requireRoot } from '../helpers/env.ts';
import { makeBtrfs, snapshot, subvolume, exclusiveBytes, type TestBtrfs } from '../helpers/btrfs.ts';
import { makeTar, type TarSpec } from '../helpers/tarball.ts';
import { diffTrees, listing } from '../helpers/treecmp.ts';

const CAP_NET_RAW = Buffer.from([1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
const T1 = 1_700_000_000;
const T2 = 1_710_000_000;

const tool = randomBytes(64 * 1024);
const big = randomBytes(1024 * 1024);
const ping = randomBytes(20 * 1024);
const hlink = randomBytes(30 * 1024);
const libx = randomBytes(40 * 1024);
const sparse = Buffer.concat([randomBytes(4096), Buffer.alloc(2 * 1024 * 1024)]);
const newfile = randomBytes(100 * 1024);
const holes = Buffer.concat([Buffer.from('head'), Buffer.alloc(3 * 1024 * 1024), Buffer.from('tail')]);

const dir = (name: string, extra: Partial<TarSpec> = {}): TarSpec => ({
  name,
  type: '5',
  mode: 0o755,
  mtime: T1,
  ...extra,
});
const file = (name: string, content: Buffer | string, extra: Partial<TarSpec> = {}): TarSpec => ({
  name,
  content,
  mtime: T1,
  ...extra,
});

const v1: TarSpec[] = [
  dir('etc'),
  file('etc/hostname', 'v1host\n'),
  file('etc/keep.conf', 'same\n'),
  file('etc/owned', 'owned\n', { uid: 1000, gid: 1000 }),
  file('etc/mtime-only', 'mt\n'),
  dir('usr'),
  dir('usr/bin'),
  file('usr/bin/tool', tool, { mode: 0o755 }),
  file('usr/bin/ping', ping, { mode: 0o4755, xattrs: { 'security.capability': CAP_NET_RAW } }),
  dir('usr/lib'),
  file('usr/lib/big.bin', big),
  file('usr/lib/ha', hlink),
  { name: 'usr/lib/hb', type: '1', linkname: 'usr/lib/ha', mtime: T1 },
  dir('usr/lib/hd'),
  file('usr/lib/hd/x', 'x'),
  file('usr/lib/libx.so.1', libx),
  { name: 'usr/lib/libx.so', type: '2', linkname: 'libx.so.1', mtime: T1 },
  file('usr/lib/sparse', sparse),
  dir('usr/share'),
  dir('usr/share/doc'),
  file('usr/share/doc/old.txt', 'old docs\n'),
  dir('opt2'),
  file('opt2/thing', 'thing\n'),
  file('data', 'data\n'),
  dir('dev'),
  { name: 'dev/null', type: '3', devmajor: 1, devminor: 3, mode: 0o666, mtime: T1 },
  { name: 'dev/fifo', type: '6', mode: 0o600, mtime: T1 },
];

const v2: TarSpec[] = [
  dir('etc', { mtime: T2 }),
  file('etc/hostname', 'v2host\n'),
  file('etc/keep.conf', 'same\n'),
  file('etc/owned', 'owned\n'),
  file('etc/mtime-only', 'mt\n', { mtime: T2 }),
  file('etc/sel', 'labelled\n', {
    xattrs: { 'security.selinux': 'system_u:object_r:etc_t:s0\0', 'user.note': Buffer.from([0, 1, 2, 255]) },
  }),
  dir('usr'),
  dir('usr/bin'),
  file('usr/bin/tool', tool, { mode: 0o755 }),
  file('usr/bin/ping', ping, { mode: 0o4755, uid: 1000, gid: 1000, xattrs: { 'security.capability': CAP_NET_RAW } }),
  dir('usr/lib', { mtime: T2 }),
  file('usr/lib/ha', hlink),
  { name: 'usr/lib/hb', type: '1', linkname: 'usr/lib/ha' },
  { name: 'usr/lib/hc', type: '1', linkname: 'usr/lib/ha' },
  { name: 'usr/lib/hd', type: '1', linkname: 'usr/lib/ha' },
  file('usr/lib/libx.so.2', libx),
  { name: 'usr/lib/libx.so', type: '2', linkname: 'libx.so.2', mtime: T2 },
  file('usr/lib/sparse', sparse),
  dir('usr/lib64'),
  file('usr/lib64/big.bin', big),
  dir('usr/new'),
  file('usr/new/newfile', newfile, { mode: 0o600, uid: 12, gid: 34 }),
  file('usr/new/holes', holes),
  { name: 'opt2', type: '2', linkname: 'usr/lib', mtime: T1 },
  dir('data'),
  file('data/inner', 'x\n'),
  dir('dev'),
  { name: 'dev/null', type: '3', devmajor: 1, devminor: 3, mode: 0o666, mtime: T1 },
  { name: 'dev/fifo', type: '6', mode: 0o600, mtime: T1 },
  { name: 'dev/sda', type: '4', devmajor: 8, devminor: 0, mode: 0o660, gid: 6, mtime: T1 },
];

async function gnuExtract(tar: Buffer, into: string): Promise<void> {
  await mkdir(into, { recursive: true });
  const f = into + '.tar';
  await writeFile(f, tar);
  await run('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-xpf', f, '-C', into]);
}

async function tocEntries(tar: Buffer, layer = 0): Promise<TreeEntry[]> {
  return entriesFromTar(Readable.from([tar]), layer);
}

describe('deploy/apply on btrfs (integration)', function () {
  this.timeout(120_000);
  let fs: TestBtrfs;
  let v1tar: Buffer;
  let v2tar: Buffer;
  let ref2: string;

  before(async function () {
    requireRoot(this);
    fs = await makeBtrfs(512);
    v1tar = makeTar(v1);
    v2tar = makeTar(v2);
    await subvolume(join(fs.mnt, 'v1'));
    await gnuExtract(v1tar, join(fs.mnt, 'v1'));
    ref2 = join(fs.mnt, 'ref2');
    await gnuExtract(v2tar, ref2);
  });
  after(async () => {
    await fs?.cleanup();
  });

  it('the reference extraction carries what the test relies on (capability, selinux label, devices)', async () => {
    const r = await run('getfattr', [
      '-h',
      '-d',
      '-m',
      '-',
      '-e',
      'hex',
      join(ref2, 'usr/bin/ping'),
      join(ref2, 'etc/sel'),
    ]);
    assert.match(r.stdout, /security\.capability=0x0100000200200000/);
    assert.match(r.stdout, /security\.selinux=/);
  });

  it('TOC path: v1 -> v2 gives the v2 tree file by file, reflinks the moved file, leaves v1 untouched', async () => {
    const v1before = await listing(join(fs.mnt, 'v1'));
    const target = join(fs.mnt, 'toc');
    await snapshot(join(fs.mnt, 'v1'), target);
    const idx = join(fs.dir, 'index.json');
    const res = await applyFromToc(
      target,
      [await tocEntries(v2tar)],
      tarLayerProvider(() => Promise.resolve(Readable.from([v2tar]))),
      { indexFile: idx },
    );
    const diffs = await diffTrees(target, ref2, { ignoreRootMeta: true });
    assert.deepEqual(diffs, []);
    const rep = res.report!;
    // moved big.bin and renamed libx.so.2 come from the old tree; ha gets its own inode
    // (its hardlink group changed) by a reflink of itself
    assert.equal(rep.reflinked.bytes, big.length + libx.length + hlink.length);
    // only these are new content
    const fresh = {
      'data/inner': 'x\n'.length,
      'etc/hostname': 'v2host\n'.length,
      'etc/sel': 'labelled\n'.length,
      'usr/new/holes': holes.length,
      'usr/new/newfile': newfile.length,
    };
    assert.deepEqual(res.plan.fetch.map((e) => e.path).sort(), Object.keys(fresh));
    assert.equal(rep.written.count, 5);
    // zero blocks became holes
    assert.ok((await stat(join(target, 'usr/new/holes'))).blocks * 512 < 64 * 1024);
    assert.equal(
      rep.written.bytes,
      Object.values(fresh).reduce((a, b) => a + b),
    );
    assert.ok(rep.kept.count >= 6, `kept ${rep.kept.count}`);
    assert.ok(rep.metadataFixed.count >= 3);
    assert.ok(rep.deleted.count >= 5);
    // disk: the reflinked MiB stays shared; only about the new content is exclusive
    const excl = await exclusiveBytes(target);
    assert.ok(excl < newfile.length + 200 * 1024, `exclusive ${excl}`);
    assert.equal(await listing(join(fs.mnt, 'v1')), v1before);
  });

  it("TOC path with ranged fetches (one zstd frame per file, the delta's storeProvider) fetches only the files it lacks", async () => {
    // A blob where each file's content is its own zstd frame, and entries pointing into it.
    const frames: Buffer[] = [];
    const ranges = new Map<string, [number, number]>();
    let off = 0;
    for await (const t of readTar(Readable.from([v2tar]))) {
      if (t.type !== 'reg') continue;
      const parts: Buffer[] = [];
      for await (const c of t.body()) parts.push(c);
      const frame = zstdCompressSync(Buffer.concat(parts));
      frames.push(frame);
      ranges.set(t.name, [off, off + frame.length]);
      off += frame.length;
    }
    const blob = Buffer.concat(frames);
    const source = new MemoryTarget();
    const desc: Descriptor = {
      mediaType: MediaType.OciLayerZstd,
      digest: `sha256:${createHash('sha256').update(blob).digest('hex')}`,
      size: blob.length,
    };
    await source.push(desc, Readable.from([blob]));
    let fetched = 0;
    const fetchRange = source.fetchRange.bind(source);
    source.fetchRange = (d, start, end, o) => {
      assert.equal(d.digest, desc.digest);
      fetched += end - start;
      return fetchRange(d, start, end, o);
    };
    const entries = (await tocEntries(v2tar)).map((e) =>
      e.type === 'reg'
        ? { ...e, source: { layer: 0, offset: ranges.get(e.path)![0], endOffset: ranges.get(e.path)![1] } }
        : e,
    );
    const target = join(fs.mnt, 'ranged');
    await snapshot(join(fs.mnt, 'v1'), target);
    const store = await ContentStore.open(join(fs.dir, 'ranged-store'));
    const res = await applyFromToc(
      target,
      [entries],
      storeProvider(source, [desc], store, { coalesce: { maxGap: 0 } }),
    );
    assert.deepEqual(await diffTrees(target, ref2, { ignoreRootMeta: true }), []);
    const want = res.plan.fetch.map((e) => ranges.get(e.path)!).reduce((a, [s, e]) => a + e - s, 0);
    assert.equal(res.plan.fetch.length, 5);
    assert.equal(fetched, want);
    assert.ok(fetched < blob.length / 4, `fetched ${fetched} of ${blob.length}`);
  });

  it("applies a layer written by tiu's bundle writer, by its table of contents (ranged) and as a whole stream", async () => {
    const layerFile = join(fs.dir, 'v2.layer');
    const built = await writeLayer(await scanDirectory(ref2), layerFile, { compression: 'zstd' });
    const fh = await open(layerFile);
    try {
      const fetch = async (start: number, end: number): Promise<Buffer> => {
        const b = Buffer.alloc(end - start);
        await fh.read(b, 0, end - start, start);
        return b;
      };
      const toc = await readTocFromFooter(fetch, built.descriptor.size, built.descriptor.annotations);
      const entries = tocToEntries(toc, 0);
      // By range, the product's delta path: prepare against v1, download, apply to a snapshot of v1.
      const source = new MemoryTarget();
      await source.push(built.descriptor, createReadStream(layerFile));
      let fetched = 0;
      const fetchRange = source.fetchRange.bind(source);
      source.fetchRange = (d, start, end, o) => {
        fetched += end - start;
        return fetchRange(d, start, end, o);
      };
      const config: Descriptor = {
        mediaType: MediaType.OciConfig,
        digest: `sha256:${createHash('sha256').update('{}').digest('hex')}`,
        size: 2,
      };
      const manifest: ImageManifest = {
        schemaVersion: 2,
        mediaType: MediaType.OciManifest,
        config,
        layers: [built.descriptor],
      };
      const t = await prepareTransfer({ source, manifest, oldRoot: join(fs.mnt, 'v1'), preserve: [] });
      assert.equal(t.path, 'delta', t.report.reason);
      assert.ok(t.path === 'delta');
      const ranged = join(fs.mnt, 'bundle-ranged');
      await snapshot(join(fs.mnt, 'v1'), ranged);
      const store = await ContentStore.open(join(fs.dir, 'bundle-store'));
      const got = await downloadTransfer(t, store);
      const res = await applyTransfer(t, ranged, store, { preserve: [] });
      assert.deepEqual(await diffTrees(ranged, ref2, { ignoreRootMeta: true }), []);
      // The apply's plan writes the 5 files; it lists none to fetch (the store delivers by action).
      assert.equal(res.plan.summary.write.count, 5);
      assert.deepEqual(res.plan.fetch, []);
      assert.equal(got.files, 5);
      assert.deepEqual(res.extra, { bytes: 0, requests: 0, files: 0 }, 'the download had all the apply needed');
      assert.equal(fetched, t.report.downloadBytes, 'TOC and frames, as prepareTransfer predicted');
      assert.ok(fetched < built.descriptor.size / 4, `fetched ${fetched} of ${built.descriptor.size}`);
      const whole = join(fs.mnt, 'bundle-whole');
      await snapshot(join(fs.mnt, 'v1'), whole);
      await applyFromToc(
        whole,
        [entries],
        tarLayerProvider(() => Promise.resolve(zstdDecompressStream(createReadStream(layerFile)))),
      );
      assert.deepEqual(await diffTrees(whole, ref2, { ignoreRootMeta: true }), []);
    } finally {
      await fh.close();
    }
  });

  it('layers that each carry their parent directories (tiu build): one directory, counted once, on every path', async () => {
    const tree = await scanDirectory(ref2);
    const plan = planLayers(tree, 4);
    const distinct = new Set(plan.flat().map((e) => e.path));
    assert.ok(plan.length >= 3, `${plan.length} layers`);
    assert.ok(plan.filter((l) => l.some((e) => e.path === 'usr')).length >= 2, 'directories repeat across layers');
    const files = plan.map((_, i) => join(fs.dir, `parents-${i}.layer`));
    const built = await Promise.all(plan.map((l, i) => writeLayer(l, files[i]!, { compression: 'zstd' })));
    const whole = (i: number) => zstdDecompressStream(createReadStream(files[i]!));
    const tocs: TreeEntry[][] = [];
    for (const [i, b] of built.entries()) {
      const fh = await open(files[i]!);
      try {
        const fetch = async (start: number, end: number) => {
          const buf = Buffer.alloc(end - start);
          await fh.read(buf, 0, end - start, start);
          return buf;
        };
        tocs.push(tocToEntries(await readTocFromFooter(fetch, b.descriptor.size, b.descriptor.annotations), i));
      } finally {
        await fh.close();
      }
    }
    const total = (r: NonNullable<Awaited<ReturnType<typeof applyFromToc>>['report']>) =>
      r.kept.count + r.metadataFixed.count + r.reflinked.count + r.written.count + r.created.count + r.linked.count;
    // The reference: the same tree as one layer, every entry listed once.
    const oneFile = join(fs.dir, 'parents-one.layer');
    await writeLayer(planLayers(tree, 1)[0]!, oneFile, { compression: 'zstd' });
    const oneTarget = join(fs.mnt, 'parents-one');
    await subvolume(oneTarget);
    const once = await applyTarLayers(oneTarget, [() => zstdDecompressStream(createReadStream(oneFile))]);
    assert.equal(total(once), distinct.size, JSON.stringify(once));
    // Onto an empty subvolume: every entry made once, as from the single layer.
    const tocTarget = join(fs.mnt, 'parents-toc');
    await subvolume(tocTarget);
    const viaToc = (
      await applyFromToc(
        tocTarget,
        tocs,
        tarLayerProvider((i) => Promise.resolve(whole(i))),
      )
    ).report!;
    assert.deepEqual(await diffTrees(tocTarget, ref2, { ignoreRootMeta: true }), []);
    // (the TOC plan also counts the root it keeps)
    assert.equal(total(viaToc), distinct.size + viaToc.kept.count, JSON.stringify(viaToc));
    assert.equal(viaToc.kept.count, 1);
    const tarTarget = join(fs.mnt, 'parents-tar');
    await subvolume(tarTarget);
    const viaTar = await applyTarLayers(
      tarTarget,
      plan.map((_, i) => () => whole(i)),
    );
    assert.deepEqual(await diffTrees(tarTarget, ref2, { ignoreRootMeta: true }), []);
    assert.deepEqual(
      [viaTar.created, viaTar.written, viaTar.linked, viaTar.kept],
      [once.created, once.written, once.linked, once.kept],
    );
    assert.equal(viaTar.kept.count, 0, 'a directory of an earlier layer is not "kept" again');
    // The same layers again onto their own result: nothing made, every entry counted once.
    const again = await applyTarLayers(
      tarTarget,
      plan.map((_, i) => () => whole(i)),
    );
    assert.equal(total(again), distinct.size, JSON.stringify(again));
    assert.deepEqual([again.written.count, again.created.count], [0, 0]);
    // The delta path (TOCs by range, frames into the store), against v1.
    const source = new MemoryTarget();
    for (const [i, b] of built.entries()) await source.push(b.descriptor, createReadStream(files[i]!));
    const config: Descriptor = {
      mediaType: MediaType.OciConfig,
      digest: `sha256:${createHash('sha256').update('{}').digest('hex')}`,
      size: 2,
    };
    const manifest: ImageManifest = {
      schemaVersion: 2,
      mediaType: MediaType.OciManifest,
      config,
      layers: built.map((b) => b.descriptor),
    };
    const t = await prepareTransfer({ source, manifest, oldRoot: join(fs.mnt, 'v1'), preserve: [] });
    assert.ok(t.path === 'delta', t.report.reason);
    const deltaTarget = join(fs.mnt, 'parents-delta');
    await snapshot(join(fs.mnt, 'v1'), deltaTarget);
    const store = await ContentStore.open(join(fs.dir, 'parents-store'));
    await downloadTransfer(t, store);
    const res = await applyTransfer(t, deltaTarget, store, { preserve: [] });
    assert.deepEqual(await diffTrees(deltaTarget, ref2, { ignoreRootMeta: true }), []);
    assert.equal(total(res.report), distinct.size + 1, JSON.stringify(res.report)); // and the root
  });

  it('a provider that delivers wrong bytes is caught by the digest check', async () => {
    const target = join(fs.mnt, 'wrong-bytes');
    await snapshot(join(fs.mnt, 'v1'), target);
    await assert.rejects(
      applyFromToc(
        target,
        [await tocEntries(v2tar)],
        openerProvider((e) => Readable.from([Buffer.alloc(e.size, 1)])),
      ),
      (e: unknown) => isTiuError(e, 'DIGEST_MISMATCH'),
    );
  });

  it('TOC path: applying the same tree again keeps everything, writes nothing, hashes nothing (content index)', async () => {
    const target = join(fs.mnt, 'toc-again');
    await snapshot(join(fs.mnt, 'toc'), target);
    const idx = join(fs.dir, 'index.json');
    const res = await applyFromToc(
      target,
      [await tocEntries(v2tar)],
      openerProvider(() => {
        throw new Error('nothing should be fetched');
      }),
      { indexFile: idx, saveIndexTo: join(fs.dir, 'index2.json') },
    );
    const rep = res.report!;
    assert.equal(res.hashed.files, 0, 'the content index made hashing unnecessary');
    assert.equal(
      rep.written.count +
        rep.reflinked.count +
        rep.deleted.count +
        rep.created.count +
        rep.linked.count +
        rep.metadataFixed.count,
      0,
      JSON.stringify(rep),
    );
    assert.equal(res.plan.fetch.length, 0);
    assert.deepEqual(await diffTrees(target, ref2, { ignoreRootMeta: true }), []);
    assert.ok((await exclusiveBytes(target)) < 64 * 1024);
  });

  it('content already verified into a store is reflinked from it on the same btrfs, copied and checked elsewhere', async () => {
    const contents = new Map<string, Buffer>();
    for (const f of v2)
      if (f.content !== undefined) {
        const b = Buffer.from(f.content);
        contents.set(`sha256:${createHash('sha256').update(b).digest('hex')}`, b);
      }
    const planFor = async (target: string) =>
      planApply(flattenLayers([await tocEntries(v2tar)]), await scanTree(target), new ContentIndex(target));
    const storeAt = async (dir: string, entries: readonly TreeEntry[], alter?: string): Promise<ContentProvider> => {
      const store = await ContentStore.open(dir);
      for (const e of entries) {
        const data = Buffer.from(contents.get(e.digest!)!);
        if (e.path === alter) data[0]! ^= 0xff; // rotted after it was verified
        await store.put(e.digest!, data);
      }
      return {
        deliver: async (want, take) => {
          for (const e of want) await take(e, { verifiedFile: store.path(e.digest!) });
        },
      };
    };
    // same filesystem (a store in another subvolume, like /var): every file is a reflink
    await subvolume(join(fs.mnt, 'store-sv'));
    const target = join(fs.mnt, 'from-store');
    await snapshot(join(fs.mnt, 'v1'), target);
    const plan = await planFor(target);
    assert.equal(plan.fetch.length, 5);
    const rep = await executePlan(target, plan, await storeAt(join(fs.mnt, 'store-sv/s'), plan.fetch));
    assert.equal(rep.clonedFromStore.count, plan.fetch.length);
    assert.equal(rep.written.count, plan.fetch.length);
    assert.deepEqual(await diffTrees(target, ref2, { ignoreRootMeta: true }), []);
    // the new 100 KiB file shares its extents with the store: not exclusive to the target
    assert.ok((await exclusiveBytes(target)) < newfile.length, `exclusive ${await exclusiveBytes(target)}`);
    assert.ok((await stat(join(target, 'usr/new/holes'))).blocks * 512 < 64 * 1024, 'holes stay holes');

    // another filesystem: no reflink possible, the bytes are copied and checked against the digest
    const other = await mkdtemp(join(tmpdir(), 'tiu-store-'));
    try {
      const t2 = join(fs.mnt, 'from-store-copy');
      await snapshot(join(fs.mnt, 'v1'), t2);
      const p2 = await planFor(t2);
      const rep2 = await executePlan(t2, p2, await storeAt(join(other, 'good'), p2.fetch));
      assert.equal(rep2.clonedFromStore.count, 0);
      assert.equal(rep2.written.count, p2.fetch.length);
      assert.deepEqual(await diffTrees(t2, ref2, { ignoreRootMeta: true }), []);
      const t3 = join(fs.mnt, 'from-store-bad');
      await snapshot(join(fs.mnt, 'v1'), t3);
      const p3 = await planFor(t3);
      await assert.rejects(
        executePlan(t3, p3, await storeAt(join(other, 'bad'), p3.fetch, 'usr/new/newfile')),
        (e: unknown) => isTiuError(e, 'DIGEST_MISMATCH'),
      );
    } finally {
      await rm(other, { recursive: true, force: true });
    }
  });

  it('without a content index, only same-size candidates are hashed', async () => {
    const target = join(fs.mnt, 'toc-noindex');
    await snapshot(join(fs.mnt, 'toc'), target);
    const tree = flattenLayers([await tocEntries(v2tar)]);
    const old = await scanTree(target);
    const index = new ContentIndex(target);
    const plan = await planApply(tree, old, index);
    const regs = [...old.entries.values()].filter((e) => e.type === 'reg');
    assert.ok(index.hashedFiles > 0 && index.hashedFiles <= regs.length);
    assert.equal(plan.fetch.length, 0);
    const rep = await executePlan(
      target,
      plan,
      openerProvider(() => {
        throw new Error('nothing to fetch');
      }),
    );
    assert.equal(rep.written.count, 0);
  });

  it('tar path: v1 -> v2 gives the v2 tree; the same tar again writes no data', async () => {
    const target = join(fs.mnt, 'tar');
    await snapshot(join(fs.mnt, 'v1'), target);
    const rep = await applyTarLayers(target, [() => Readable.from([v2tar])]);
    assert.deepEqual(await diffTrees(target, ref2, { ignoreRootMeta: true }), []);
    assert.ok(rep.kept.count > 0);
    // moved big.bin and renamed libx.so.2 become reflinks of the old files (written, then shared)
    assert.ok(rep.reflinked.bytes >= big.length + libx.length, JSON.stringify(rep.reflinked));
    const excl = await exclusiveBytes(target);
    assert.ok(excl < newfile.length + 300 * 1024, `exclusive ${excl}`);
    const again = join(fs.mnt, 'tar-again');
    await snapshot(target, again);
    const rep2 = await applyTarLayers(again, [() => Readable.from([v2tar])]);
    assert.equal(rep2.written.count, 0, JSON.stringify(rep2));
    assert.equal(rep2.deleted.count, 0);
    assert.deepEqual(await diffTrees(again, ref2, { ignoreRootMeta: true }), []);
    assert.ok((await exclusiveBytes(again)) < 64 * 1024);
  });

  it('tar path: a same-size file that differs past its first MiB keeps its equal prefix and takes the rest (read in pieces)', async () => {
    const target = join(fs.mnt, 'tar-prefix');
    await mkdir(target);
    const before = randomBytes(3 * 1024 * 1024 + 17);
    const after = Buffer.from(before);
    after.writeUInt8(before.readUInt8(2_600_000) ^ 0xff, 2_600_000);
    const tarOf = (content: Buffer) => makeTar([dir('data/'), file('data/blob', content)]);
    await applyTarLayers(target, [() => Readable.from([tarOf(before)])]);
    const same = await applyTarLayers(target, [() => Readable.from([tarOf(before)])]);
    assert.equal(same.written.count, 0, JSON.stringify(same));
    const rep = await applyTarLayers(target, [() => Readable.from([tarOf(after)])]);
    assert.equal(rep.written.count, 1, JSON.stringify(rep));
    assert.ok((await readFile(join(target, 'data/blob'))).equals(after));
  });

  it('multi-layer images: whiteouts and opaque directories, same result by TOC and by tar', async () => {
    const l0 = makeTar([
      dir('a'),
      file('a/1', 'one'),
      file('a/2', 'two'),
      dir('b'),
      file('b/x', 'x'),
      file('b/y', 'y'),
      file('c', 'c'),
      dir('d'),
      file('d/deep', 'deep'),
    ]);
    const l1 = makeTar([
      file('a/.wh.1', ''),
      dir('b'),
      file('b/.wh..wh..opq', ''),
      file('b/z', 'z'),
      file('.wh.c', ''),
      file('d', 'now a file'),
    ]);
    const l2 = makeTar([file('c', 'c is back'), file('a/3', 'three')]);
    const expect = ['a', 'a/2', 'a/3', 'b', 'b/z', 'c', 'd'];
    for (const mode of ['toc', 'tar'] as const) {
      const target = join(fs.mnt, `layers-${mode}`);
      await subvolume(target);
      await writeFile(join(target, 'stale'), 'from the old tree');
      if (mode === 'toc') {
        const layers = [await tocEntries(l0, 0), await tocEntries(l1, 1), await tocEntries(l2, 2)];
        const tars = [l0, l1, l2];
        await applyFromToc(
          target,
          layers,
          tarLayerProvider((i) => Promise.resolve(Readable.from([tars[i]!]))),
        );
      } else {
        await applyTarLayers(
          target,
          [l0, l1, l2].map((t) => () => Readable.from([t])),
        );
      }
      const got = (await readdir(target, { recursive: true })).sort();
      assert.deepEqual(got, expect, mode);
      assert.equal(await readFile(join(target, 'c'), 'utf8'), 'c is back');
      assert.equal(await readFile(join(target, 'd'), 'utf8'), 'now a file');
    }
  });

  describe('hostile input is refused and nothing outside the root changes', () => {
    let outside: string;
    let before: string;
    beforeEach(async () => {
      outside = join(fs.dir, 'outside');
      await mkdir(outside, { recursive: true });
      await writeFile(join(outside, 'passwd'), 'root:x:0:0::/root:/bin/sh\n');
      before = await listing(outside);
    });
    const cases: { name: string; tar: () => Buffer; code: ErrorCode }[] = [
      { name: '../ escape', tar: () => makeTar([file('../../outside/pwned', 'x')]), code: 'PATH_UNSAFE' },
      { name: 'absolute path', tar: () => makeTar([file('/tmp/pwned', 'x')]), code: 'PATH_UNSAFE' },
      {
        name: 'absolute symlink then a write through it',
        tar: () => makeTar([{ name: 'l', type: '2', linkname: outside }, file('l/passwd', 'pwned\n')]),
        code: 'PATH_UNSAFE',
      },
      {
        name: 'relative symlink up then a write through it',
        tar: () =>
          makeTar([
            { name: 'l', type: '2', linkname: '../../../../../../../..' + outside },
            file('l/passwd', 'pwned\n'),
          ]),
        code: 'PATH_UNSAFE',
      },
      {
        name: 'hardlink to a file outside (../)',
        tar: () => makeTar([{ name: 'h', type: '1', linkname: '../../outside/passwd' }]),
        code: 'PATH_UNSAFE',
      },
      {
        name: 'hardlink to an absolute path not in the tree',
        tar: () => makeTar([{ name: 'h', type: '1', linkname: join(outside, 'passwd') }]),
        code: 'HARDLINK_INVALID',
      },
      {
        name: 'the root itself as a symlink',
        tar: () => makeTar([{ name: './', type: '2', linkname: outside }, file('passwd', 'pwned\n')]),
        code: 'PATH_UNSAFE',
      },
      {
        name: 'device where a directory is expected',
        tar: () => makeTar([{ name: 'd', type: '3', devmajor: 1, devminor: 3 }, file('d/x', 'x')]),
        code: 'PATH_UNSAFE',
      },
    ];
    for (const c of cases) {
      it(`tar path: ${c.name} -> ${c.code}`, async () => {
        const target = join(fs.mnt, `hostile-tar-${cases.indexOf(c)}`);
        await subvolume(target);
        await assert.rejects(applyTarLayers(target, [() => Readable.from([c.tar()])]), (e: unknown) =>
          isTiuError(e, c.code),
        );
        assert.equal(await listing(outside), before);
      });
      it(`TOC path: ${c.name} -> ${c.code}`, async () => {
        const target = join(fs.mnt, `hostile-toc-${cases.indexOf(c)}`);
        await subvolume(target);
        const tar = c.tar();
        await assert.rejects(
          (async () =>
            applyFromToc(
              target,
              [await tocEntries(tar)],
              tarLayerProvider(() => Promise.resolve(Readable.from([tar]))),
            ))(),
          (e: unknown) => isTiuError(e, c.code),
        );
        assert.equal(await listing(outside), before);
      });
    }

    it('the executor itself refuses to write through a symlink, even given a plan that asks for it', async () => {
      const target = join(fs.mnt, 'hostile-plan');
      await subvolume(target);
      await run('ln', ['-s', outside, join(target, 'l')]);
      const content = 'pwned\n';
      const entry: TreeEntry = {
        path: 'l/passwd',
        type: 'reg',
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtimeNs: 0n,
        xattrs: {},
        size: content.length,
        digest: `sha256:${createHash('sha256').update(content).digest('hex')}`,
      };
      const plan = {
        actions: [{ kind: 'write' as const, entry }],
        deletes: [],
        fetch: [entry],
        summary: (await planApply(new Map(), await scanTree(target), new ContentIndex(target))).summary,
      };
      await assert.rejects(
        executePlan(
          target,
          plan,
          openerProvider(() => Readable.from([content])),
        ),
        (e: unknown) => isTiuError(e, 'PATH_UNSAFE'),
      );
      assert.equal(await listing(outside), before);
      assert.deepEqual((await readdir(target)).sort(), ['l']);
    });

    it('an old-tree symlink where the new tree has a directory is replaced, never followed', async () => {
      const target = join(fs.mnt, 'hostile-old-symlink');
      await subvolume(target);
      await run('ln', ['-s', outside, join(target, 'l')]);
      const tar = makeTar([dir('l'), file('l/passwd', 'inside\n')]);
      await applyFromToc(
        target,
        [await tocEntries(tar)],
        tarLayerProvider(() => Promise.resolve(Readable.from([tar]))),
      );
      assert.equal(await readFile(join(target, 'l/passwd'), 'utf8'), 'inside\n');
      assert.equal(await listing(outside), before);
      const target2 = join(fs.mnt, 'hostile-old-symlink-tar');
      await subvolume(target2);
      await run('ln', ['-s', outside, join(target2, 'l')]);
      await applyTarLayers(target2, [() => Readable.from([tar])]);
      assert.equal(await readFile(join(target2, 'l/passwd'), 'utf8'), 'inside\n');
      assert.equal(await listing(outside), before);
    });
  });
});

describe('deploy/apply on a full filesystem (integration)', function () {
  this.timeout(120_000);
  let small: TestBtrfs;
  before(async function () {
    requireRoot(this);
    small = await makeBtrfs(128);
  });
  after(async () => {
    await small?.cleanup();
  });

  it('a full disk gives DISK_FULL and leaves no staging directory behind', async () => {
    const size = 200 * 1024 * 1024;
    const chunk = Buffer.alloc(1024 * 1024, 0x5a);
    const h = createHash('sha256');
    for (let i = 0; i < size / chunk.length; i++) h.update(chunk);
    const entry: TreeEntry = {
      path: 'huge',
      type: 'reg',
      mode: 0o644,
      uid: 0,
      gid: 0,
      mtimeNs: 0n,
      xattrs: {},
      size,
      digest: `sha256:${h.digest('hex')}`,
      source: { layer: 0 },
    };
    const target = join(small.mnt, 'root');
    await subvolume(target);
    await assert.rejects(
      applyFromToc(
        target,
        [[entry]],
        openerProvider(() =>
          Readable.from(
            (function* () {
              for (let i = 0; i < size / chunk.length; i++) yield chunk;
            })(),
          ),
        ),
      ),
      (e: unknown) => isTiuError(e, 'DISK_FULL'),
    );
    assert.deepEqual(await readdir(target), []);
  });
});
