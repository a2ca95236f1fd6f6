/**
 * From figures to comparisons: each tiu variant against each peer, with the ratio of medians
 * and the range of ratios the samples allow (the noise the run reports), and a check of a new
 * run's ratios against an earlier run's ranges (what a reviewer re-running the bench looks at).
 */
import { summarize, type Figure, type Summary, type Unit } from './stats.ts';

export interface Comparison {
  scenario: string;
  metric: string;
  unit: Unit;
  subject: string;
  peer: string;
  subjectSummary: Summary;
  peerSummary: Summary;
  /** subject median ÷ peer median. */
  ratio: number;
  /** The smallest and largest ratio any pair of samples gives: subject min ÷ peer max, subject max ÷ peer min. */
  low: number;
  high: number;
}

/** Tools named tiu or "tiu …" are what is measured; every other tool is a peer. */
const isSubject = (tool: string): boolean => tool === 'tiu' || tool.startsWith('tiu ');

/** x ÷ y where 0 ÷ 0 counts as equal (both tools needed nothing). */
function divide(x: number, y: number): number {
  if (y === 0) return x === 0 ? 1 : Infinity;
  return x / y;
}

export function compare(figures: readonly Figure[]): Comparison[] {
  const out: Comparison[] = [];
  const keys = [...new Set(figures.map((f) => `${f.scenario}\u0000${f.metric}`))];
  for (const k of keys) {
    const [scenario, metric] = k.split('\u0000') as [string, string];
    const here = figures.filter((f) => f.scenario === scenario && f.metric === metric);
    for (const s of here.filter((f) => isSubject(f.tool))) {
      const ss = summarize(s.samples);
      for (const p of here.filter((f) => !isSubject(f.tool))) {
        const ps = summarize(p.samples);
        out.push({
          scenario,
          metric,
          unit: s.unit,
          subject: s.tool,
          peer: p.tool,
          subjectSummary: ss,
          peerSummary: ps,
          ratio: divide(ss.median, ps.median),
          low: divide(ss.min, ps.max),
          high: divide(ss.max, ps.min),
        });
      }
    }
  }
  return out;
}

export interface Recheck {
  comparison: Comparison;
  earlier: Comparison;
  /** Whether this run's ratio lies in the earlier run's range (widened by the tolerance). */
  within: boolean;
}

/**
 * This run's ratios against an earlier run's ranges. A ratio is "within" when it lies in the
 * earlier range widened by `tolerance` (relative) on both sides: byte counts are exact, so
 * their range is a point, and a few KiB of btrfs metadata should not count as a change.
 */
export function recheck(now: readonly Comparison[], earlier: readonly Comparison[], tolerance = 0.02): Recheck[] {
  const out: Recheck[] = [];
  for (const c of now) {
    const e = earlier.find(
      (x) => x.scenario === c.scenario && x.metric === c.metric && x.subject === c.subject && x.peer === c.peer,
    );
    if (!e) continue;
    const within = c.ratio >= e.low * (1 - tolerance) && c.ratio <= e.high * (1 + tolerance);
    out.push({ comparison: c, earlier: e, within });
  }
  return out;
}
