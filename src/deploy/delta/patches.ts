/**
 * Using a delta artifact (artifact.ts chose it): TO's TOCs from its TOC patches, the file index,
 * which of the files the plan fetches come as patches against the old files the device holds,
 * and downloading those patches by Range, each decoded against its old file and verified by the
 * signed TOC's size and sha256 before it enters the content store.
 *
 * A patch is only used where it is smaller than what it replaces (the file's frame, the layer's
 * compressed TOC) as the signed manifest and TOCs declare: the unsigned artifact cannot make a
 * download larger. A patch that fails (damaged, for another old file, a decoder error, a short
 * answer) costs that one file or TOC: it is fetched the normal way, and the reason reported.
 */
import { buffer } from 'node:stream/consumers';
import type { Target } from '../../content/interfaces.ts';
import { asError, isTiuError } from '../../errors.ts';
import { showPath } from '../../layer/entry.ts';
import { normalizeEntryPath } from '../../layer/paths.ts';
import { parsePosition, ZstdChunkedAnnotation } from '../../layer/toc.ts';
import { sha256 } from '../../oci/digest.ts';
import type { Descriptor } from '../../oci/types.ts';
import { decodePatch, decodePatchFreeingOld, openPatchDecoder } from '../../patch/codec.ts';
import { parseDeltaFiles, type DeltaFilePatch } from '../../patch/delta-index.ts';
import { DeltaAnnotation, MAX_PATCH_INPUT } from '../../patch/media.ts';
import { forEachBounded } from '../../util/semaphore.ts';
import { openUnchanged } from '../apply/from-snapshot.ts';
import { SafeRoot } from '../apply/fsops.ts';
import type { ContentIndex } from '../apply/scan.ts';
import type { ExistingEntry, OldTree } from '../apply/types.ts';
import type { TreeEntry } from '../../layer/entry.ts';
import type { ChosenDelta } from './artifact.ts';
import type { ContentStore } from './download.ts';
import { DECODE_WHOLE_MAX, DEFAULT_CONCURRENCY, DEFAULT_MEMORY_BUDGET, storeInPieces } from './download.ts';
import { SpanWindow, WINDOW_MIN, windowSize } from './span-window.ts';
import { streamReader } from '../../content/blob-reader.ts';
import { ByteBudget } from '../../util/byte-budget.ts';
import { BufferPool, freeNow } from '../../util/buffer-pool.ts';
import { joinSpans, type CoalesceOptions } from './ranges.ts';
import type { TocBytes } from './tocs.ts';
import type { TocDictionary } from './toc-dictionary.ts';

/** Most fallback reasons a report lists (the count is complete). */
const MAX_REASONS = 20;

/** Patches that failed and what was fetched instead. */
export class Fallbacks {
  count = 0;
  readonly reasons: string[] = [];
  add(reason: string): void {
    this.count++;
    if (this.reasons.length < MAX_REASONS) this.reasons.push(reason);
  }
}

/** TOC patches used: how many TOCs they gave, their bytes and requests, and those that failed. */
export interface TocPatchTally {
  count: number;
  bytes: number;
  requests: number;
  fallbacks: Fallbacks;
}

async function fetchBytes(source: Target, d: Descriptor, start: number, end: number, signal?: AbortSignal) {
  return buffer(await source.fetchRange!(d, start, end, { signal }));
}

/** A layer whose TOC is wanted: its index in the manifest and its descriptor. */
export interface WantedToc {
  layer: number;
  d: Descriptor;
}

/**
 * For fetchLayerTocs: the TOC JSONs of the `wanted` TO layers that the artifact's TOC patches
 * give, each verified against its layer's signed json-digest and size. A layer is left out (its
 * TOC is fetched by range) when the artifact has no patch for it, the layer has no json-digest,
 * the patch is not smaller than the compressed TOC, or it fails (counted in `tally`). The
 * patches lie side by side at the start of the patches blob: they come in as few requests as
 * the coalescing rule allows (one, usually), each request's response headers costing as much
 * as a small patch.
 */
