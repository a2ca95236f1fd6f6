/**
 * What the build's layer writer holds while it writes, guarded without timing: the frames'
 * input in flight (bytes, not a count), the buffers their compressed bytes are gathered into
 * (reused, not one per frame), the TOC entries waiting for their offsets (a few, not the
 * layer's), and tar-split lines handed on in batches; each made exactly as before.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { constants as zc, zstdDecompressSync } from 'node:zlib';
import { BlobFile } from '../../src/bundle/blob-file.ts';
import { LARGE_FRAME, OrderedFrames } from '../../src/bundle/ordered-frames.ts';
import { BufferPool } from '../../src/util/buffer-pool.ts';
import { TocJsonWriter } from '../../src/layer/toc-writer.ts';
import { encodeToc, type TocEntry } from '../../src/layer/toc.ts';
import { TAR_SPLIT_BATCH, TarSplitWriter } from '../../src/layer/tar-split.ts';
import { writeLayerContent } from '../../src/bundle/layer-writer.ts';
import type { TreeEntry } from '../../src/layer/entry.ts';
import { layerFile } from '../helpers/file-entry.ts';

const PARAMS = { [zc.ZSTD_c_compressionLevel]: 3, [zc.ZSTD_c_checksumFlag]: 1 };

/** Compressible bytes of a given size, different for each seed. */
function content(seed: number, size: number): Buffer {
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i += 4) b.writeUInt32LE((Math.imul(i >>> 6, 2654435761) ^ seed) >>> 0, i);
  return b.subarray(0, size);
}

/** `n` symlinks (a TOC of ~180 bytes an entry, nothing else of that size in the layer). */
function symlinks(n: number): TreeEntry[] {
  return Array.from({ length: n }, (_, i) => ({
    path: `usr/share/doc/package-${String(i).padStart(6, '0')}/changelog.Debian.gz`,
    type: 'symlink',
    mode: 0o777,
    uid: 0,
    gid: 0,
    mtimeNs: 1_700_000_000_000_000_000n,
    size: 0,
    xattrs: {},
    linkname: `../../../../usr/share/doc/common-package-name-${i % 7}/changelog.Debian.gz`,
  }));
}

/**
 * The window a zstd frame declares (RFC 8878 3.1.1.1): its Window_Descriptor, or for a single
 * segment frame (no descriptor) its content size, which then bounds every match.
 */
function frameWindow(frame: Buffer): { window: number; singleSegment: boolean } {
  assert.equal(frame.readUInt32LE(0), 0xfd2fb528, 'a zstd frame');
  const fhd = frame[4]!;
  if (fhd & 0x20) {
    const sizeBytes = [1, 2, 4, 8][fhd >> 6]!;
    const size = frame.readUIntLE(5, Math.min(sizeBytes, 6)) + (sizeBytes === 2 ? 256 : 0);
    return { window: size, singleSegment: true };
  }
  const wd = frame[5]!;
  const base = 2 ** (10 + (wd >> 3));
  return { window: base + (base / 8) * (wd & 7), singleSegment: false };
}

/** A zstd:chunked layer's TOC frame, by its manifest-position annotation. */
async function tocFrame(file: string, annotations: Record<string, string>): Promise<{ frame: Buffer; json: number }> {
  const [offset, length, json] =
    annotations['io.github.containers.zstd-chunked.manifest-position']!.split(':').map(Number);
  const blob = await readFile(file);
  return { frame: blob.subarray(offset, offset! + length!), json: json! };
}

/**
 * Write a zstd:chunked layer of `entries`, noting the size of every ArrayBuffer freed on purpose
 * meanwhile: all of them go through transfer(0) (util/buffer-pool.ts detach).
 */
async function writeDetaching(entries: TreeEntry[], file: string) {
  const detached: number[] = [];
  const transfer = Object.getOwnPropertyDescriptor(ArrayBuffer.prototype, 'transfer')!;
  Object.defineProperty(ArrayBuffer.prototype, 'transfer', {
    ...transfer,
    value: function (this: ArrayBuffer, length?: number) {
      if (length === 0) detached.push(this.byteLength);
      return (transfer.value as (n?: number) => ArrayBuffer).call(this, length);
    },
  });
  try {
    const result = await writeLayerContent(entries, file, { compression: 'zstd' }).then((u) => u.finish());
    return { result, detached };
  } finally {
    Object.defineProperty(ArrayBuffer.prototype, 'transfer', transfer);
  }
}

