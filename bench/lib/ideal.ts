/**
 * The ideal per-file zstd download of an update: the zstd:chunked frames of the files it must
 * fetch, each once, and nothing else (no manifests, no TOCs, no gaps between frames). tiu's
 * file-level bytes downloaded over this is the overhead the issue bounds (≤ 1.15×).
 */
import type { TreeEntry } from '../../src/deploy/apply/index.ts';
import { hasFrame } from '../../src/deploy/delta/ranges.ts';

export function idealFrameBytes(fetch: readonly TreeEntry[]): { bytes: number; frames: number } {
  // Files with the same content in the same layer share one frame (hardlinks): it is fetched once.
  const frames = new Map<string, number>();
  for (const e of fetch.filter(hasFrame)) {
    const s = e.source!;
    frames.set(`${s.layer}:${s.offset!}`, s.endOffset! - s.offset!);
  }
  let bytes = 0;
  for (const n of frames.values()) bytes += n;
  return { bytes, frames: frames.size };
}
