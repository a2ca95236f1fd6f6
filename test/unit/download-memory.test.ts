/**
 * Issue 19: a first install downloads every file of the image, 4 MiB requests one after another.
 * The memory the download holds is its windows (span-window.ts) and one decoded file per
 * request, returned as each is stored: not the requests' spans, and not a pile of decoded files
 * waiting for the collector. Measured as ArrayBuffer bytes after a forced collection at every
 * piece the source hands out (no timing, no RSS).
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { zstdCompressSync } from 'node:zlib';
import type { TreeEntry } from '../../src/deploy/apply/index.ts';
import { coalesce, ContentStore, downloadRanges, rangeBytes } from '../../src/deploy/delta/index.ts';
import { decodeInPieces } from '../../src/deploy/delta/download.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import type { Descriptor } from '../../src/oci/types.ts';
import { MemoryTarget } from '../helpers/memory-target.ts';
import { hashFile } from '../../src/deploy/apply/scan.ts';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** A layer of `n` incompressible files of `size` bytes, frame after frame, and their entries. */
function layer(n: number, size: number): { blob: Buffer; entries: TreeEntry[] } {
  const frames: Buffer[] = [];
  const entries: TreeEntry[] = [];
  let off = 0;
  for (let i = 0; i < n; i++) {
    const data = randomBytes(size);
    const fr = zstdCompressSync(data);
    entries.push({
      path: `usr/lib/file-${i}`,
      type: 'reg',
      mode: 0o644,
      uid: 0,
      gid: 0,
      mtimeNs: 0n,
      xattrs: {},
      size,
      digest: sha(data),
      source: { layer: 0, offset: off, endOffset: off + fr.length },
    });
    frames.push(fr);
    off += fr.length;
  }
  return { blob: Buffer.concat(frames), entries };
}

/** `blob` as the one zstd layer of an in-memory registry. */
async function pushedLayer(blob: Buffer): Promise<{ target: MemoryTarget; desc: Descriptor }> {
  const target = new MemoryTarget();
  const desc: Descriptor = {
    mediaType: MediaType.OciLayerZstd,
    digest: sha(blob) as Descriptor['digest'],
    size: blob.length,
  };
  await target.push(desc, Readable.from([blob]));
  return { target, desc };
}

/**
 * The layer `blob` in a registry whose range reads hand out views of it in 64 KiB pieces
 * (nothing allocated for them) and record, at each piece after a forced collection, the
 * ArrayBuffer bytes held above `probe.base`: the download's own memory.
 */
async function sampledImage(blob: Buffer) {
  const { target, desc } = await pushedLayer(blob);
  const probe = { base: 0, peak: 0 };
  target.fetchRange = (_d, s, e) => {
    function* pieces(): Generator<Buffer> {
      for (let at = s; at < e; at += 64 * 1024) {
        gc();
        probe.peak = Math.max(probe.peak, process.memoryUsage().arrayBuffers - probe.base);
        yield blob.subarray(at, Math.min(e, at + 64 * 1024));
      }
    }
    return Promise.resolve(Readable.from(pieces(), { objectMode: false }));
  };
  /** Collects, then counts from what is held now. */
  const start = (): void => {
    gc();
    probe.base = process.memoryUsage().arrayBuffers;
  };
  return { target, desc, probe, start };
}

