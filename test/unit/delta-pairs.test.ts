/** Which TO files `tiu delta` patches, and from which FROM file (src/bundle/delta.ts pairFiles). */
import assert from 'node:assert/strict';
import type { LayerToc } from '../../src/bundle/delta-images.ts';
import { pairFiles } from '../../src/bundle/delta.ts';
import type { TocEntry } from '../../src/layer/toc.ts';
import { sha256 } from '../../src/oci/digest.ts';
import { MAX_PATCH_INPUT } from '../../src/patch/media.ts';

const toc = (n: number, entries: TocEntry[]): LayerToc =>
  ({
    layer: { mediaType: 'x', digest: sha256(`layer ${n}`), size: 1 },
    toc: { version: 1, entries },
  }) as unknown as LayerToc;
const reg = (name: string, content: string, size = 10): TocEntry => ({
  type: 'reg',
  name,
  digest: sha256(content),
  size,
  offset: 100,
  endOffset: 120,
});

describe('tiu delta: pairing TO files with FROM files', function () {
  it('pairs new content with the old file at the same path; content FROM has anywhere needs nothing', function () {
    const from = [toc(1, [reg('a', 'a1'), reg('b', 'b1'), reg('moved-from', 'm')])];
    const to = [toc(2, [reg('a', 'a2'), reg('b', 'b1'), reg('moved-to', 'm'), reg('fresh', 'f')])];
    const r = pairFiles(from, to);
    assert.deepEqual(
      r.pairs.map((p) => [p.old.path, p.old.digest, p.neu.path, p.neu.digest]),
      [['a', sha256('a1'), 'a', sha256('a2')]],
    );
    assert.equal(r.changed, 2);
    assert.equal(r.unpatched['no-old-file'], 1);
  });

  it('one pair per new content, at the first path (byte order) that has an old file', function () {
    const from = [toc(1, [reg('z/lib.so', 'old lib')])];
    const to = [toc(2, [reg('a/copy-of-lib.so', 'new lib'), reg('z/lib.so', 'new lib')])];
    const r = pairFiles(from, to);
    assert.deepEqual(
      r.pairs.map((p) => [p.old.path, p.neu.path]),
      [['z/lib.so', 'z/lib.so']],
    );
    assert.equal(r.changed, 1);
    assert.deepEqual(Object.values(r.unpatched), [0, 0, 0, 0, 0]);
  });

  it('counts why content gets no patch: no old file, over the size cap, split into chunks', function () {
    const from = [
      toc(1, [reg('big-old', 'x', MAX_PATCH_INPUT + 1), reg('big-new', 'y'), reg('chunky', 'c1'), reg('ok', 'o1')]),
    ];
    const to = [
      toc(2, [
        reg('big-old', 'x2'),
        reg('big-new', 'y2', MAX_PATCH_INPUT + 1),
        reg('chunky', 'c2'),
        { type: 'chunk', name: 'chunky', offset: 120, endOffset: 130 },
        reg('ok', 'o2'),
        reg('new', 'n'),
      ]),
    ];
    const r = pairFiles(from, to);
    assert.deepEqual(
      r.pairs.map((p) => p.neu.path),
      ['ok'],
    );
    assert.deepEqual(r.unpatched, {
      'no-old-file': 1,
      'too-large': 2,
      chunked: 1,
      'not-smaller': 0,
      'not-patchable': 0,
    });
    assert.equal(r.changed, 5);
  });
});