describe('layer writer: what it holds while it writes', function () {
  let dir: string;
  beforeEach(async function () {
    dir = await mkdtemp(join(tmpdir(), 'tiu-lw-'));
  });
  afterEach(async function () {
    await rm(dir, { recursive: true, force: true });
  });

  it('keeps the frames in flight under their byte budget and gathers their output in reused buffers, in order', async function () {
    const out = new BlobFile(join(dir, 'blob'));
    const pool = new BufferPool(16 * 1024, 4 * 1024 * 1024);
    const budget = 1024 * 1024;
    const frames = new OrderedFrames(PARAMS, out, 3, budget, pool);
    const sizes = Array.from({ length: 300 }, (_, i) => [100, 20_000, 90_000, 300_000, 700_000][i % 5]!);
    const spans: [number, number][] = [];
    let largest = 0;
    for (const [i, size] of sizes.entries()) {
      await frames.makeRoom(size);
      largest = Math.max(largest, size);
      await frames.add(content(i, size), (start, end) => (spans[i] = [start, end]));
    }
    await frames.close();
    out.close();
    assert.ok(frames.maxPendingBytes <= budget, `at most the budget in flight: ${frames.maxPendingBytes}`);
    assert.ok(frames.maxPendingBytes >= budget / 2, 'and the budget is used (the check can fail)');
    // 300 frames, their output gathered in pooled buffers: only a window's worth allocated.
    assert.ok(pool.allocated < 40, `output buffers reused: ${pool.allocated} allocated for ${sizes.length} frames`);
    const blob = await readFile(join(dir, 'blob'));
    let at = 0;
    for (const [i, size] of sizes.entries()) {
      const [start, end] = spans[i]!;
      assert.equal(start, at, `frame ${i} follows the one before`);
      assert.ok(zstdDecompressSync(blob.subarray(start, end)).equals(content(i, size)), `frame ${i} holds its input`);
      at = end;
    }
    assert.equal(at, blob.length);
    assert.ok(sizes.some((s) => s > LARGE_FRAME) && sizes.some((s) => s <= LARGE_FRAME), 'both kinds of context used');
  });

  it("holds a pending frame's output in 64 KiB pieces, about its compressed size, not a buffer of its input's bound", async function () {
    const out = new BlobFile(join(dir, 'blob'));
    const pool = new BufferPool(16 * 1024, 4 * 1024 * 1024);
    const taken: number[] = [];
    const take = pool.take.bind(pool);
    pool.take = (n: number) => (taken.push(n), take(n));
    const frames = new OrderedFrames(PARAMS, out, 1, 8 * 1024 * 1024, pool);
    // A 3 MiB frame that compresses to about two thirds (every other byte random), then
    // pool-sized and small ones.
    const halfRandom = (n: number) => randomBytes(n).map((x, i) => (i % 2 ? x : 0));
    const inputs = [halfRandom(3 * 1024 * 1024), content(1, 200_000), content(2, 40_000), content(3, 3000)];
    const spans: [number, number][] = [];
    for (const [i, data] of inputs.entries()) await frames.add(Buffer.from(data), (s, e) => (spans[i] = [s, e]));
    await frames.close();
    out.close();
    const blob = await readFile(join(dir, 'blob'));
    for (const [i, data] of inputs.entries()) {
      const [start, end] = spans[i]!;
      assert.ok(zstdDecompressSync(blob.subarray(start, end)).equals(data), `frame ${i} holds its input`);
    }
    const [s0, e0] = spans[0]!;
    assert.ok(e0 - s0 > 1024 * 1024, `the large frame spans many pieces: ${e0 - s0} bytes`);
    // Every buffer the frames took: pieces, and for the small frame its bound (made on this thread).
    assert.ok(Math.max(...taken) <= 64 * 1024, `largest buffer taken: ${Math.max(...taken)} bytes`);
  });

  it('makes the TOC JSON as entries complete, holding only those waiting for their frame, and hands it on through one reused piece, byte for byte as encodeToc', function () {
    const spilled: Buffer[] = [];
    const pieces = new Set<ArrayBufferLike>();
    const writer = new TocJsonWriter((b) => {
      spilled.push(Buffer.from(b));
      pieces.add(b.buffer);
    });
    const all: TocEntry[] = [];
    const open: TocEntry[] = [];
    let mostWaiting = 0;
    for (let i = 0; i < 5000; i++) {
      const name =
        i % 7 === 0 ? `usr/lib/caf\xc3\xa9-${i}` : i % 11 === 0 ? `odd/\xff\xfe-"q\\-${i}` : `usr/share/f${i}`;
      const t: TocEntry =
        i % 3 === 0
          ? { type: 'dir', name: name + '/', mode: 0o755, modtime: '2024-01-02T03:04:05Z' }
          : { type: 'reg', name, mode: 0o644, size: 10 + i, xattrs: i % 13 === 0 ? { 'user.x': 'AQI=' } : {} };
      if (t.type === 'reg' && i % 2 === 0) {
        // a streamed file: offsets before the digest, complete when added
        t.offset = i * 100;
        t.endOffset = i * 100 + 50;
        t.digest = `sha256:${String(i).padStart(64, '0')}`;
      } else if (t.type === 'reg') {
        // a file read whole: the digest now, the offsets once its frame is written (a few later)
        t.digest = `sha256:${String(i).padStart(64, '1')}`;
        open.push(t);
      }
      all.push(t);
      writer.add(t);
      if (open.length > 6) {
        const done = open.shift()!;
        done.offset = 1;
        done.endOffset = 2;
        writer.encodeReady();
      }
      mostWaiting = Math.max(mostWaiting, writer.waiting);
    }
    for (const t of open) {
      t.offset = 3;
      t.endOffset = 4;
    }
    const digest = `sha256:${'ab'.repeat(32)}`;
    assert.ok(spilled.length >= 4, `handed on as it was made: ${spilled.length} pieces before the end`);
    const length = writer.finish(digest);
    const whole = Buffer.concat(spilled);
    assert.equal(length, whole.length);
    assert.equal(pieces.size, 1, 'one piece, reused');
    assert.ok(whole.equals(encodeToc({ version: 1, entries: all, tarSplitDigest: digest })), 'the same bytes');
    assert.ok(mostWaiting < 40, `only entries behind an unwritten frame wait: at most ${mostWaiting}`);
    assert.ok(mostWaiting > 1, 'entries did wait (the check can fail)');
    const empty: Buffer[] = [];
    new TocJsonWriter((b) => empty.push(Buffer.from(b))).finish();
    assert.ok(Buffer.concat(empty).equals(encodeToc({ version: 1, entries: [] })), 'an empty TOC too');
  });

  it("keeps a written layer's TOC in a file until its turn, and frees its TOC and tar-split once finished although the build keeps the layer", async function () {
    this.timeout(60_000);
    // 40,000 symlinks: a TOC JSON of ~7 MiB, nothing else of that size in the layer.
    const entries = symlinks(40_000);
    // A full collection before each reading, so that only what is referenced counts.
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    gc();
    const before = process.memoryUsage().arrayBuffers;
    const unfinished = await writeLayerContent(entries, join(dir, 'layer'), { compression: 'zstd' });
    gc();
    const waiting = process.memoryUsage().arrayBuffers - before;
    const { size: spilled } = await stat(join(dir, 'layer.toc'));
    const result = await unfinished.finish();
    gc();
    const held = process.memoryUsage().arrayBuffers - before;
    const tocBytes = Number(
      result.descriptor.annotations!['io.github.containers.zstd-chunked.manifest-position']!.split(':')[2],
    );
    assert.equal(spilled, tocBytes, 'the whole TOC JSON in its file while the layer waits');
    assert.ok(waiting < tocBytes / 4, `${waiting} bytes of ArrayBuffers held while the layer waits, TOC ${tocBytes}`);
    await assert.rejects(stat(join(dir, 'layer.toc')), { code: 'ENOENT' }, 'the file goes once the TOC is compressed');
    assert.ok(tocBytes > 6 * 1024 * 1024, `the TOC is large enough to see: ${tocBytes}`);
    // `unfinished` is still referenced here, as build.ts references it until the build ends.
    assert.ok(unfinished);
    assert.ok(held < tocBytes / 2, `${held} bytes of ArrayBuffers still held after finish(), TOC ${tocBytes}`);
  });

  it("compresses a large TOC within a 2 MiB window whatever its size, a small one with level 19's own parameters", async function () {
    this.timeout(60_000);
    // ~7 MiB of TOC JSON: level 19's own choice would be an 8 MiB window (and ~80 MiB of tables).
    const large = await writeLayerContent(symlinks(40_000), join(dir, 'large'), { compression: 'zstd' });
    const done = await large.finish();
    // Pinned as build-digest.test.ts pins a build (that tree's TOCs are all small): computed by
    // the commit that bounded the large TOCs' tables; a change of these bytes is a format change.
    assert.equal(done.descriptor.digest, 'sha256:8a056cae2851e7121cca2553afea5180b6ee3d344bdb54645510883049269ea0');
    const l = await tocFrame(join(dir, 'large'), done.descriptor.annotations!);
    assert.ok(l.json > 6 * 1024 * 1024, `a TOC larger than any bound: ${l.json}`);
    assert.deepEqual(frameWindow(l.frame), { window: 2 * 1024 * 1024, singleSegment: false });
    assert.equal(zstdDecompressSync(l.frame).length, l.json, 'the whole TOC in the frame');
    // ~180 KiB: zstd sizes level 19's window to the TOC itself, as before the bound (pinned bytes).
    const small = await writeLayerContent(symlinks(1000), join(dir, 'small'), { compression: 'zstd' });
    const s = await tocFrame(join(dir, 'small'), (await small.finish()).descriptor.annotations!);
    assert.ok(s.json < 512 * 1024);
    assert.deepEqual(frameWindow(s.frame), { window: s.json, singleSegment: true });
  });

  it("frees zlib's full output buffers as it copies them out, not at a later collection, and the bytes stay", async function () {
    // Random bytes do not compress: 2 MiB of input is ~16 of zlib's 128 KiB output buffers.
    const data = randomBytes(2 * 1024 * 1024);
    // Its content in memory; the digest and frame given are not read (the writer makes them).
    const file: TreeEntry = { ...layerFile('usr/lib/big', data.length, '', 0, 0), content: { data } };
    const { result, detached } = await writeDetaching([file], join(dir, 'layer'));
    // The pools' own buffers are powers of two of 64 KiB and more too; only zlib's are exactly 128 KiB here
    // (the file is read whole into 2 MiB, its frame gathered into 4 MiB).
    const zlibBuffers = detached.filter((n) => n === 128 * 1024).length;
    assert.ok(zlibBuffers >= 14, `zlib's filled output buffers freed as they were copied: ${zlibBuffers}`);
    const layer = await readFile(join(dir, 'layer'));
    assert.equal(result.descriptor.digest, `sha256:${createHash('sha256').update(layer).digest('hex')}`);
    // The file's frame, where the layer's TOC says it is.
    const [tocOffset, tocLength] = result.descriptor
      .annotations!['io.github.containers.zstd-chunked.manifest-position']!.split(':')
      .map(Number);
    const toc = JSON.parse(zstdDecompressSync(layer.subarray(tocOffset, tocOffset! + tocLength!)).toString()) as {
      entries: TocEntry[];
    };
    const written = toc.entries.find((t) => t.name === 'usr/lib/big')!;
    const frame = layer.subarray(written.offset, written.endOffset);
    assert.ok(zstdDecompressSync(frame).equals(data), 'the frame still holds the file');
  });

  it('refuses to finish a TOC whose file entry never got its offsets', function () {
    const writer = new TocJsonWriter(() => undefined);
    writer.add({ type: 'reg', name: 'a', size: 1, digest: `sha256:${'0'.repeat(64)}` });
    assert.throws(() => writer.finish(), { code: 'TOC_INVALID' });
  });

  it('hands tar-split lines on in batches, the same bytes as line by line, through one reused buffer', function () {
    const batches: Buffer[] = [];
    const held = new Set<ArrayBufferLike>();
    const split = new TarSplitWriter((b) => {
      held.add(b.buffer);
      batches.push(Buffer.from(b));
    });
    const expected: string[] = [];
    let position = 0;
    for (let i = 0; i < 3000; i++) {
      const name = i % 5 === 0 ? `usr/caf\xc3\xa9/${i}` : `usr/bin/f${i}`;
      const header = Buffer.alloc(512, i % 256);
      split.raw(header);
      expected.push(JSON.stringify({ type: 2, payload: header.toString('base64'), position: position++ }));
      split.file(name, i, Buffer.alloc(8, 1));
      const shown = Buffer.from(name, 'latin1').toString('utf8');
      expected.push(
        JSON.stringify({
          type: 1,
          name: shown,
          ...(i ? { size: i } : {}),
          payload: 'AQEBAQEBAQE=',
          position: position++,
        }),
      );
    }
    const end = Buffer.alloc(1024);
    split.raw(end);
    split.end();
    expected.push(JSON.stringify({ type: 2, payload: end.toString('base64'), position: position++ }));
    expected.push(JSON.stringify({ type: 2, payload: '', position: position++ }));
    const text = Buffer.from(expected.join('\n') + '\n', 'utf8');
    assert.ok(Buffer.concat(batches).equals(text));
    assert.equal(split.uncompressedSize, text.length, 'size in bytes, also for UTF-8 names');
    assert.ok(batches.length < 3000 / 5, `batched: ${batches.length} writes for 6,000 lines`);
    for (const b of batches.slice(0, -1)) assert.ok(b.length >= TAR_SPLIT_BATCH);
    assert.equal(held.size, 1, `${batches.length} batches in one buffer`);
  });

  it('writes a tar-split line larger than its batch buffer, and names as JSON spells them', function () {
    const batches: Buffer[] = [];
    const split = new TarSplitWriter((b) => batches.push(Buffer.from(b)));
    // A pax segment of 200 KiB (xattrs), then names that need escaping or are not UTF-8.
    const pax = Buffer.alloc(200 * 1024, 0x41);
    split.raw(pax);
    const names = ['a"b\\c\n', 'caf\xc3\xa9', '\xff\xfe', '\x7f\x01', 'x\xe2\x80\xa8'];
    for (const n of names) split.file(n, 0, null);
    split.end();
    const lines = Buffer.concat(batches).toString('utf8').trimEnd().split('\n');
    assert.deepEqual(JSON.parse(lines[0]!), { type: 2, payload: pax.toString('base64'), position: 0 });
    const parsed = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    // Each line is JSON.stringify's text of its object.
    for (const [i, o] of parsed.entries()) assert.equal(lines[i], JSON.stringify(o));
    assert.deepEqual(
      parsed.filter((o) => o.type === 1).map(({ name, name_raw }) => name ?? { name_raw }),
      ['a"b\\c\n', 'café', { name_raw: Buffer.from([0xff, 0xfe]).toString('base64') }, '\x7f\x01', 'x\u2028'],
    );
  });

  it('copies the raw tar bytes it is given: the caller may reuse its buffer at once', function () {
    const lines: Buffer[] = [];
    const split = new TarSplitWriter((b) => lines.push(Buffer.from(b)));
    const scratch = Buffer.alloc(3000);
    // Two headers and a padding in one segment (larger than the first buffer), then a member.
    scratch.fill(1, 0, 1536);
    split.raw(scratch.subarray(0, 1536));
    scratch.fill(2);
    split.raw(scratch.subarray(0, 1000));
    scratch.fill(3);
    split.raw(scratch.subarray(0, 3000));
    scratch.fill(4);
    split.file('a', 0, null);
    split.end();
    const first = JSON.parse(Buffer.concat(lines).toString().split('\n')[0]!) as { payload: string };
    const want = Buffer.concat([Buffer.alloc(1536, 1), Buffer.alloc(1000, 2), Buffer.alloc(3000, 3)]);
    assert.equal(first.payload, want.toString('base64'));
  });

  it('compresses the tar-split as its batches come, with no batch left to the collector, and it lists every member', async function () {
    // 3,000 members with long names: ~10 batches of TAR_SPLIT_BATCH.
    const entries = symlinks(3000);
    const { result, detached: freed } = await writeDetaching(entries, join(dir, 'layer'));
    // Batches were Buffers of their own, freed (detached) once the thread pool's compressor had
    // them (one line past TAR_SPLIT_BATCH each); now one buffer is reused, so none is made (the
    // pools' buffers are powers of two).
    const batches = freed.filter((n) => n > TAR_SPLIT_BATCH && n < TAR_SPLIT_BATCH + 4096);
    assert.deepEqual(batches, []);
    const layer = await readFile(join(dir, 'layer'));
    const [offset, length] = result.descriptor
      .annotations!['io.github.containers.zstd-chunked.tarsplit-position']!.split(':')
      .map(Number);
    const lines = zstdDecompressSync(layer.subarray(offset, offset! + length!))
      .toString()
      .trimEnd()
      .split('\n');
    const files = lines.map((l) => JSON.parse(l) as { type: number; name?: string }).filter((l) => l.type === 1);
    assert.deepEqual(
      files.map((f) => f.name),
      entries.map((e) => e.path),
    );
  });
});