export function tocPatcher(
  source: Target,
  chosen: ChosenDelta,
  dictionary: TocDictionary,
  tally: TocPatchTally,
  signal?: AbortSignal,
): (wanted: readonly WantedToc[]) => Promise<Map<number, Buffer>> {
  return async (wanted) => {
    const usable: { w: WantedToc; offset: number; size: number; digest: string; jsonSize: number }[] = [];
    for (const w of wanted) {
      const p = chosen.header.tocs.find((t) => t.layer === w.d.digest);
      const digest = w.d.annotations?.[DeltaAnnotation.TocJsonDigest];
      const position = w.d.annotations?.[ZstdChunkedAnnotation.ManifestPosition];
      if (!p || !digest || !position) continue;
      const { lengthCompressed, lengthUncompressed } = parsePosition(position);
      if (p.size >= lengthCompressed) continue;
      usable.push({ w, offset: p.offset, size: p.size, digest, jsonSize: lengthUncompressed });
    }
    const out = new Map<number, Buffer>();
    for (const req of joinSpans(usable, (u) => ({ blob: 0, start: u.offset, end: u.offset + u.size }))) {
      tally.requests++;
      const got = await fetchBytes(source, chosen.patches, req.start, req.end, signal);
      tally.bytes += got.length;
      for (const u of req.items) {
        const { layer, d } = u.w;
        try {
          if (got.length !== req.end - req.start)
            throw new Error(`got ${got.length} of the ${req.end - req.start} bytes that hold its patch`);
          const json = decodePatch(got.subarray(u.offset - req.start, u.offset - req.start + u.size), dictionary.from, {
            size: u.jsonSize,
            digest: u.digest,
            name: `the table of contents of layer ${layer + 1}`,
          });
          // Verified: it goes into its place in the dictionary, and the update reads it there.
          out.set(layer, dictionary.placeTo(layer, json));
          freeNow(json); // copied into the dictionary
          tally.count++;
        } catch (e) {
          tally.fallbacks.add(`TOC of layer ${layer + 1} (${d.digest}): ${asError(e).message}`);
        }
      }
      freeNow(got); // the decoded TOCs are copies: the patch bytes are dead
    }
    return out;
  };
}

/**
 * The artifact's file patches, its files frame decoded with the TOC dictionary (FROM's TOCs,
 * then TO's: `bytes`, one per TO layer, where a patch did not place it already). The
 * dictionary's last use: it is released (its views read empty afterwards).
 */
export function readFilePatches(
  chosen: ChosenDelta,
  dictionary: TocDictionary,
  bytes: readonly TocBytes[],
  toEntries: readonly (readonly TreeEntry[])[],
): DeltaFilePatch[] {
  const maxFiles = toEntries.reduce((n, l) => n + l.filter((e) => e.type === 'reg').length, 0);
  try {
    return parseDeltaFiles(chosen.indexBlob, chosen.header, dictionary.whole(bytes), {
      patchesSize: chosen.patches.size,
      maxFiles,
    });
  } finally {
    dictionary.release(); // its last use: the TOCs it held for the patches are read and stored
  }
}

/** A local tree old files may come from: a snapshot's root, its scan and its content index. */
export interface OldSource {
  root: string;
  tree: OldTree;
  index: ContentIndex;
}

/** A file the plan fetches that comes as a patch against a local old file. */
export interface PatchUse {
  entry: TreeEntry;
  patch: DeltaFilePatch;
  /** The old file: the snapshot root it is in, and the file as the scan saw it (path, size, inode, times). */
  old: { root: string; seen: ExistingEntry };
}

export interface PatchRange {
  start: number;
  end: number;
  uses: PatchUse[];
}

/** The old file a patch needs: at its (normalised) path in the first of `sources` where it has the `old` digest. */
async function oldFileFor(
  f: DeltaFilePatch,
  path: string,
  sources: readonly OldSource[],
): Promise<PatchUse['old'] | undefined> {
  for (const s of sources) {
    const x = s.tree.entries.get(path);
    if (x?.type === 'reg' && x.size <= MAX_PATCH_INPUT && (await s.index.digestOf(x)) === f.old)
      return { root: s.root, seen: x };
  }
  return undefined;
}

