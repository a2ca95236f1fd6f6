/**
 * The age (signed created time, version) of the image a snapshot holds: what the commit recorded
 * in its userdata, else, for a snapshot committed before tiu recorded it, what the image's
 * manifests kept in the cache's TOC store state (verified by sha256 on read). Only reads.
 */
import { ageFrom, ageOfManifests, type ImageAge } from './image-age.ts';
import type { TocStore } from './delta/index.ts';
import type { SnapshotState } from './state.ts';

export interface SnapshotAge {
  age: ImageAge | undefined;
  /** Where it came from: the snapshot's userdata, the cache's kept manifests, or nowhere. */
  from: 'userdata' | 'cache' | 'unknown';
}

export async function snapshotAge(
  s: SnapshotState,
  store: TocStore,
  platform: { os: string; architecture: string },
): Promise<SnapshotAge> {
  if (s.created || s.version) return { age: ageFrom(s.created, s.version), from: 'userdata' };
  const kept = s.digest ? await store.imageManifests(s.digest, platform) : undefined;
  return kept ? { age: ageOfManifests(kept), from: 'cache' } : { age: undefined, from: 'unknown' };
}
