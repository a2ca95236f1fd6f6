/** The bench's ideal per-file zstd download: each frame the plan fetches, once, and nothing else. */
import assert from 'node:assert/strict';
import type { TreeEntry } from '../../src/deploy/apply/index.ts';
import { idealFrameBytes } from '../../bench/lib/ideal.ts';

function entry(path: string, layer: number, offset?: number, endOffset?: number, size = 100): TreeEntry {
  return {
    path,
    type: 'reg',
    mode: 0o644,
    uid: 0,
    gid: 0,
    mtimeNs: 0n,
    xattrs: {},
    size,
    digest: `sha256:${'0'.repeat(64)}`,
    source: { layer, offset, endOffset },
  };
}

describe('bench: ideal per-file zstd', () => {
  it('adds the frames, counting a frame two files share once and files without a frame not at all', () => {
    const ideal = idealFrameBytes([
      entry('a', 0, 100, 150),
      entry('b', 0, 200, 230),
      entry('hardlink-of-b', 0, 200, 230),
      entry('same-offset-other-layer', 1, 200, 210),
      entry('empty', 0, undefined, undefined, 0),
    ]);
    assert.deepEqual(ideal, { bytes: 50 + 30 + 10, frames: 3 });
  });

  it('is zero when nothing needs fetching', () => {
    assert.deepEqual(idealFrameBytes([]), { bytes: 0, frames: 0 });
  });
});
