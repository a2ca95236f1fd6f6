import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { randomBytes } from 'node:crypto';
import { constants as zlibConstants, zstdCompressSync, zstdDecompressSync } from 'node:zlib';
import type { TreeEntry } from '../../src/layer/entry.ts';
import { writeLayer } from '../../src/bundle/layer-writer.ts';
import { fetchTocFile } from '../helpers/toc-file.ts';
import {
  formatModtime,
  parseFooter,
  readTocFromFooter,
  skippableFrame,
  ZstdChunkedAnnotation,
} from '../../src/layer/toc.ts';
import {
  SYNC_FRAME_MAX,
  SYNC_OUTPUT_MAX,
  zstdDecompressBufferSync,
  zstdDecompressFrames,
  zstdFrameSpans,
} from '../../src/layer/zstd-frames.ts';
import { Crc64 } from '../../src/layer/tar-split.ts';
import { ByteReader, readTar } from '../../src/layer/tar.ts';
import { isTiuError } from '../../src/errors.ts';

function file(path: string, data: Buffer, over: Partial<TreeEntry> = {}): TreeEntry {
  return {
    path,
    type: 'reg',
    mode: 0o644,
    uid: 0,
    gid: 0,
    mtimeNs: 1_700_000_000n * 1_000_000_000n,
    size: data.length,
    xattrs: {},
    content: { data },
    ...over,
  };
}

async function collect(it: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const p of it) parts.push(p);
  return Buffer.concat(parts);
}