describe('download memory (issue 19: a first install)', function () {
  this.timeout(60_000);
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tiu-download-memory-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('holds a few windows, not its 4 MiB spans nor the files it decoded, whatever the image size', async function () {
    const peaks: number[] = [];
    for (const n of [100, 300]) {
      const { blob, entries } = layer(n, 48 * 1024);
      const { target, desc, probe, start } = await sampledImage(blob);
      const store = await ContentStore.open(join(dir, `store-${n}`));
      const ranges = coalesce(entries);
      assert.ok(ranges.length >= n / 90, 'requests of many files each');
      assert.ok(Math.max(...ranges.map((r) => r.end - r.start)) > 3 * 1024 * 1024, 'spans of about 4 MiB');
      start();
      const stats = await downloadRanges(target, [desc], ranges, store);
      assert.equal(stats.files, n);
      assert.equal(stats.bytes, rangeBytes(ranges));
      assert.equal((await readdir(store.dir)).length, n);
      peaks.push(probe.peak);
      await store.remove();
    }
    if (process.env.TIU_TEST_SHOW) console.log(peaks);
    const mib = peaks.map((p) => (p / 2 ** 20).toFixed(2));
    // Four requests' windows of 256 KiB and a decoded file each: ~1.3 MiB. Reading spans whole
    // held 8-12 MiB of them (two or three 4 MiB spans in flight, those kept for reuse).
    for (const p of peaks) assert.ok(p < 3 * 2 ** 20, `ArrayBuffers held while downloading: ${mib.join(', ')} MiB`);
    // Against a fixed margin, not the first size's figure alone: a leftover of an earlier test freed
    // during the first download can make that one read 0 (seen in the full suite).
    assert.ok(
      peaks[1]! < peaks[0]! + 2 * 2 ** 20,
      `three times the files, about the same memory: ${mib.join(' -> ')} MiB`,
    );
  });
});

describe('download memory of large files (issue 19: frames streamed through the window)', function () {
  this.timeout(60_000);
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tiu-download-memory-large-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('neither grows a window to a large frame nor holds a large file decoded whole', async function () {
    // Incompressible 1.5 MiB files, two a request: their frames are 1.5 MiB too. Each request's
    // window grew to a frame, four requests at a time within the 12 MiB budget: ~6 MiB held.
    const { blob, entries } = layer(16, 1536 * 1024);
    const { target, desc, probe, start } = await sampledImage(blob);
    const store = await ContentStore.open(join(dir, 'store'));
    const ranges = coalesce(entries);
    assert.ok(
      ranges.every((r) => r.entries.length === 2),
      'requests of two large frames each',
    );
    start();
    const stats = await downloadRanges(target, [desc], ranges, store);
    assert.equal(stats.files, entries.length);
    for (const e of entries) assert.equal(await hashFile(store.path(e.digest!)), e.digest);
    const mib = (probe.peak / 2 ** 20).toFixed(2);
    if (process.env.TIU_TEST_SHOW) console.log(mib);
    assert.ok(probe.peak < 4 * 2 ** 20, `ArrayBuffers held while downloading 1.5 MiB frames: ${mib} MiB`);
    await store.remove();
  });
});

