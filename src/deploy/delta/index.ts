/**
 * File-level delta updates: download only the files the system lacks, by HTTP Range requests
 * against an unmodified registry (or ranged reads of an OCI layout on a USB stick).
 *
 *   prepareTransfer  TOCs by range (verified against the signed manifest's annotations), a plan
 *                    against the booted snapshot (by sha256 wherever a file lives), and the
 *                    coalesced byte ranges of the missing files; or the reason why only the
 *                    whole-layer path is possible (no Range support, no TOC, gzip layers).
 *                    Writes nothing: `tiu update --check` is this step and its report.
 *   downloadTransfer fetches those ranges, a bounded number in parallel, verifying every file
 *                    by sha256 before storing it in a content store (the cache, on /var).
 *   applyTransfer    plans again against the new snapshot (the same planner) and applies, the
 *                    content coming from the store.
 *
 * One planner and one range computation serve the check, the download and the apply, so the
 * check's byte count is what the download fetches.
 */
import { mkdir, readdir, rm } from 'node:fs/promises';
import { showPath } from '../../layer/entry.ts';
import { dirname, join } from 'node:path';
import type { Target } from '../../content/interfaces.ts';
import { humanSize } from '../../format.ts';
import type { Descriptor, ImageManifest } from '../../oci/types.ts';
import {
  ContentIndex,
  dropReserved,
  executePlan,
  flattenLayers,
  planApply,
  scanTree,
  SkipTally,
  type ApplyReport,
  type OldTree,
  type Plan,
  type PlanSummary,
  type Reserved,
  type SkipReport,
  type SpaceGuard,
  type TreeEntry,
} from '../apply/index.ts';
import { downloadRanges, storeProvider, type ContentStore, type DownloadStats } from './download.ts';
import { DeltaError } from './errors.ts';
import { coalesce, frameless, rangeBytes, type CoalesceOptions, type FetchRange } from './ranges.ts';
import { fetchLayerTocs, type LayerTocs } from './tocs.ts';
import type { TocStore } from './toc-store.ts';

export { ContentStore, downloadRanges, storeProvider, type DownloadStats, type DownloadOptions } from './download.ts';
export { DeltaError } from './errors.ts';
export {
  coalesce,
  frameless,
  rangeBytes,
  DEFAULT_MAX_GAP,
  DEFAULT_MAX_SPAN,
  type CoalesceOptions,
  type FetchRange,
} from './ranges.ts';
export { fetchLayerTocs, tocJsonOf, type LayerTocs, type TocBytes } from './tocs.ts';
export { TocStore, type ImageManifests, type StoredImage } from './toc-store.ts';

export type TransferPath = 'delta' | 'whole-layer';

/**
 * How the image is downloaded. 'auto': the file delta where possible, else whole layers;
 * 'delta': fail when impossible; 'whole-layer': whole layers, never by Range from the source.
 * Layers with tables of contents are applied from the cache the same way in every mode.
 */
export type TransferMode = 'auto' | TransferPath;

/** What a transfer downloads (predicted by prepareTransfer, measured after the download). */
export interface TransferReport {
  path: TransferPath;
  /** Why the whole-layer path was taken. */
  reason?: string;
  /** Sum of the compressed layer sizes: what a whole-layer pull downloads. */
  layerBytes: number;
  /** Layer bytes this transfer downloads: TOCs + file frames (delta), or layerBytes. */
  downloadBytes: number;
  tocBytes: number;
  contentBytes: number;
  /** HTTP requests for TOCs and content (delta). */
  requests: number;
  /** Measured after the download: layer bytes actually received (TOCs + content). */
  downloaded?: number;
  /** Delta: files of the old tree read to hash them while planning (none when its content index knew them). */
  hashed?: { files: number; bytes: number };
  /** Delta: files of the new tree by what the plan does with them; `changed` is everything but `keep`. */
  files?: PlanSummary & { changed: number };
}

export interface PrepareOptions {
  source: Target;
  manifest: ImageManifest;
  /** The tree to plan against: the booted snapshot (read only). */
  oldRoot: string;
  /** Paths of the root that are not image content (subvolumes, .snapshots). */
  preserve: readonly string[];
  /** Image entries at or below these are dropped before planning and counted (apply/reserved.ts). */
  reserved?: Reserved;
  mode?: TransferMode;
  /** Content-index cache of the old root (see apply's ContentIndex): loaded if present. */
  indexFile?: string;
  /** Save the index (with what planning hashed) here, so the next plan of the same root reads nothing. */
  saveIndexTo?: string;
  coalesce?: CoalesceOptions;
  signal?: AbortSignal;
  /** TOCs verified before (no request for those); TOCs fetched now are kept there when it is writable. */
  tocStore?: TocStore;
}