describe('layer: zstd:chunked layers and their table of contents', function () {
  let dir: string;
  let blob: Buffer;
  let annotations: Record<string, string>;
  let diffId: string;
  const big = Buffer.alloc(5 * 1024 * 1024 + 3);
  for (let i = 0; i + 4 <= big.length; i += 4096) big.writeUInt32LE(i, i);
  const entries: TreeEntry[] = [
    { path: 'usr', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtimeNs: 1_000_000_000n, size: 0, xattrs: {} },
    file('usr/a', Buffer.from('first file')),
    file('usr/big', big),
    file('usr/empty', Buffer.alloc(0)),
    file('usr/z\xff', Buffer.from('odd name'), { xattrs: { 'user.k': Buffer.from([1, 2, 3]) } }),
  ];

  before(async function () {
    dir = await mkdtemp(join(tmpdir(), 'tiu-toc-'));
    const r = await writeLayer(entries, join(dir, 'layer'), { compression: 'zstd' });
    blob = await readFile(join(dir, 'layer'));
    annotations = r.descriptor.annotations!;
    diffId = r.diffId;
    assert.equal(r.descriptor.size, blob.length);
    assert.equal(r.descriptor.digest, `sha256:${createHash('sha256').update(blob).digest('hex')}`);
  });
  after(async function () {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const fetch = (start: number, end: number) => Promise.resolve(blob.subarray(start, end));

  it('decompresses (all frames) to a tar whose sha256 is the diff_id', async function () {
    const tar = await collect(zstdDecompressFrames(Readable.from([blob])));
    assert.equal(`sha256:${createHash('sha256').update(tar).digest('hex')}`, diffId);
    const names: string[] = [];
    const r = new ByteReader(Readable.from([tar]));
    for await (const m of readTar(r, 't')) names.push(m.name);
    assert.deepEqual(names, ['usr/', 'usr/a', 'usr/big', 'usr/empty', 'usr/z\xff']);
  });

  it('has a TOC, found through the annotations or the footer, pinned by the checksum', async function () {
    const toc = await readTocFromFooter(fetch, blob.length, annotations);
    assert.equal(toc.version, 1);
    assert.deepEqual(
      toc.entries.map((x) => [x.type, x.name]),
      [
        ['dir', 'usr/'],
        ['reg', 'usr/a'],
        ['reg', 'usr/big'],
        ['reg', 'usr/empty'],
        ['reg', 'usr/z\xff'],
      ],
    );
    // The name's raw bytes, not U+FFFD and no side field.
    assert.equal(Object.keys(toc.entries[4]!).includes('nameRaw'), false);
    assert.deepEqual(toc.entries[4]!.xattrs, { 'user.k': 'AQID' });
    assert.equal(toc.entries[1]!.modtime, '2023-11-14T22:13:20Z');
    assert.deepEqual(await readTocFromFooter(fetch, blob.length), toc);
    const footer = parseFooter(blob.subarray(blob.length - 72));
    assert.equal(
      annotations[ZstdChunkedAnnotation.ManifestPosition],
      `${footer.offset}:${footer.lengthCompressed}:${footer.lengthUncompressed}:1`,
    );
  });

  it('pins the uncompressed TOC JSON by its sha256 (org.opensuse.tiu.toc.json-digest), for delta patches', function () {
    const footer = parseFooter(blob.subarray(blob.length - 72));
    const json = zstdDecompressSync(blob.subarray(footer.offset, footer.offset + footer.lengthCompressed));
    assert.equal(json.length, footer.lengthUncompressed);
    assert.equal(
      annotations['org.opensuse.tiu.toc.json-digest'],
      `sha256:${createHash('sha256').update(json).digest('hex')}`,
    );
  });

  it('gives each file its own frame, fetchable and verified alone', async function () {
    const toc = await readTocFromFooter(fetch, blob.length, annotations);
    for (const [i, x] of toc.entries.entries()) {
      if (x.type !== 'reg') continue;
      const data = await fetchTocFile(fetch, x);
      assert.ok(data.equals((entries[i]!.content as { data: Buffer }).data), x.name);
    }
    const e = toc.entries[1]!;
    const tampered = Buffer.from(blob);
    // flip a byte inside the first file's frame (after its header) and fetch it again
    tampered[e.endOffset! - 5] = tampered[e.endOffset! - 5]! ^ 0xff;
    await assert.rejects(
      fetchTocFile((s, en) => Promise.resolve(tampered.subarray(s, en)), e),
      (err) => isTiuError(err, 'TOC_CHECKSUM_MISMATCH') || isTiuError(err, 'TOC_INVALID'),
    );
  });

  it('refuses a TOC that does not match the annotation, and blobs without a footer', async function () {
    await assert.rejects(
      readTocFromFooter(fetch, blob.length, {
        ...annotations,
        [ZstdChunkedAnnotation.ManifestChecksum]: `sha256:${'1'.repeat(64)}`,
      }),
      (err) => isTiuError(err, 'TOC_CHECKSUM_MISMATCH'),
    );
    const plain = zstdCompressSync(Buffer.alloc(4096));
    await assert.rejects(
      readTocFromFooter((s, en) => Promise.resolve(plain.subarray(s, en)), plain.length),
      (err) => isTiuError(err, 'TOC_INVALID'),
    );
    const { [ZstdChunkedAnnotation.ManifestChecksum]: _drop, ...noChecksum } = annotations;
    await assert.rejects(readTocFromFooter(fetch, blob.length, noChecksum), (err) => isTiuError(err, 'TOC_INVALID'));
  });

  it('carries tar-split data that rebuilds the exact tar from file contents', async function () {
    const toc = await readTocFromFooter(fetch, blob.length, annotations);
    const [off, len, ulen] = annotations[ZstdChunkedAnnotation.TarSplitPosition]!.split(':').map(Number) as [
      number,
      number,
      number,
    ];
    const frame = blob.subarray(off, off + len);
    assert.equal(toc.tarSplitDigest, `sha256:${createHash('sha256').update(frame).digest('hex')}`);
    const text = await collect(zstdDecompressFrames(Readable.from([frame])));
    assert.equal(text.length, ulen);
    const byName = new Map(
      entries.map((x) => [Buffer.from(x.type === 'dir' ? x.path + '/' : x.path, 'latin1').toString('base64'), x]),
    );
    const rebuilt = createHash('sha256');
    const lines = text
      .toString('utf8')
      .trim()
      .split('\n')
      .map(
        (l) =>
          JSON.parse(l) as {
            type: number;
            name?: string;
            name_raw?: string;
            size?: number;
            payload: string | null;
            position: number;
          },
      );
    lines.forEach((l, i) => assert.equal(l.position, i));
    for (const l of lines) {
      if (l.type === 2) rebuilt.update(Buffer.from(l.payload ?? '', 'base64'));
      else {
        // tar-split's rule: `name` when the name is valid UTF-8, else only `name_raw` (base64 of the bytes).
        assert.ok((l.name === undefined) !== (l.name_raw === undefined), JSON.stringify(l));
        const key = l.name_raw ?? Buffer.from(l.name!, 'utf8').toString('base64');
        const e = byName.get(key)!;
        assert.equal(
          l.name_raw !== undefined,
          e && e.path === 'usr/z\xff',
          `name_raw only for the name that is not UTF-8`,
        );
        assert.ok(e, `tar-split names ${l.name ?? l.name_raw}`);
        const data = (e.content as { data: Buffer } | undefined)?.data ?? Buffer.alloc(0);
        assert.equal(l.size ?? 0, data.length);
        if (data.length) {
          assert.equal(l.payload, new Crc64().update(data).digest().toString('base64'));
          rebuilt.update(data);
        } else assert.equal(l.payload, null);
      }
    }
    assert.equal(`sha256:${rebuilt.digest('hex')}`, diffId);
  });

  it('formats modtimes as Go does and leaves out what a date cannot hold', function () {
    assert.equal(formatModtime(0, 0), '1970-01-01T00:00:00Z');
    assert.equal(formatModtime(1_700_000_000, 120_000_000), '2023-11-14T22:13:20.12Z');
    assert.equal(formatModtime(2 ** 40, 0), undefined);
  });

  it('CRC-64/ISO as Go computes it', function () {
    assert.equal(new Crc64().update(Buffer.from('123456789')).digest().toString('hex'), 'b90956c775a41001');
  });

  it('CRC-64/ISO: the 8-bytes-a-step path agrees with a bit-at-a-time reference, however the data is split', function () {
    const reference = (data: Uint8Array): string => {
      const poly = 0xd800000000000000n;
      let crc = 0xffffffffffffffffn;
      for (const byte of data) {
        crc ^= BigInt(byte);
        for (let k = 0; k < 8; k++) crc = crc & 1n ? (crc >> 1n) ^ poly : crc >> 1n;
      }
      return (crc ^ 0xffffffffffffffffn).toString(16).padStart(16, '0');
    };
    let seed = 7;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed % n;
    };
    for (const len of [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 4099]) {
      const data = Buffer.from(Array.from({ length: len }, () => rnd(256)));
      assert.equal(new Crc64().update(data).digest().toString('hex'), reference(data), `${len} bytes`);
      assert.equal(
        new Crc64(false).update(data).digest().toString('hex'),
        reference(data),
        `${len} bytes, no word loads`,
      );
      // Word loads start at a 4-byte boundary of the underlying memory, whatever the view's offset.
      for (let shift = 1; shift < 4; shift++) {
        const moved = Buffer.alloc(len + 4).fill(0xa5);
        data.copy(moved, shift);
        const view = moved.subarray(shift, shift + len);
        assert.equal(new Crc64().update(view).digest().toString('hex'), reference(data), `${len} bytes at +${shift}`);
      }
      const c = new Crc64();
      for (let i = 0; i < len;) {
        const n = 1 + rnd(20);
        c.update(data.subarray(i, i + n));
        i += n;
      }
      assert.equal(c.digest().toString('hex'), reference(data), `${len} bytes in pieces`);
    }
  });

  it('zstd frame reader skips skippable frames and concatenates frames', async function () {
    const b = Buffer.concat([
      zstdCompressSync(Buffer.from('ab')),
      skippableFrame(Buffer.from('ignored')),
      zstdCompressSync(Buffer.from('cd')),
    ]);
    assert.equal(
      (await collect(zstdDecompressFrames(Readable.from([b.subarray(0, 5), b.subarray(5)])))).toString(),
      'abcd',
    );
    await assert.rejects(collect(zstdDecompressFrames(Readable.from([b.subarray(0, b.length - 3)]))), (err) =>
      isTiuError(err, 'TAR_INVALID'),
    );
  });

  it('zstd frame reader: small frames in one call, large or far-expanding frames streamed in bounded pieces', async function () {
    const small = Buffer.from('small file content\n'.repeat(50));
    const random = randomBytes(SYNC_FRAME_MAX + 300_000); // compressed, still larger than SYNC_FRAME_MAX
    const zeros = Buffer.alloc(SYNC_OUTPUT_MAX + 5_000_000); // a tiny frame that expands beyond SYNC_OUTPUT_MAX
    const checked = { params: { [zlibConstants.ZSTD_c_checksumFlag]: 1 } };
    const frames = [
      zstdCompressSync(small, checked),
      zstdCompressSync(random),
      skippableFrame(Buffer.from('toc')),
      zstdCompressSync(zeros),
      zstdCompressSync(Buffer.alloc(0)),
    ];
    assert.ok(frames[1]!.length > SYNC_FRAME_MAX && frames[3]!.length < SYNC_FRAME_MAX);
    const whole = Buffer.concat(frames);
    for (const pieces of [[whole], [whole.subarray(0, 7), whole.subarray(7, 70_000), whole.subarray(70_000)]]) {
      const out: Buffer[] = [];
      for await (const c of zstdDecompressFrames(Readable.from(pieces))) out.push(c);
      assert.ok(Buffer.concat(out).equals(Buffer.concat([small, random, zeros])));
      assert.ok(
        out.every((c) => c.length <= 1024 * 1024),
        `largest piece ${Math.max(...out.map((c) => c.length))} bytes`,
      );
    }
    // a corrupted small frame (its checksum no longer matches) is refused
    const bad = Buffer.from(frames[0]!);
    bad[bad.length - 6]! ^= 0xff;
    await assert.rejects(collect(zstdDecompressFrames(Readable.from([bad]))));
  });

  it('zstd frames of a buffer in one call each: skippable frames left out, size bounded, truncation refused', function () {
    const a = Buffer.from('first frame '.repeat(100));
    const b = Buffer.alloc(70_000, 7);
    const buf = Buffer.concat([
      zstdCompressSync(a),
      skippableFrame(Buffer.from('toc')),
      zstdCompressSync(b),
      zstdCompressSync(Buffer.alloc(0)),
    ]);
    assert.equal(zstdFrameSpans(buf).length, 3);
    assert.ok(zstdDecompressBufferSync(buf, a.length + b.length).equals(Buffer.concat([a, b])));
    assert.throws(
      () => zstdDecompressBufferSync(buf, a.length + b.length - 1),
      (e) => isTiuError(e, 'ZSTD_OUTPUT_TOO_LARGE'),
    );
    assert.throws(
      () => zstdDecompressBufferSync(buf, a.length - 1),
      (e) => isTiuError(e, 'ZSTD_OUTPUT_TOO_LARGE'),
    );
    assert.throws(
      () => zstdDecompressBufferSync(buf.subarray(0, buf.length - 5), 1e6),
      (e) => isTiuError(e, 'TAR_INVALID'),
    );
    assert.throws(
      () => zstdDecompressBufferSync(Buffer.from('not zstd at all'), 1e6),
      (e) => isTiuError(e, 'TAR_INVALID'),
    );
  });

  it('gzip layers are a plain gzip tar with the same diff_id', async function () {
    const r = await writeLayer(entries, join(dir, 'layer.gz'), { compression: 'gzip' });
    assert.equal(r.diffId, diffId);
    assert.equal(r.descriptor.mediaType, 'application/vnd.oci.image.layer.v1.tar+gzip');
    assert.equal(r.descriptor.annotations, undefined);
  });
});
