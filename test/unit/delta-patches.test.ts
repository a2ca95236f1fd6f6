/**
 * Using a delta artifact's file patches: which planned files come as patches (only against an
 * old file at the patch's path with the index's `old` digest, only when smaller than the frame),
 * and the download: each patch decoded against its old file and verified before it is stored; a
 * damaged patch or a changed old file sends that file to its frame, with the reason.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { ContentIndex, scanTree, type OldTree, type TreeEntry } from '../../src/deploy/apply/index.ts';
import { ContentStore } from '../../src/deploy/delta/index.ts';
import { DECODE_WHOLE_MAX } from '../../src/deploy/delta/download.ts';
import {
  choosePatches,
  downloadPatches,
  Fallbacks,
  patchRanges,
  type OldSource,
  type PatchUse,
} from '../../src/deploy/delta/patches.ts';
import type { Digest, Descriptor } from '../../src/oci/types.ts';
import { encodePatch } from '../../src/patch/codec.ts';
import type { DeltaFilePatch } from '../../src/patch/delta-index.ts';
import { DELTA_PATCHES_MEDIA_TYPE } from '../../src/patch/media.ts';
import { MemoryTarget } from '../helpers/memory-target.ts';
import { streamReader } from '../../src/content/blob-reader.ts';
import type { Target } from '../../src/content/interfaces.ts';
import { WINDOW_MIN } from '../../src/deploy/delta/span-window.ts';

const sha = (b: Uint8Array): Digest => `sha256:${createHash('sha256').update(b).digest('hex')}`;

function text(seed: string, n: number): Buffer {
  let s = '';
  for (let i = 0; s.length < n; i++) s += `${seed} line ${i} of a shared library's symbol table\n`;
  return Buffer.from(s.slice(0, n));
}

function entry(path: string, data: Buffer, frame: number): TreeEntry {
  return {
    path,
    type: 'reg',
    mode: 0o644,
    uid: 0,
    gid: 0,
    mtimeNs: 0n,
    xattrs: {},
    size: data.length,
    digest: sha(data),
    source: { layer: 0, offset: 1000, endOffset: 1000 + frame },
  };
}

describe('delta: file patches of a delta artifact', () => {
  let dir: string;
  let root: string;
  let old: OldTree;
  const oldA = text('a', 30_000);
  const newA = Buffer.concat([Buffer.from('changed header\n'), oldA.subarray(15)]);
  const oldB = text('b', 30_000);
  const newB = Buffer.concat([Buffer.from('changed header\n'), oldB.subarray(15)]);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tiu-delta-patches-'));
    root = join(dir, 'old');
    await mkdir(join(root, 'usr'), { recursive: true });
    await writeFile(join(root, 'usr/a'), oldA);
    await writeFile(join(root, 'usr/b'), oldB);
    await writeFile(join(root, 'usr/c'), text('c', 5000));
    old = await scanTree(root);
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  const booted = (): OldSource => ({ root, tree: old, index: new ContentIndex(root) });

  const patch = (path: string, o: Buffer, n: Buffer, offset: number, size: number): DeltaFilePatch => ({
    path,
    old: sha(o),
    new: sha(n),
    offset,
    size,
  });

  it('uses a patch only against the old file with its digest, and only when smaller than the frame', async () => {
    const files = [
      patch('usr/a', oldA, newA, 0, 50), // used
      patch('usr/b', oldB, newB, 50, 5000), // not smaller than the frame (4000)
      patch('usr/c', oldA, text('c2', 5000), 5050, 40), // the old file at usr/c has other content
      patch('usr/gone', oldA, text('d', 100), 5090, 10), // no old file at that path
    ];
    const a = entry('usr/a', newA, 4000);
    const b = entry('usr/b', newB, 4000);
    const c = entry('usr/c', text('c2', 5000), 4000);
    const d = entry('usr/d', text('d', 100), 4000);
    // The same content as usr/a's patch makes, at another path: that patch serves it.
    const a2 = entry('opt/a-copy', newA, 4000);
    const { uses, rest } = await choosePatches([a, b, c, d], files, [booted()]);
    assert.deepEqual(
      uses.map((u) => [u.entry.path, u.old.seen.path]),
      [['usr/a', 'usr/a']],
    );
    assert.deepEqual(
      rest.map((e) => e.path),
      ['usr/b', 'usr/c', 'usr/d'],
    );
    const other = await choosePatches([a2], files, [booted()]);
    assert.deepEqual(
      other.uses.map((u) => [u.entry.path, u.old.seen.path]),
      [['opt/a-copy', 'usr/a']],
    );
  });

  it('takes an old file from the snapshot holding FROM where the booted one has other content', async () => {
    const from = join(dir, 'from');
    const oldC = text('c-in-from', 5000);
    await mkdir(join(from, 'usr'), { recursive: true });
    await writeFile(join(from, 'usr/c'), oldC);
    const fromSource: OldSource = { root: from, tree: await scanTree(from), index: new ContentIndex(from) };
    const newC = text('c2', 5000);
    const { uses, rest } = await choosePatches(
      [entry('usr/c', newC, 4000)],
      [patch('usr/c', oldC, newC, 0, 40)],
      [booted(), fromSource],
    );
    assert.deepEqual(rest, []);
    assert.deepEqual(
      uses.map((u) => ({ root: u.old.root, path: u.old.seen.path, size: u.old.seen.size })),
      [{ root: from, path: 'usr/c', size: oldC.length }],
    );
  });

  it('decodes and verifies each patch into the store; a damaged one falls back to its frame with the reason', async () => {
    const pa = (await encodePatch(oldA, newA))!;
    const pb = (await encodePatch(oldB, newB))!;
    const damaged = Buffer.from(pb);
    damaged[damaged.length >> 1]! ^= 0xff;
    const blob = Buffer.concat([pa, damaged]);
    const desc: Descriptor = { mediaType: DELTA_PATCHES_MEDIA_TYPE, digest: sha(blob), size: blob.length };
    const source = new MemoryTarget();
    await source.push(desc, Readable.from([blob]));
    const uses: PatchUse[] = [
      {
        entry: entry('usr/a', newA, 9000),
        patch: patch('usr/a', oldA, newA, 0, pa.length),
        old: { root, seen: old.entries.get('usr/a')! },
      },
      {
        entry: entry('usr/b', newB, 9000),
        patch: patch('usr/b', oldB, newB, pa.length, pb.length),
        old: { root, seen: old.entries.get('usr/b')! },
      },
    ];
    const ranges = patchRanges(uses, {});
    assert.equal(ranges.length, 1, 'neighbouring patches are one request');
    const store = await ContentStore.open(join(dir, 'store'));
    const fallbacks = new Fallbacks();
    const got = await downloadPatches(source, desc, ranges, store, fallbacks);
    assert.equal(got.bytes, blob.length);
    assert.equal(got.files, 1);
    assert.ok(store.has(sha(newA)));
    assert.ok(!store.has(sha(newB)));
    assert.deepEqual(
      got.failed.map((e) => e.path),
      ['usr/b'],
    );
    assert.equal(fallbacks.count, 1);
    assert.match(fallbacks.reasons[0]!, /^\/usr\/b: the patch for \/usr\/b /);

    // The old file changed since planning: that file falls back too, nothing wrong is stored.
    await writeFile(join(root, 'usr/a'), text('other', oldA.length));
    const store2 = await ContentStore.open(join(dir, 'store2'));
    const fb2 = new Fallbacks();
    const again = await downloadPatches(source, desc, patchRanges(uses.slice(0, 1), {}), store2, fb2);
    assert.equal(again.files, 0);
    assert.equal(store2.size, 0);
    assert.match(fb2.reasons[0]!, /the old file \/usr\/a is no longer/);
    await writeFile(join(root, 'usr/a'), oldA);
  });

  it('reads a request of many patches through a window, never whole, and a short answer fails the patches it lacks', async () => {
    // Ten incompressible files of 40 KB, each replaced whole: patches of ~40 KB, one request of ~400 KB.
    const tree = join(dir, 'many');
    await mkdir(join(tree, 'usr'), { recursive: true });
    const olds = Array.from({ length: 10 }, () => randomBytes(40_000));
    const news = Array.from({ length: 10 }, () => randomBytes(40_000));
    for (const [i, o] of olds.entries()) await writeFile(join(tree, `usr/p${i}`), o);
    const scanned = await scanTree(tree);
    const patches = await Promise.all(olds.map(async (o, i) => (await encodePatch(o, news[i]!))!));
    const blob = Buffer.concat(patches);
    const desc: Descriptor = { mediaType: DELTA_PATCHES_MEDIA_TYPE, digest: sha(blob), size: blob.length };
    const memory = new MemoryTarget();
    await memory.push(desc, Readable.from([blob]));
    let at = 0;
    const uses: PatchUse[] = patches.map((p, i) => {
      const u = {
        entry: entry(`usr/p${i}`, news[i]!, 50_000),
        patch: patch(`usr/p${i}`, olds[i]!, news[i]!, at, p.length),
        old: { root: tree, seen: scanned.entries.get(`usr/p${i}`)! },
      };
      at += p.length;
      return u;
    });
    const ranges = patchRanges(uses, {});
    assert.equal(ranges.length, 1);
    assert.ok(blob.length > WINDOW_MIN);
    /** The memory source with openRange, each reader answering at most `limit` bytes; the largest buffer one filled. */
    const source = (limit: number) => {
      const seen = { streams: 0, largestRead: 0 };
      const t = Object.create(memory) as MemoryTarget & Required<Pick<Target, 'openRange'>>;
      t.fetchRange = (d, s, e, o) => {
        seen.streams++;
        return memory.fetchRange(d, s, e, o);
      };
      t.openRange = async (d, s, e, o) => {
        const r = streamReader(await memory.fetchRange(d, s, e, o));
        let left = limit;
        return {
          read: async (into) => {
            seen.largestRead = Math.max(seen.largestRead, into.length);
            const n = left > 0 ? await r.read(into.subarray(0, Math.min(into.length, left))) : 0;
            left -= n;
            return n;
          },
          close: () => r.close(),
        };
      };
      return { t, seen };
    };

    const whole = source(Infinity);
    const store = await ContentStore.open(join(dir, 'store-many'));
    const got = await downloadPatches(whole.t, desc, ranges, store, new Fallbacks());
    assert.equal(got.files, 10);
    assert.equal(got.bytes, blob.length);
    assert.ok(news.every((n) => store.has(sha(n))));
    assert.equal(whole.seen.streams, 0, 'read through the reader, not as a stream');
    assert.ok(
      whole.seen.largestRead <= WINDOW_MIN,
      `a window of ${whole.seen.largestRead} bytes for a request of ${blob.length}`,
    );

    // The source ends inside the seventh patch: six stored, the other four fall back with the reason.
    const cut = patches.slice(0, 6).reduce((n, p) => n + p.length, 0) + 100;
    const short = source(cut);
    const store2 = await ContentStore.open(join(dir, 'store-short'));
    const fallbacks = new Fallbacks();
    const part = await downloadPatches(short.t, desc, ranges, store2, fallbacks);
    assert.equal(part.files, 6);
    assert.deepEqual(
      part.failed.map((e) => e.path),
      ['usr/p6', 'usr/p7', 'usr/p8', 'usr/p9'],
    );
    assert.equal(store2.size, 6);
    assert.equal(fallbacks.count, 4);
    assert.match(
      fallbacks.reasons[0]!,
      new RegExp(`^/usr/p6: the patches blob answered ${cut} of ${blob.length} bytes$`),
    );
  });

  it('decodes a patched file over DECODE_WHOLE_MAX as it is written, never whole; a damaged one falls back', async () => {
    const tree = join(dir, 'large');
    await mkdir(join(tree, 'usr'), { recursive: true });
    const oldL = text('large', DECODE_WHOLE_MAX + 500_000);
    const newL = Buffer.concat([Buffer.from('a new first line\n'), oldL.subarray(100)]);
    await writeFile(join(tree, 'usr/large'), oldL);
    const scanned = await scanTree(tree);
    const p = (await encodePatch(oldL, newL))!;
    const damaged = Buffer.from(p);
    damaged[damaged.length >> 1]! ^= 0xff;
    for (const [bytes, ok] of [
      [p, true],
      [damaged, false],
    ] as const) {
      const desc: Descriptor = { mediaType: DELTA_PATCHES_MEDIA_TYPE, digest: sha(bytes), size: bytes.length };
      const source = new MemoryTarget();
      await source.push(desc, Readable.from([bytes]));
      const uses: PatchUse[] = [
        {
          entry: entry('usr/large', newL, 500_000),
          patch: patch('usr/large', oldL, newL, 0, bytes.length),
          old: { root: tree, seen: scanned.entries.get('usr/large')! },
        },
      ];
      const store = await ContentStore.open(join(dir, `store-large-${ok}`));
      const fallbacks = new Fallbacks();
      // The largest Buffer.allocUnsafe or Buffer.concat while it runs: decoding whole takes one of the file's size.
      const unsafe = Object.getOwnPropertyDescriptor(Buffer, 'allocUnsafe')!;
      const concat = Object.getOwnPropertyDescriptor(Buffer, 'concat')!;
      const allocUnsafe = Buffer.allocUnsafe.bind(Buffer);
      const joined = Buffer.concat.bind(Buffer);
      let largest = 0;
      Buffer.allocUnsafe = (n: number) => ((largest = Math.max(largest, n)), allocUnsafe(n));
      Buffer.concat = (list: readonly Uint8Array[], n?: number) => {
        const b = joined(list, n);
        largest = Math.max(largest, b.length);
        return b;
      };
      let got;
      try {
        got = await downloadPatches(source, desc, patchRanges(uses, {}), store, fallbacks);
      } finally {
        Object.defineProperty(Buffer, 'allocUnsafe', unsafe);
        Object.defineProperty(Buffer, 'concat', concat);
      }
      assert.ok(largest < DECODE_WHOLE_MAX, `a buffer of ${largest} bytes`);
      if (ok) {
        assert.ok(largest > 0, 'decoded in pieces from Buffer.allocUnsafe');
        assert.equal(got.files, 1);
        assert.ok((await readFile(store.path(sha(newL)))).equals(newL));
      } else {
        assert.equal(got.files, 0);
        assert.equal(store.size, 0);
        assert.deepEqual(
          got.failed.map((e) => e.path),
          ['usr/large'],
        );
        assert.match(fallbacks.reasons[0]!, /^\/usr\/large: /);
      }
    }
  });
});
