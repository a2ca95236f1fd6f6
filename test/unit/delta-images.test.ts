/** What `tiu delta` reads of its images (src/bundle/delta-images.ts): ranges, files by path, verified frames. */
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { zstdCompressSync } from 'node:zlib';
import { blobRanges, imageFiles, readImageFile, type LayerToc } from '../../src/bundle/delta-images.ts';
import { RangeUnsupportedError } from '../../src/content/errors.ts';
import type { Target } from '../../src/content/interfaces.ts';
import { isTiuError } from '../../src/errors.ts';
import type { TocEntry } from '../../src/layer/toc.ts';
import { sha256 } from '../../src/oci/digest.ts';
import type { Descriptor } from '../../src/oci/types.ts';
import { MemoryTarget } from '../helpers/memory-target.ts';

const blob = Buffer.from(Array.from({ length: 5000 }, (_, i) => i % 251));
const desc: Descriptor = { mediaType: 'application/octet-stream', digest: sha256(blob), size: blob.length };

/** A target that refuses ranges (a registry answering 200) and streams the blob in 700-byte pieces. */
function noRanges(): Target & { rangeCalls: number; fetchCalls: number } {
  const t = new MemoryTarget('no-ranges:') as MemoryTarget & { rangeCalls: number; fetchCalls: number };
  t.rangeCalls = 0;
  t.fetchCalls = 0;
  t.fetchRange = () => {
    t.rangeCalls++;
    return Promise.reject(new RangeUnsupportedError('no-ranges:'));
  };
  t.fetch = () => {
    t.fetchCalls++;
    const pieces: Buffer[] = [];
    for (let i = 0; i < blob.length; i += 700) pieces.push(blob.subarray(i, i + 700));
    return Promise.resolve(Readable.from(pieces));
  };
  return t;
}

describe('tiu delta: reading the images', function () {
  it('reads ranges by range where the target serves them', async function () {
    const t = new MemoryTarget();
    await t.push(desc, Readable.from([blob]));
    const range = blobRanges(t);
    assert.deepEqual(await range(desc, 10, 20), blob.subarray(10, 20));
    assert.deepEqual(await range(desc, 4990, 5000), blob.subarray(4990));
  });

  it('falls back to reading through the whole blob once the target refuses ranges, and stops asking', async function () {
    const t = noRanges();
    const range = blobRanges(t);
    for (const [s, e] of [
      [0, 1],
      [699, 701],
      [1000, 3456],
      [4999, 5000],
      [0, 5000],
    ] as const)
      assert.deepEqual(await range(desc, s, e), blob.subarray(s, e), `[${s}, ${e})`);
    assert.equal(t.rangeCalls, 1);
    assert.equal(t.fetchCalls, 5);
  });

  const layer = (n: number): Descriptor => ({ mediaType: 'x', digest: sha256(`layer ${n}`), size: 1 });
  const toc = (n: number, entries: TocEntry[]): LayerToc =>
    ({ layer: layer(n), toc: { version: 1, entries } }) as unknown as LayerToc;
  const reg = (name: string, digest: string, extra: Partial<TocEntry> = {}): TocEntry => ({
    type: 'reg',
    name,
    digest,
    size: 10,
    offset: 100,
    endOffset: 120,
    ...extra,
  });

  it('lists regular files with content by name, a later layer over an earlier one; marks chunked files', function () {
    const files = imageFiles([
      toc(1, [reg('a', sha256('a1')), reg('b', sha256('b1')), { type: 'reg', name: 'empty' }]),
      toc(2, [
        reg('a', sha256('a2')),
        reg('big', sha256('big')),
        { type: 'chunk', name: 'big', offset: 120, endOffset: 140 },
        { type: 'symlink', name: 'link', linkName: 'a' },
        reg('noframe', sha256('x'), { endOffset: 100 }),
      ]),
    ]);
    assert.deepEqual([...files.keys()].sort(), ['a', 'b', 'big']);
    assert.equal(files.get('a')!.digest, sha256('a2'));
    assert.equal(files.get('a')!.layer.digest, layer(2).digest);
    assert.equal(files.get('big')!.chunked, true);
    assert.equal(files.get('b')!.chunked, false);
  });

  it('reads a file from its frame and refuses one that does not match the TOC (DIGEST_MISMATCH)', async function () {
    const content = Buffer.from('the content of a file\n'.repeat(50));
    const frame = zstdCompressSync(content);
    const data = Buffer.concat([Buffer.alloc(33), frame]);
    const d: Descriptor = { mediaType: 'application/octet-stream', digest: sha256(data), size: data.length };
    const t = new MemoryTarget();
    await t.push(d, Readable.from([data]));
    const file = {
      path: 'usr/x',
      digest: sha256(content),
      size: content.length,
      layer: d,
      offset: 33,
      endOffset: data.length,
      chunked: false,
    };
    assert.deepEqual(await readImageFile(blobRanges(t), file), content);
    await assert.rejects(readImageFile(blobRanges(t), { ...file, digest: sha256('other') }), (e) =>
      isTiuError(e, 'DIGEST_MISMATCH'),
    );
    await assert.rejects(readImageFile(blobRanges(t), { ...file, size: content.length - 1 }), (e) =>
      isTiuError(e, 'ZSTD_OUTPUT_TOO_LARGE'),
    );
  });
});
