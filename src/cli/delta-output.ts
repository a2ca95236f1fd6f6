/** What `tiu delta` and `tiu build --delta-from` print of a delta result, and their --concurrency. */
import type { DeltaResult } from '../bundle/delta.ts';
import { TiuError } from '../errors.ts';
import { humanSize, shortDigest } from '../format.ts';

/** `--concurrency` of `tiu delta`: patches encoded at a time (undefined: makeDeltas's default). */
export function deltaConcurrency(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1 || n > 64)
    throw new TiuError('USAGE', `--concurrency must be an integer from 1 to 64, got ${text}`);
  return n;
}

/** One line per platform for people. */
export function describeDelta(r: DeltaResult): string {
  const u = r.files.unpatched;
  const unpatched = Object.values(u).reduce((a, b) => a + b, 0);
  return (
    `${r.platform}: delta ${shortDigest(r.artifact.digest)} ${r.pushed ? 'pushed' : '(already there)'}: ` +
    `${r.files.patched} of ${r.files.changed} changed files patched, ${humanSize(r.files.patchBytes)} instead of ${humanSize(r.files.frameBytes)}` +
    `${
      unpatched
        ? ` (${unpatched} not: ${Object.entries(u)
            .flatMap(([k, v]) => (v ? [`${v} ${k}`] : []))
            .join(', ')})`
        : ''
    }; ` +
    `${r.tocs.patched} of ${r.tocs.changed} TOCs patched, ${humanSize(r.tocs.patchBytes)}; index ${humanSize(r.indexBytes)}; ${r.seconds.toFixed(1)} s`
  );
}

/** The --json form of a result. */
export function deltaJson(r: DeltaResult): Record<string, unknown> {
  return {
    artifact: r.artifact.digest,
    platform: r.platform,
    from: r.from,
    to: r.to,
    pushed: r.pushed,
    files: r.files,
    tocs: r.tocs,
    indexBytes: r.indexBytes,
    seconds: r.seconds,
  };
}
