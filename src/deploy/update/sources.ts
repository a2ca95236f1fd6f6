/**
 * Which snapshots besides the booted one the plan takes content from, and which content indexes
 * the cache keeps. A device that is not rebooted between two updates has the pending default
 * holding most of what the next image needs: planning only against the booted snapshot would
 * download and write all of it again.
 */
import { contentIndexFile } from '../delta/index.ts';
import type { SourceSpec } from '../apply/index.ts';
import { snapshotPath, type SystemState } from '../state.ts';

/**
 * At most this many other snapshots are asked. Each one asked costs a walk of its tree (lstat of
 * every entry, a fraction of a second for an OS tree) and its content index in memory, and the
 * pending default and the newest few hold nearly everything older ones do: content an image
 * shares with an old snapshot but with none of the newer ones is rare.
 */
export const MAX_CONTENT_SOURCES = 4;

/**
 * The snapshots tiu deployed (userdata `tiu-digest`), finished, other than `booted`: the
 * pending default first, then the others newest first, at most MAX_CONTENT_SOURCES.
 */
export function sourceSnapshots(state: SystemState, booted: number): number[] {
  const deployed = state.snapshots.filter((s) => s.digest !== undefined && !s.inProgress && s.number !== booted);
  const ordered = [
    ...deployed.filter((s) => s.default),
    ...deployed.filter((s) => !s.default).sort((a, b) => b.number - a.number),
  ];
  return ordered.slice(0, MAX_CONTENT_SOURCES).map((s) => s.number);
}

/** The content sources of a plan against `booted`: where each snapshot is and its content index in the cache. */
export function contentSources(state: SystemState, booted: number, cacheDir: string): SourceSpec[] {
  return sourceSnapshots(state, booted).map((n) => ({
    snapshot: n,
    root: snapshotPath(state.sysroot, n),
    indexFile: contentIndexFile(cacheDir, n),
  }));
}

/**
 * The content indexes worth keeping: the booted snapshot's, the new one's, and those of every
 * snapshot a later plan may take content from (all tiu snapshots, not only the MAX_CONTENT_SOURCES
 * asked now: which ones are asked changes as snapshots come and go).
 */
export function indexesToKeep(state: SystemState, booted: number, created: number): number[] {
  const deployed = state.snapshots.filter((s) => s.digest !== undefined && !s.inProgress).map((s) => s.number);
  return [...new Set([booted, created, ...deployed])].sort((a, b) => a - b);
}
