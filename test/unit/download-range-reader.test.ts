/**
 * Issue 19: a range read into the consumer's buffers (openRange) instead of a stream that
 * allocates a Buffer per chunk. The cache's layout serves its blobs' ranges that way (the
 * whole-layer path reads every changed file from it), and a file larger than a request's span
 * goes through a window of WINDOW_MIN, not a stream, where the source can.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { zstdCompressSync } from 'node:zlib';
import { coalesce, ContentStore, downloadRanges } from '../../src/deploy/delta/index.ts';
import { WINDOW_MIN } from '../../src/deploy/delta/span-window.ts';
import { DEFAULT_MAX_SPAN } from '../../src/deploy/delta/ranges.ts';
import { OciLayoutTarget } from '../../src/content/oci-layout.ts';
import type { BlobReader } from '../../src/content/blob-reader.ts';
import { hashFile } from '../../src/deploy/apply/scan.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import type { Descriptor } from '../../src/oci/types.ts';
import { isTiuError } from '../../src/errors.ts';
import { layerFile } from '../helpers/file-entry.ts';

const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** Read all of `r` through buffers of `size` bytes. */
async function readAll(r: BlobReader, size: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  const into = Buffer.alloc(size);
  for (let n; (n = await r.read(into)) > 0;) parts.push(Buffer.from(into.subarray(0, n)));
  await r.close();
  return Buffer.concat(parts);
}

describe('range reads into the consumer buffers (issue 19)', function () {
  this.timeout(60_000);
  let dir: string;
  let layout: OciLayoutTarget;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tiu-range-reader-'));
    layout = await OciLayoutTarget.open(join(dir, 'layout'), { create: true });
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function pushed(blob: Buffer): Promise<Descriptor> {
    const desc: Descriptor = {
      mediaType: MediaType.OciLayerZstd,
      digest: sha(blob) as Descriptor['digest'],
      size: blob.length,
    };
    await layout.push(desc, Readable.from([blob]));
    return desc;
  }

  it("a layout's openRange reads exactly [start, end), refuses ranges outside the blob and missing blobs", async () => {
    const blob = randomBytes(300 * 1024);
    const desc = await pushed(blob);
    assert.deepEqual(
      await readAll(await layout.openRange(desc, 1000, 200_000), 64 * 1024),
      blob.subarray(1000, 200_000),
    );
    // a buffer larger than what is left gets only the range's bytes, then the end
    assert.deepEqual(await readAll(await layout.openRange(desc, 299_000, 300 * 1024), 1 << 20), blob.subarray(299_000));
    assert.equal((await readAll(await layout.openRange(desc, 5, 5), 16)).length, 0);
    await assert.rejects(layout.openRange(desc, 0, blob.length + 1), (e) => isTiuError(e, 'RANGE_INVALID'));
    await assert.rejects(layout.openRange(desc, 10, 5), (e) => isTiuError(e, 'RANGE_INVALID'));
    const missing = { ...desc, digest: sha(Buffer.from('not here')) as Descriptor['digest'] };
    await assert.rejects(layout.openRange(missing, 0, 1), (e) => isTiuError(e, 'CONTENT_NOT_FOUND'));
  });

  /** The layout, its ranges counted: which way each was read and the largest buffer a reader filled. */
  function counting() {
    const seen = { streams: 0, readers: 0, largestRead: 0 };
    const source = Object.create(layout) as OciLayoutTarget;
    source.fetchRange = (d, s, e, o) => {
      seen.streams++;
      return layout.fetchRange(d, s, e, o);
    };
    source.openRange = async (d, s, e, o) => {
      seen.readers++;
      const r = await layout.openRange(d, s, e, o);
      return {
        read: (into) => {
          seen.largestRead = Math.max(seen.largestRead, into.length);
          return r.read(into);
        },
        close: () => r.close(),
      };
    };
    return { source, seen };
  }

  it('reads a file larger than a span through a window of WINDOW_MIN, not a stream', async () => {
    // Incompressible: its one frame is larger than the 4 MiB span, a request of its own.
    const data = randomBytes(DEFAULT_MAX_SPAN + 512 * 1024);
    const frame = zstdCompressSync(data);
    const small = randomBytes(40 * 1024);
    const smallFrame = zstdCompressSync(small);
    const blob = Buffer.concat([frame, smallFrame]);
    const desc = await pushed(blob);
    const entries = [
      layerFile('usr/lib/large', data.length, sha(data), 0, frame.length),
      layerFile('usr/lib/small', small.length, sha(small), frame.length, blob.length),
    ];
    const ranges = coalesce(entries);
    assert.ok(
      ranges.some((r) => r.entries.length === 1 && r.end - r.start > DEFAULT_MAX_SPAN),
      'a request of its own',
    );
    const { source, seen } = counting();
    const store = await ContentStore.open(join(dir, 'store-large'));
    const stats = await downloadRanges(source, [desc], ranges, store);
    assert.equal(stats.files, 2);
    assert.equal(stats.bytes, blob.length);
    for (const e of entries) assert.equal(await hashFile(store.path(e.digest!)), e.digest);
    assert.equal(seen.streams, 0, 'no range read as a stream');
    assert.equal(seen.readers, ranges.length);
    assert.ok(seen.largestRead <= WINDOW_MIN, `largest read ${seen.largestRead} bytes, window ${WINDOW_MIN}`);
    await store.remove();
  });

  it('streams a frame larger than a span whose file declares little (never a window of the frame)', async () => {
    // A hostile TOC: 6 MiB of frame for a file it says is 512 KiB. Read through the window, the
    // frame would be read whole (files under DECODE_WHOLE_MAX are decoded in one call).
    const data = randomBytes(6 * 1024 * 1024);
    const frame = zstdCompressSync(data);
    const desc = await pushed(frame);
    const e = layerFile('usr/lib/liar', 512 * 1024, sha(data), 0, frame.length);
    const { source, seen } = counting();
    const store = await ContentStore.open(join(dir, 'store-liar'));
    await assert.rejects(downloadRanges(source, [desc], coalesce([e]), store), (err) =>
      isTiuError(err, 'DELTA_FILE_MISMATCH'),
    );
    assert.equal(seen.readers, 0);
    assert.equal(seen.streams, 1);
    assert.equal(store.has(e.digest!), false);
    await store.remove();
  });
});