/**
 * Split the plan's fetch list: files with a patch (same new digest) smaller than the file's
 * frame, against an old file with the patch's `old` digest at its path in one of `sources`
 * (the planned-against snapshot first, then the one holding FROM), and the rest (fetched by
 * their frames).
 */
export async function choosePatches(
  fetch: readonly TreeEntry[],
  files: readonly DeltaFilePatch[],
  sources: readonly OldSource[],
): Promise<{ uses: PatchUse[]; rest: TreeEntry[] }> {
  const byPath = new Map<string, DeltaFilePatch>();
  const byNew = new Map<string, DeltaFilePatch>();
  const pathOf = new Map<DeltaFilePatch, string>();
  for (const f of files) {
    let p: string;
    try {
      p = normalizeEntryPath(f.path);
    } catch {
      continue; // a name no tree can have: never matches
    }
    byPath.set(p, f);
    pathOf.set(f, p);
    if (!byNew.has(f.new)) byNew.set(f.new, f);
  }
  const uses: PatchUse[] = [];
  const rest: TreeEntry[] = [];
  for (const e of fetch) {
    const same = byPath.get(e.path);
    const f = same?.new === e.digest ? same : e.digest ? byNew.get(e.digest) : undefined;
    const frame = (e.source?.endOffset ?? 0) - (e.source?.offset ?? 0);
    const old =
      f && f.size < frame && e.size <= MAX_PATCH_INPUT ? await oldFileFor(f, pathOf.get(f)!, sources) : undefined;
    if (f && old) uses.push({ entry: e, patch: f, old });
    else rest.push(e);
  }
  return { uses, rest };
}

/** The patches' requests, coalesced like frames. */
export function patchRanges(uses: readonly PatchUse[], co: CoalesceOptions): PatchRange[] {
  return joinSpans(uses, (u) => ({ blob: 0, start: u.patch.offset, end: u.patch.offset + u.patch.size }), co).map(
    (r) => ({ start: r.start, end: r.end, uses: r.items }),
  );
}

/**
 * The old file's bytes, read beneath its snapshot's root without following a link (the rooted
 * open the apply uses for other snapshots' files), still the file the plan matched, and checked
 * against `want`: a file changed since is this patch's failure, not the update's.
 */
async function readOld(roots: Map<string, Promise<SafeRoot>>, { root, seen }: PatchUse['old'], want: string) {
  let sr = roots.get(root);
  if (!sr) roots.set(root, (sr = SafeRoot.open(root, 'binary')));
  const opened = await openUnchanged(await sr, seen.path, seen);
  if (!opened.ok)
    throw new Error(`the old file /${showPath(seen.path)} is no longer the file the plan matched: ${opened.why}`);
  try {
    const b = Buffer.alloc(seen.size);
    const { bytesRead } = await opened.fh.read(b, 0, seen.size, 0);
    if (bytesRead !== seen.size)
      throw new Error(`the old file /${showPath(seen.path)} is no longer ${seen.size} bytes`);
    if (sha256(b) !== want) throw new Error(`the old file /${showPath(seen.path)} is no longer ${want}`);
    return b;
  } finally {
    await opened.fh.close();
  }
}

/** The largest patch of a request: the window it is read through holds at least that. */
function largestPatch(r: PatchRange): number {
  return r.uses.reduce((n, u) => Math.max(n, u.patch.size), 0);
}

/**
 * The memory a patch request holds: the window its bytes are read through, and for the largest
 * patch decoded (one at a time) the decoder's copy of the old file, its window and the new file
 * (at most the new file's size each); the old file as read is freed once the decoder has its copy.
 */
export function patchCost(r: PatchRange): number {
  let files = 0;
  for (const u of r.uses) files = Math.max(files, u.old.seen.size + 2 * u.entry.size);
  return windowSize(r.start, r.end, largestPatch(r)) + files;
}