export interface DeltaTransfer {
  path: 'delta';
  source: Target;
  manifest: ImageManifest;
  layers: TreeEntry[][];
  plan: Plan;
  ranges: FetchRange[];
  coalesce: CoalesceOptions;
  report: TransferReport;
}

export interface WholeLayerTransfer {
  path: 'whole-layer';
  report: TransferReport;
}

export type PreparedTransfer = DeltaTransfer | WholeLayerTransfer;

function layerBytes(layers: readonly Descriptor[]): number {
  return layers.reduce((n, d) => n + d.size, 0);
}

function whole(manifest: ImageManifest, reason: string, mode: TransferMode): WholeLayerTransfer {
  if (mode === 'delta')
    throw new DeltaError('DELTA_NOT_POSSIBLE', `a file-level delta download is not possible: ${reason}`, { reason });
  const bytes = layerBytes(manifest.layers);
  return {
    path: 'whole-layer',
    report: {
      path: 'whole-layer',
      reason,
      layerBytes: bytes,
      downloadBytes: bytes,
      tocBytes: 0,
      contentBytes: bytes,
      requests: manifest.layers.length,
    },
  };
}

function changedFiles(s: PlanSummary): number {
  return s.meta.count + s.reflink.count + s.write.count + s.create.count + s.link.count + s.delete.count;
}

/** Plan the new tree of `layers` (without what is reserved) against `root`. */
async function planAgainst(
  layers: readonly (readonly TreeEntry[])[],
  root: string,
  preserve: readonly string[],
  reserved: Reserved | undefined,
  indexFile?: string,
  scanned?: OldTree,
): Promise<{ plan: Plan; index: ContentIndex; skip: SkipReport }> {
  const tally = new SkipTally();
  const tree = flattenLayers(reserved ? dropReserved(layers, reserved, tally) : layers);
  const old = scanned ?? (await scanTree(root, { preserve }));
  const index = indexFile ? await ContentIndex.load(root, indexFile) : new ContentIndex(root);
  const plan = await planApply(tree, old, index, { preserve });
  return { plan, index, skip: tally.report() };
}

/** Decide the path and, for the delta path, exactly which byte ranges it downloads. Writes nothing. */
export async function prepareTransfer(o: PrepareOptions): Promise<PreparedTransfer> {
  const mode = o.mode ?? 'auto';
  if (mode === 'whole-layer') return whole(o.manifest, 'whole-layer download requested', mode);
  // The old root (local disk) is scanned while the TOCs download.
  const scanning = scanTree(o.oldRoot, { preserve: o.preserve });
  scanning.catch(() => undefined); // handled below; not an unhandled rejection meanwhile
  let tocs: LayerTocs;
  try {
    tocs = await fetchLayerTocs(o.source, o.manifest, o.signal, o.tocStore ? { store: o.tocStore } : {});
  } catch (e) {
    await scanning.catch(() => undefined);
    throw e;
  }
  if (!tocs.ok) {
    await scanning.catch(() => undefined);
    return whole(o.manifest, tocs.reason, mode);
  }
  const { plan, index } = await planAgainst(
    tocs.layers,
    o.oldRoot,
    o.preserve,
    o.reserved,
    o.indexFile,
    await scanning,
  );
  if (o.saveIndexTo && index.hashedFiles > 0) await saveIndex(index, o.saveIndexTo);
  const lacking = frameless(plan.fetch);
  if (lacking.length)
    return whole(
      o.manifest,
      `/${showPath(lacking[0]!.path)} has no content frame of its own in the table of contents`,
      mode,
    );
  const co = o.coalesce ?? {};
  const ranges = coalesce(plan.fetch, co);
  const content = rangeBytes(ranges);
  return {
    path: 'delta',
    source: o.source,
    manifest: o.manifest,
    layers: tocs.layers,
    plan,
    ranges,
    coalesce: co,
    report: {
      path: 'delta',
      layerBytes: layerBytes(o.manifest.layers),
      downloadBytes: tocs.tocBytes + content,
      tocBytes: tocs.tocBytes,
      contentBytes: content,
      requests: tocs.requests + ranges.length,
      files: { ...plan.summary, changed: changedFiles(plan.summary) },
      hashed: { files: index.hashedFiles, bytes: index.hashedBytes },
    },
  };
}

