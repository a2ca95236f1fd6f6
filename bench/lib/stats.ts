/** Figures: several samples of one metric for one tool, summarised as median, min and max. */

export type Unit = 's' | 'B';

export interface Figure {
  scenario: string;
  metric: string;
  unit: Unit;
  tool: string;
  samples: number[];
  /** What exactly was run, for the reader. */
  how?: string;
}

export interface Summary {
  median: number;
  min: number;
  max: number;
  n: number;
}

export function summarize(samples: readonly number[]): Summary {
  if (samples.length === 0) throw new Error('no samples');
  const s = [...samples].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  const median = s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
  return { median, min: s[0]!, max: s[s.length - 1]!, n: s.length };
}

export function formatValue(v: number, unit: Unit): string {
  if (unit === 's') return v >= 100 ? `${v.toFixed(0)} s` : v >= 10 ? `${v.toFixed(1)} s` : `${v.toFixed(2)} s`;
  const a = Math.abs(v);
  if (a >= 1024 ** 3) return `${(v / 1024 ** 3).toFixed(2)} GiB`;
  if (a >= 1024 ** 2) return `${(v / 1024 ** 2).toFixed(1)} MiB`;
  if (a >= 1024) return `${(v / 1024).toFixed(1)} KiB`;
  return `${v.toFixed(0)} B`;
}

/** "median (min–max)", or just the value when all samples agree. */
export function formatSummary(s: Summary, unit: Unit): string {
  const m = formatValue(s.median, unit);
  const lo = formatValue(s.min, unit);
  const hi = formatValue(s.max, unit);
  return lo === hi ? m : `${m} (${lo}–${hi})`;
}

/** A ratio for the table: "1.34×", "0.037×", "28×", "∞" when the peer needed nothing. */
export function formatRatio(r: number): string {
  if (!Number.isFinite(r)) return '∞';
  return r >= 10 ? `${r.toFixed(0)}×` : r >= 0.1 ? `${r.toFixed(2)}×` : r === 0 ? '0×' : `${r.toFixed(3)}×`;
}

/** "0.91–1.10×", or the single ratio when the range is a point. */
export function formatRange(low: number, high: number): string {
  const lo = formatRatio(low);
  const hi = formatRatio(high);
  return lo === hi ? hi : `${lo.replace(/×$/, '')}–${hi}`;
}