export interface PatchDownload {
  /** Patch bytes received. */
  bytes: number;
  requests: number;
  /** Files decoded from patches, verified and stored. */
  files: number;
  /** Files whose patch failed: to be fetched by their frames. */
  failed: TreeEntry[];
}

/**
 * Fetch the patch ranges, decode each patch against its old file and store
 * the result when it matches the signed TOC's size and sha256. A failing patch (or a range
 * that comes back short) puts its files into `failed`, the reason into `fallbacks`; errors of
 * the source itself (network, signal) end the download as they would for frames.
 */
export async function downloadPatches(
  source: Target,
  patches: Descriptor,
  ranges: readonly PatchRange[],
  store: ContentStore,
  fallbacks: Fallbacks,
  opts: { concurrency?: number; memoryBudget?: number; signal?: AbortSignal; onBytes?: (n: number) => void } = {},
): Promise<PatchDownload> {
  const out: PatchDownload = { bytes: 0, requests: 0, files: 0, failed: [] };
  const roots = new Map<string, Promise<SafeRoot>>();
  const fail = (u: PatchUse, why: string) => {
    fallbacks.add(`/${showPath(u.entry.path)}: ${why}`);
    out.failed.push(u.entry);
  };
  const signal = opts.signal ?? new AbortController().signal;
  const count = (n: number): void => {
    out.bytes += n;
    opts.onBytes?.(n);
  };
  const budget = new ByteBudget(opts.memoryBudget ?? DEFAULT_MEMORY_BUDGET);
  const concurrency = opts.concurrency ?? DEFAULT_CONCURRENCY;
  const windows = new BufferPool(WINDOW_MIN, concurrency * WINDOW_MIN, { detachExcess: true });
  try {
    await forEachBounded(ranges, concurrency, (r) => budget.run(patchCost(r), () => fetchPatched(r)));
  } finally {
    windows.release();
  }
  return out;

  /**
   * One request's patches, read through a window (as the frames are) rather than whole: a
   * coalesced request is often most of the patches blob (1.7 MiB in one request for the bench's
   * Debian update), which a stream would hand over in chunks that are garbage, beside their
   * joined copy, while the first patches, some of the largest files, are decoded.
   */
  async function fetchPatched(r: PatchRange): Promise<void> {
    out.requests++;
    const reader = source.openRange
      ? await source.openRange(patches, r.start, r.end, { signal })
      : streamReader(await source.fetchRange!(patches, r.start, r.end, { signal }));
    const window = new SpanWindow(reader, r, windowSize(r.start, r.end, largestPatch(r)), windows, count);
    try {
      for (const [i, u] of r.uses.entries()) {
        const e = u.entry;
        if (store.has(e.digest!)) continue;
        // A view valid until the next call: decoded (and awaited) before the window moves on.
        const bytes = await window.bytes(u.patch.offset, u.patch.offset + u.patch.size);
        if (!bytes) {
          const got = await window.finish();
          for (const v of r.uses.slice(i)) fail(v, `the patches blob answered ${got} of ${r.end - r.start} bytes`);
          return;
        }
        const target = { size: e.size, digest: e.digest!, name: `/${showPath(e.path)}` };
        let content: Buffer | undefined;
        try {
          const old = await readOld(roots, u.old, u.patch.old);
          if (e.size > DECODE_WHOLE_MAX)
            // Decoded as it is hashed and written, as frames of such files are: never held whole.
            await storeInPieces(e, bytes, store, signal, (chunk) => openPatchDecoder(bytes, old, target, chunk));
          else content = await decodePatchFreeingOld(bytes, old, target);
        } catch (err) {
          if (isTiuError(err, 'DELTA_STORE_WRITE_FAILED')) throw err; // the store's disk, not the patch
          fail(u, asError(err).message);
          continue;
        }
        if (content) {
          await store.put(e.digest!, content);
          // Written (put is synchronous): freed now rather than when a collection finds it.
          freeNow(content);
        }
        out.files++;
      }
      await window.finish();
    } finally {
      window.dispose();
      await reader.close();
    }
  }
}