describe('large files decoded through the window: several frames, too much, too little', function () {
  this.timeout(60_000);
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tiu-download-pieces-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** One file in `parts.length` frames (containers/storage's chunks), declared `size`, then a small one. */
  async function image(parts: Buffer[], size: number, digest: string) {
    const frames = parts.map((p) => zstdCompressSync(p));
    const small = Buffer.from('small\n');
    const blob = Buffer.concat([...frames, zstdCompressSync(small)]);
    const big = frames.reduce((n, f) => n + f.length, 0);
    const e = (path: string, sz: number, dg: string, offset: number, endOffset: number): TreeEntry => ({
      path,
      type: 'reg',
      mode: 0o644,
      uid: 0,
      gid: 0,
      mtimeNs: 0n,
      xattrs: {},
      size: sz,
      digest: dg,
      source: { layer: 0, offset, endOffset },
    });
    const entries = [e('big', size, digest, 0, big), e('small', small.length, sha(small), big, blob.length)];
    return { ...(await pushedLayer(blob)), entries };
  }

  it('stores a large file of several frames whole (fetched again frame by frame)', async () => {
    const parts = [randomBytes(700 * 1024), randomBytes(600 * 1024), Buffer.from('tail\n')];
    const whole = Buffer.concat(parts);
    const { target, desc, entries } = await image(parts, whole.length, sha(whole));
    const store = await ContentStore.open(join(dir, 'several'));
    const stats = await downloadRanges(target, [desc], coalesce(entries), store);
    assert.equal(stats.files, 2);
    assert.equal(await hashFile(store.path(sha(whole))), sha(whole));
    assert.ok(stats.bytes > rangeBytes(coalesce(entries)), 'the file of several frames was fetched again');
  });

  it('ends with the first frame and reads no further, however slowly its output is consumed', async () => {
    // CI's one failure on f410819. The frame ends inside the third 256 KiB piece. Before the fix
    // the feeder wrote the fourth piece (the middle of the second frame) once the third was taken:
    // "Unknown frame descriptor" whenever that came before the consumer had read to the end,
    // every time with a slow one.
    const first = randomBytes(700 * 1024);
    const all = Buffer.concat([zstdCompressSync(first), zstdCompressSync(randomBytes(600 * 1024))]);
    const pieces: Buffer[] = [];
    for (let o = 0; o < all.length; o += 256 * 1024) pieces.push(all.subarray(o, o + 256 * 1024));
    let handed = 0;
    const source = Readable.from(
      (function* () {
        for (const p of pieces) {
          handed++;
          yield p;
        }
      })(),
      { objectMode: false, highWaterMark: 0 },
    );
    const out: Buffer[] = [];
    for await (const c of decodeInPieces(source)) {
      out.push(Buffer.from(c));
      await new Promise((r) => setTimeout(r, 5));
    }
    assert.ok(Buffer.concat(out).equals(first), 'exactly the first frame');
    assert.equal(handed, 3, 'no piece read past the one the frame ended in');
  });

  it('refuses a large file that decodes to more or less than declared, or differs', async () => {
    const data = randomBytes(1300 * 1024);
    for (const [size, digest, why] of [
      [data.length - 1, sha(data.subarray(1)), /more than/],
      [data.length + 1, sha(Buffer.concat([data, Buffer.alloc(1)])), /bytes instead of/],
      [data.length, sha(Buffer.alloc(3)), /differs/],
    ] as const) {
      const { target, desc, entries } = await image([data], size, digest);
      const store = await ContentStore.open(join(dir, `bad-${size}`));
      await assert.rejects(
        downloadRanges(target, [desc], coalesce(entries), store),
        (err: Error & { code?: string }) => {
          assert.equal(err.code, 'DELTA_FILE_MISMATCH');
          assert.match(err.message, why);
          return true;
        },
      );
      assert.ok(!store.has(digest));
    }
  });

  it('detaches the decoder output pieces of 128 KiB after hashing and writing them, and stores the right content', async function () {
    // 3 MiB files: above DECODE_WHOLE_MAX, so decoded through the window in 128 KiB pieces. Left
    // to the collector, those pieces were the largest garbage of a first install's download.
    const size = 3 * 1024 * 1024;
    const { blob, entries } = layer(3, size);
    const { target, desc } = await pushedLayer(blob);
    const ranges = coalesce(entries);
    assert.ok(
      ranges.every((r) => r.entries.length === 1 && r.end - r.start <= 4 * 1024 * 1024),
      'one large file a request, read through a window',
    );
    const store = await ContentStore.open(join(dir, 'release'));
    // Counted where they are freed: ArrayBuffer.prototype.transfer(0) on a 128 KiB buffer.
    const original = Object.getOwnPropertyDescriptor(ArrayBuffer.prototype, 'transfer')!;
    const transfer = original.value as (this: ArrayBuffer, n?: number) => ArrayBuffer;
    let released = 0;
    Object.defineProperty(ArrayBuffer.prototype, 'transfer', {
      ...original,
      value(this: ArrayBuffer, n?: number) {
        if (n === 0 && this.byteLength === 128 * 1024) released++;
        return transfer.call(this, n);
      },
    });
    try {
      const stats = await downloadRanges(target, [desc], ranges, store);
      assert.equal(stats.files, entries.length);
    } finally {
      Object.defineProperty(ArrayBuffer.prototype, 'transfer', original);
    }
    // Every file's content checked on disk: a piece freed before it was written would show here.
    for (const e of entries) assert.equal(await hashFile(store.path(e.digest!)), e.digest);
    // Incompressible content: each window piece decodes to a little less than it holds, so about
    // every second output piece ends short of its buffer (the decoder fills the rest next) and
    // must stay; without the release none is freed.
    const pieces = (entries.length * size) / (128 * 1024);
    assert.ok(released >= pieces / 3, `${released} of about ${pieces} output pieces freed at once`);
    await store.remove();
  });
});