/** The delta's ranges for the files `store` lacks: all of them, unless it kept some from an interrupted run. */
export function pendingRanges(t: DeltaTransfer, store: ContentStore): FetchRange[] {
  if (store.size === 0) return t.ranges;
  return coalesce(
    t.plan.fetch.filter((e) => !(e.digest && store.has(e.digest))),
    t.coalesce,
  );
}

/** Download what `store` lacks of the delta into it (verified); the measured bytes. */
export async function downloadTransfer(
  t: DeltaTransfer,
  store: ContentStore,
  opts: { concurrency?: number; signal?: AbortSignal; onBytes?: (n: number) => void } = {},
): Promise<DownloadStats> {
  return downloadRanges(t.source, t.manifest.layers, pendingRanges(t, store), store, {
    ...opts,
    maxSpan: t.coalesce.maxSpan,
  });
}

export interface ApplyTransferResult {
  report: ApplyReport;
  /** Content the store lacked at apply time, fetched then. */
  extra: DownloadStats;
  plan: Plan;
}

/**
 * Plan against the new snapshot (a copy of the booted one: same inodes, so the booted root's
 * content index is valid for it) and apply, content from the store. The index of the new tree
 * is saved to `saveIndexTo`, for the update that runs from it.
 */
export async function applyTransfer(
  t: DeltaTransfer,
  root: string,
  store: ContentStore,
  opts: {
    preserve: readonly string[];
    reserved?: Reserved;
    indexFile?: string;
    saveIndexTo?: string;
    concurrency?: number;
    signal?: AbortSignal;
    allowCopyFallback?: boolean;
    space?: SpaceGuard;
  },
): Promise<ApplyTransferResult> {
  const { plan, index, skip } = await planAgainst(t.layers, root, opts.preserve, opts.reserved, opts.indexFile);
  const provider = storeProvider(t.source, t.manifest.layers, store, {
    concurrency: opts.concurrency,
    signal: opts.signal,
    coalesce: t.coalesce,
    maxSpan: t.coalesce.maxSpan,
  });
  const report = {
    ...(await executePlan(root, plan, provider, {
      allowCopyFallback: opts.allowCopyFallback ?? false,
      index,
      ...(opts.space ? { space: opts.space } : {}),
    })),
    ...skip,
  };
  if (opts.saveIndexTo) await saveIndex(index, opts.saveIndexTo);
  return { report, extra: provider.extra, plan };
}

async function saveIndex(index: ContentIndex, file: string): Promise<void> {
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  await index.save(file);
}

/** Where the content index of snapshot `n` is kept (in the cache, on /var). */
export function contentIndexFile(cacheDir: string, n: number): string {
  return join(cacheDir, 'content-index', `${n}.json`);
}

/** Drop the content indexes of snapshots other than `keep`. */
export async function pruneContentIndexes(cacheDir: string, keep: readonly number[]): Promise<void> {
  const dir = join(cacheDir, 'content-index');
  const names = await readdir(dir).catch(() => [] as string[]);
  for (const f of names)
    if (/^\d+\.json$/.test(f) && !keep.includes(Number(f.slice(0, -5)))) await rm(join(dir, f), { force: true });
}

/**
 * One line on a transfer: what it will download (a plan: `tiu update --check`, the progress
 * line before the download), or what it did (`downloaded` set: the update's result).
 */
export function describeTransfer(r: TransferReport): string {
  const f = r.files;
  if (r.downloaded === undefined) {
    if (r.path === 'whole-layer')
      return `transfer: whole layers, ${humanSize(r.downloadBytes)} (${r.reason ?? 'no reason given'})`;
    return `transfer: file delta, ${humanSize(r.downloadBytes)} of ${humanSize(r.layerBytes)} (${f?.write.count ?? 0} files to download, ${f?.changed ?? 0} to change, ${r.requests} requests)`;
  }
  if (r.path === 'whole-layer')
    return `download: whole layers, ${humanSize(r.downloaded)} (${r.reason ?? 'no reason given'})`;
  return `download: file delta, ${humanSize(r.downloaded)} instead of ${humanSize(r.layerBytes)} for whole layers; ${f?.write.count ?? 0} files downloaded, ${f?.changed ?? 0} changed, ${r.requests} requests`;
}
