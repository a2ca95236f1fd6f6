/**
 * Which byte ranges of which layer blobs to fetch for a set of files (pure).
 *
 * Every regular file of a tiu layer is its own zstd frame at [offset, endOffset) of the blob
 * (the TOC says where). Files whose frames lie close together in the same layer are fetched
 * with one request: the bytes between them (tar header frames, unchanged files) are read and
 * dropped. `maxGap` bounds the waste per join, `maxSpan` the size of one request (which is held
 * in memory); a single frame larger than `maxSpan` is a request of its own.
 */
import type { TreeEntry } from '../apply/index.ts';

export interface CoalesceOptions {
  /** Join two frames when at most this many bytes lie between them (default 8 KiB). */
  maxGap?: number;
  /** Never grow a joined request beyond this many bytes (default 4 MiB). */
  maxSpan?: number;
}

/** Chosen by measurement on the bench trees: bench/README.md (bytes, requests and time for gaps of 0–256 KiB). */
export const DEFAULT_MAX_GAP = 8 * 1024;
export const DEFAULT_MAX_SPAN = 4 * 1024 * 1024;

export interface FetchRange {
  layer: number;
  /** [start, end) in the layer blob. */
  start: number;
  end: number;
  /** The files whose frames lie inside, in offset order. */
  entries: TreeEntry[];
}

/** Entries with content need a byte range; empty files need none. */
export function hasFrame(e: TreeEntry): boolean {
  const s = e.source;
  return e.size > 0 && s?.offset !== undefined && s.endOffset !== undefined && s.endOffset > s.offset;
}

/** Where one item's bytes lie: [start, end) of blob `blob`. */
export interface Span {
  blob: number;
  start: number;
  end: number;
}

/**
 * Group items into requests by where their bytes lie (`spanOf`): neighbours in the same blob
 * at most `maxGap` apart join while the request stays within `maxSpan`. The one coalescing rule
 * for file frames and for a delta artifact's patches.
 */
export function joinSpans<T>(
  items: readonly T[],
  spanOf: (t: T) => Span,
  opts: CoalesceOptions = {},
): { blob: number; start: number; end: number; items: T[] }[] {
  const maxGap = opts.maxGap ?? DEFAULT_MAX_GAP;
  const maxSpan = opts.maxSpan ?? DEFAULT_MAX_SPAN;
  // The spans in typed arrays and the order as indexes into them: an object pairing each item
  // with its span lived until the end, one per file to fetch (a first install of the bench's
  // larger tree, 35,700 of them: +14 MiB of heap in 25 ms, the peak of its planning).
  const n = items.length;
  const blobs = new Float64Array(n);
  const starts = new Float64Array(n);
  const ends = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const s = spanOf(items[i]!);
    blobs[i] = s.blob;
    starts[i] = s.start;
    ends[i] = s.end;
  }
  // By blob, then start; equal spans keep the items' order (the index decides last).
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  order.sort((a, b) => blobs[a]! - blobs[b]! || starts[a]! - starts[b]! || a - b);
  const out: { blob: number; start: number; end: number; items: T[] }[] = [];
  let cur: (typeof out)[number] | undefined;
  for (const i of order) {
    const blob = blobs[i]!;
    const start = starts[i]!;
    const end = ends[i]!;
    if (
      cur &&
      cur.blob === blob &&
      start >= cur.start &&
      start - cur.end <= maxGap &&
      Math.max(cur.end, end) - cur.start <= maxSpan
    ) {
      cur.end = Math.max(cur.end, end);
      cur.items.push(items[i]!);
      continue;
    }
    cur = { blob, start, end, items: [items[i]!] };
    out.push(cur);
  }
  return out;
}

/**
 * Group the frames of `entries` into requests. Entries without a frame (empty files) are left
 * out; entries with content but no frame are the caller's error to report (see `frameless`).
 * Two entries with the same frame (same layer and offset) share it.
 */
export function coalesce(entries: readonly TreeEntry[], opts: CoalesceOptions = {}): FetchRange[] {
  return joinSpans(
    entries.filter(hasFrame),
    (e) => {
      // A TocFile makes a new source object each time it is asked (apply/toc-files.ts).
      const s = e.source!;
      return { blob: s.layer, start: s.offset!, end: s.endOffset! };
    },
    opts,
  ).map((r) => ({ layer: r.blob, start: r.start, end: r.end, entries: r.items }));
}

/** Entries that have content but no frame in their layer (a TOC that can't serve them). */
export function frameless(entries: readonly TreeEntry[]): TreeEntry[] {
  return entries.filter((e) => e.size > 0 && !hasFrame(e));
}

/** Total bytes of a set of requests. */
export function rangeBytes(ranges: readonly { start: number; end: number }[]): number {
  return ranges.reduce((n, r) => n + (r.end - r.start), 0);
}
