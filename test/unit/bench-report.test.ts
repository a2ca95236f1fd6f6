import assert from 'node:assert/strict';
import { compare, recheck } from '../../bench/lib/report.ts';
import { formatRange, formatRatio } from '../../bench/lib/stats.ts';
import type { Figure } from '../../bench/lib/stats.ts';

const fig = (tool: string, metric: string, samples: number[], unit: 's' | 'B' = 's'): Figure => ({
  scenario: 'update',
  metric,
  unit,
  tool,
  samples,
});

describe('bench report', () => {
  it('compares every tiu variant with every peer, with the ratio of medians and the sample range', () => {
    const cs = compare([
      fig('tiu', 'time', [2, 3, 4]),
      fig('tiu --transfer whole-layer', 'time', [6, 6, 6]),
      fig('skopeo', 'time', [5, 6, 8]),
      fig('casync', 'time', [3, 3, 3]),
    ]);
    assert.deepEqual(
      cs.map((c) => `${c.subject}/${c.peer}`),
      ['tiu/skopeo', 'tiu/casync', 'tiu --transfer whole-layer/skopeo', 'tiu --transfer whole-layer/casync'],
    );
    const first = cs[0]!;
    assert.equal(first.ratio, 3 / 6);
    assert.equal(first.low, 2 / 8);
    assert.equal(first.high, 4 / 5);
    assert.equal(cs[3]!.ratio, 2);
    assert.equal(cs[3]!.low, 2);
  });

  it('treats a peer that needed nothing as equal when tiu needed nothing too, else as infinitely better', () => {
    const [same, worse] = [
      compare([fig('tiu', 'disk', [0], 'B'), fig('rsync', 'disk', [0], 'B')])[0]!,
      compare([fig('tiu', 'disk', [5], 'B'), fig('rsync', 'disk', [0], 'B')])[0]!,
    ];
    assert.equal(same.ratio, 1);
    assert.equal(worse.ratio, Infinity);
    assert.equal(formatRatio(worse.ratio), '∞');
  });

  it("finds the ratios of a new run that leave the earlier run's range", () => {
    const earlier = compare([
      fig('tiu', 'time', [9, 10, 11]),
      fig('peer', 'time', [10, 10, 10]),
      fig('tiu', 'bytes', [100], 'B'),
      fig('peer', 'bytes', [200], 'B'),
    ]);
    const steady = compare([
      fig('tiu', 'time', [10.5, 10.6, 12]),
      fig('peer', 'time', [10, 10, 10]),
      fig('tiu', 'bytes', [101], 'B'),
      fig('peer', 'bytes', [200], 'B'),
    ]);
    const moved = compare([
      fig('tiu', 'time', [13, 14, 15]),
      fig('peer', 'time', [10, 10, 10]),
      fig('tiu', 'bytes', [110], 'B'),
      fig('peer', 'bytes', [200], 'B'),
    ]);
    assert.deepEqual(
      recheck(steady, earlier).map((r) => r.within),
      [true, true],
    );
    assert.deepEqual(
      recheck(moved, earlier).map((r) => r.within),
      [false, false],
    );
    // Rows the earlier run did not have are not judged.
    assert.equal(recheck(compare([fig('tiu', 'rss', [1]), fig('peer', 'rss', [1])]), earlier).length, 0);
  });

  it('formats ranges compactly', () => {
    assert.equal(formatRange(0.25, 0.8), '0.25–0.80×');
    assert.equal(formatRange(2, 2), '2.00×');
    assert.equal(formatRange(0.012, 12), '0.012–12×');
  });
});
