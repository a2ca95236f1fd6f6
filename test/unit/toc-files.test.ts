import assert from 'node:assert/strict';
import { tocToEntries } from '../../src/deploy/apply/index.ts';
import { TocFile } from '../../src/deploy/apply/toc-files.ts';
import { NO_XATTRS } from '../../src/layer/entry.ts';
import type { TocEntry } from '../../src/layer/toc.ts';

const digest = (i: number) => `sha256:${i.toString(16).padStart(64, 'a')}`;

describe('TOC regular files as rows (toc-files.ts)', function () {
  it('gives back exactly what the TOC said, over the whole range of every field', function () {
    const toc: TocEntry[] = [
      {
        type: 'reg',
        name: 'a',
        mode: 0o7777,
        uid: 2 ** 32,
        gid: 2 ** 40,
        size: Number.MAX_SAFE_INTEGER,
        modtime: '1901-12-13T20:45:51.999999999Z',
        digest: digest(1),
        offset: 2 ** 52,
        endOffset: Number.MAX_SAFE_INTEGER,
        xattrs: { 'user.x': Buffer.from([0, 255]).toString('base64') },
      },
      {
        type: 'reg',
        name: 'b',
        uid: 2 ** 32 - 1,
        gid: 2 ** 32 - 2,
        size: 1,
        modtime: '9999-12-31T23:59:59.5Z',
        digest: digest(2),
      },
      { type: 'reg', name: 'c', size: 0 },
    ];
    // More rows than one block holds, so rows of later blocks are read too.
    for (let i = 0; i < 600; i++)
      toc.push({
        type: 'reg',
        name: `f${i}`,
        uid: i,
        gid: i + 1,
        size: i,
        digest: digest(i),
        offset: i * 10,
        endOffset: i * 10 + 5,
      });
    const entries = tocToEntries({ version: 1, entries: toc }, 3);
    assert.ok(entries.every((e): boolean => e instanceof TocFile));
    const [a, b, c] = entries as [TocFile, TocFile, TocFile];
    assert.deepEqual(
      { type: a.type, mode: a.mode, uid: a.uid, gid: a.gid, size: a.size, mtimeNs: a.mtimeNs, digest: a.digest },
      {
        type: 'reg',
        mode: 0o7777,
        uid: 2 ** 32,
        gid: 2 ** 40,
        size: Number.MAX_SAFE_INTEGER,
        mtimeNs: -2_147_483_648_000_000_001n,
        digest: digest(1),
      },
    );
    assert.deepEqual(a.source, { layer: 3, offset: 2 ** 52, endOffset: Number.MAX_SAFE_INTEGER });
    assert.deepEqual(a.xattrs, { 'user.x': Buffer.from([0, 255]) });
    assert.deepEqual([b.uid, b.gid, b.mtimeNs], [2 ** 32 - 1, 2 ** 32 - 2, 253_402_300_799_500_000_000n]);
    assert.equal(b.xattrs, NO_XATTRS);
    assert.equal(c.digest, 'sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
    assert.deepEqual([c.size, c.mtimeNs, c.uid], [0, 0n, 0]);
    for (let i = 0; i < 600; i++) {
      const e = entries[3 + i]!;
      assert.deepEqual(
        [e.path, e.uid, e.gid, e.size, e.digest, e.source],
        [`f${i}`, i, i + 1, i, digest(i), { layer: 3, offset: i * 10, endOffset: i * 10 + 5 }],
      );
    }
  });
});
