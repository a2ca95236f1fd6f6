/**
 * File-level delta updates: download only the files the system lacks, by HTTP Range requests
 * against an unmodified registry (or ranged reads of an OCI layout on a USB stick).
 *
 *   prepareTransfer  TOCs from the cache's TOC store or by range (verified against the signed
 *                    manifest's annotations), a plan against the booted snapshot (by sha256
 *                    wherever a file lives, there or in another snapshot: the content sources,
 *                    apply/sources.ts), and the coalesced byte ranges of the missing files;
 *                    with a delta artifact whose FROM a local snapshot holds (artifact.ts), TOCs
 *                    from its TOC patches and the files it has patches for as patch ranges
 *                    (patches.ts); or the reason why only the whole-layer path is possible (no
 *                    Range support, no TOC, gzip layers). Writes nothing but verified TOCs into
 *                    the TOC store: `tiu update --check` is this step (store read-only) and its report.
 *   downloadTransfer fetches those ranges, a bounded number in parallel, verifying every file
 *                    by sha256 before storing it in a content store (the cache, on /var); a
 *                    patch that fails sends its file to the frame download.
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
import { ContentIndex, releaseScan, scanTree } from '../apply/scan.ts';
import { RowSpill } from '../apply/row-spill.ts';
import { ScanEntries } from '../apply/scan-entries.ts';
import { dropReserved, SkipTally, type Reserved, type SkipReport } from '../apply/reserved.ts';
import { flattenLayers } from '../apply/layers.ts';
import type { PathTable } from '../apply/path-table.ts';
import { planApply, type PlanOptions } from '../apply/plan.ts';
import { SnapshotSource, type SourceSpec } from '../apply/sources.ts';
import type { ApplyReport, OldTree, Plan, PlanSummary } from '../apply/types.ts';
import type { DiskReserve, SpaceGuard } from '../apply/space.ts';
import type { TreeEntry } from '../../layer/entry.ts';
import { downloadRanges, storeProvider, type ContentStore, type DownloadStats } from './download.ts';
import { DeltaError } from './errors.ts';
import { coalesce, frameless, rangeBytes, type CoalesceOptions, type FetchRange } from './ranges.ts';
import { fetchLayerTocs, type LayerTocs } from './tocs.ts';
import type { TocStore } from './toc-store.ts';
import { TocDictionary } from './toc-dictionary.ts';
import { chooseDelta, type DeltaChoice, type DeltaWanted, type HeldImage } from './artifact.ts';
import {
  choosePatches,
  downloadPatches,
  Fallbacks,
  patchRanges,
  readFilePatches,
  tocPatcher,
  type OldSource,
  type PatchRange,
  type PatchUse,
  type TocPatchTally,
} from './patches.ts';
import type { Counter } from '../apply/types.ts';
import { collectNow } from '../../util/collect.ts';
import type { DeltaFilePatch } from '../../patch/delta-index.ts';

export {
  ContentStore,
  downloadCost,
  downloadRanges,
  storeProvider,
  type DownloadStats,
  type DownloadOptions,
} from './download.ts';
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
export { chooseDelta, type DeltaWanted, type HeldImage } from './artifact.ts';

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
  /** Delta: the same for the other snapshots asked for content (content sources). */
  hashedInSources?: { files: number; bytes: number };
  /** Delta: files of the new tree by what the plan does with them; `changed` is everything but `keep`. */
  files?: PlanSummary & { changed: number };
  /** Delta: what a delta artifact contributes (present when the update looked for one). */
  artifact?: ArtifactReport;
}

/** A delta artifact's part of a transfer. */
export interface ArtifactReport {
  /** The artifact (manifest digest) used, or looked at and found unusable. */
  digest?: string;
  /** Its FROM: the platform manifest of the local image its patches apply to. */
  from?: string;
  /** Why no artifact is used (none, another FROM, unusable); absent when one is. */
  unused?: string;
  /** The artifact's index blob. */
  indexBytes: number;
  /** TOCs made from TOC patches (count) and the patches' bytes. */
  tocPatches: Counter;
  /** Files that come as patches (count) and the bytes of their requests. */
  patches: Counter;
  /** Patches that failed, their TOC or file fetched the normal way instead (measured). */
  fallbacks: { count: number; reasons: string[] };
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
  /**
   * Other snapshots that may hold content the old root lacks, in the order they are asked
   * (apply/sources.ts): their files are reflinked, not downloaded. With saveIndexTo, what
   * planning hashed of them is saved to their own index files.
   */
  sources?: readonly SourceSpec[];
  coalesce?: CoalesceOptions;
  signal?: AbortSignal;
  /** Look for a delta artifact of this image (needs `tocStore`: FROM's TOCs are its dictionary). */
  deltaArtifacts?: DeltaWanted;
  /** TOCs verified before (no request for those); TOCs fetched now are kept there when it is writable. */
  tocStore?: TocStore;
  /**
   * A directory on disk (the cache) where the file rows of the TOCs and of the old root's scan
   * may leave memory (apply/row-spill.ts: an unlinked file, never into `reserve`); undefined,
   * or one that cannot take the file: they stay.
   */
  spill?: { dir: string; reserve?: DiskReserve | undefined };
}

export interface DeltaTransfer {
  path: 'delta';
  source: Target;
  manifest: ImageManifest;
  /**
   * The new tree, flattened once from the layers' TOCs (without what is reserved) and planned
   * twice: against the booted tree here, against the new snapshot in applyTransfer. The layers'
   * lists go once it is made: they held a TocFile object per file through the download, which
   * the table keeps as its path and a row (apply/path-table.ts). undefined once applied.
   */
  tree: PathTable | undefined;
  /** What the tree left out as reserved (counted once, when it was made). */
  skip: SkipReport;
  /** The file the rows of the tree's files may be in: closed by whoever is done with the transfer (or when it is collected). */
  rows?: RowSpill;
  /**
   * The planned tree's /usr and /etc (what checkOsPlan looks at), not the plan itself: the plan
   * holds the old tree's scan, and the apply plans again against the new snapshot. Keeping both
   * scans alive through the apply cost ~9 MiB per 13k-entry tree.
   */
  top: TopEntries;
  /** The files the plan found nowhere on the system: fetched as frames or patches. */
  fetch: TreeEntry[];
  /** The content sources the plan used, kept for the apply's plan (their scans and indexes). */
  sources: SnapshotSource[];
  /** The files fetched by their frames (`fetch` but those that come as patches). */
  frames: TreeEntry[];
  ranges: FetchRange[];
  /** Files that come as patches of a delta artifact, against the old tree. */
  patches?: { blob: Descriptor; uses: PatchUse[]; ranges: PatchRange[] };
  coalesce: CoalesceOptions;
  report: TransferReport;
}

/** The entries /usr and /etc of a planned tree, where it has them. */
export interface TopEntries {
  usr?: TreeEntry;
  etc?: TreeEntry;
}

function topEntries(plan: Plan): TopEntries {
  const top: TopEntries = {};
  for (const a of plan.actions) if (a.entry.path === 'usr' || a.entry.path === 'etc') top[a.entry.path] = a.entry;
  return top;
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

/** The new tree of the layers, without what is reserved, and what was left out. */
function newTree(
  layers: readonly (readonly TreeEntry[])[],
  reserved: Reserved | undefined,
): { tree: PathTable; skip: SkipReport } {
  const tally = new SkipTally();
  const tree = flattenLayers(reserved ? dropReserved(layers, reserved, tally) : layers);
  return { tree, skip: tally.report() };
}

/**
 * Plan `tree` against `root` (scanned now unless `scanned` is given). The plan refers to the
 * tree's rows: it may be planned again (planApply adds the implicit parents once) but not changed.
 */
async function planAgainst(
  tree: PathTable,
  root: string,
  preserve: readonly string[],
  indexFile?: string,
  scanned?: OldTree,
  sources: readonly SnapshotSource[] = [],
  spill?: RowSpill,
  more: Pick<PlanOptions, 'noFetchList'> = {},
): Promise<{ plan: Plan; index: ContentIndex }> {
  // The scan names its paths with the tree's strings (the mirror of the TOCs taking the booted
  // scan's in prepareTransfer): one string per path, not a second copy alive until the plan.
  const old = scanned ?? (await scanTree(root, { preserve, ownPath: (p) => tree.ownPath(p), spill }));
  // The index's digests are kept on the scan's rows (apply/scan-digests.ts): it reads the scan
  // until the apply's forgetRows, or prepareTransfer's releaseScan after its last use.
  const index = indexFile ? await ContentIndex.load(root, indexFile, rowsOf(old)) : new ContentIndex(root);
  const plan = await planApply(tree, old, index, { preserve, sources, ...more });
  // A scan made here is read by nothing after its plan: the apply's, which the writing follows.
  if (!scanned) releaseScan(old);
  return { plan, index };
}

/** A scan's rows, for a content index loaded beside them; undefined for a tree not from a scan (tests). */
function rowsOf(t: OldTree): ScanEntries | undefined {
  return t.entries instanceof ScanEntries ? t.entries : undefined;
}

/** The artifact's share of the report before any file is planned. */
function artifactReport(choice: DeltaChoice, tally: TocPatchTally): ArtifactReport {
  const c = choice.chosen;
  return {
    ...(c ? { digest: c.artifact.digest, from: c.from.digest } : choice.artifact ? { digest: choice.artifact } : {}),
    ...(c ? {} : { unused: choice.reason }),
    indexBytes: c ? c.indexBlob.length : (choice.indexBytes ?? 0),
    tocPatches: { count: tally.count, bytes: tally.bytes },
    patches: { count: 0, bytes: 0 },
    fallbacks: { count: tally.fallbacks.count, reasons: [...tally.fallbacks.reasons] },
  };
}

/**
 * Decide the path and, for the delta path, exactly which byte ranges it downloads. Writes
 * nothing but the cache's TOC store (and, with `spill`, the rows' unlinked file).
 */
export async function prepareTransfer(o: PrepareOptions): Promise<PreparedTransfer> {
  const mode = o.mode ?? 'auto';
  if (mode === 'whole-layer') return whole(o.manifest, 'whole-layer download requested', mode);
  const spill = o.spill && RowSpill.open(o.spill.dir, o.spill.reserve);
  try {
    const t = await prepareDelta(o, mode, spill);
    if (t.path !== 'delta') spill?.close();
    return t;
  } catch (e) {
    spill?.close();
    throw e;
  }
}

async function prepareDelta(
  o: PrepareOptions,
  mode: TransferMode,
  spill: RowSpill | undefined,
): Promise<PreparedTransfer> {
  // The old root (local disk) is scanned while the TOCs download.
  const scanning = scanTree(o.oldRoot, { preserve: o.preserve, spill });
  scanning.catch(() => undefined); // handled below; not an unhandled rejection meanwhile
  let tocs: LayerTocs;
  let choice: DeltaChoice | undefined;
  // The artifact's file patches, or why its index cannot be used.
  let files: DeltaFilePatch[] | { unusable: string } | undefined;
  const tally: TocPatchTally = { count: 0, bytes: 0, requests: 0, fallbacks: new Fallbacks() };
  try {
    if (o.deltaArtifacts && o.tocStore && o.source.fetchRange)
      choice = await chooseDelta(o.source, o.deltaArtifacts, o.tocStore, o.signal);
    const chosen = choice?.chosen;
    const dictionary = chosen && new TocDictionary(chosen.fromTocs, chosen.from.manifest.layers, o.manifest.layers);
    tocs = await fetchLayerTocs(o.source, o.manifest, o.signal, {
      ...(o.tocStore ? { store: o.tocStore } : {}),
      ...(chosen && dictionary ? { patched: tocPatcher(o.source, chosen, dictionary, tally, o.signal) } : {}),
      keepBytes: !!(chosen && dictionary),
      ...(spill ? { spill } : {}),
      // The scan first, then the TOCs read with its path strings: the scan and the plan's tree
      // hold one string per path (~3 MiB on the bench's larger tree were the scan's own copies,
      // garbage only from the plan's sharePathsWith on and alive at its peak). JavaScript runs
      // one thing at a time, and the TOCs' bytes still come during the scan (fetchLayerTocs).
      // A failed scan shares nothing here; its error is thrown where the plan awaits it.
      ownPaths: scanning.then(
        (t) => (t.entries instanceof ScanEntries ? t.entries.ownPath.bind(t.entries) : undefined),
        () => undefined,
      ),
    });
    // The file index is read now, before the plan: its dictionary holds every TOC JSON of FROM
    // and TO (~30 MiB on the bench's larger tree), and the TOC bytes are needed for nothing
    // else, so both are let go before the plan's own peak.
    if (tocs.ok && chosen && dictionary) {
      try {
        files = readFilePatches(chosen, dictionary, tocs.bytes, tocs.layers);
      } catch (e) {
        files = { unusable: `delta artifact ${chosen.artifact.digest} cannot be used: ${(e as Error).message}` };
      }
    }
    if (tocs.ok) tocs = { ...tocs, bytes: [] };
  } catch (e) {
    await scanning.catch(() => undefined);
    throw e;
  }
  if (!tocs.ok) {
    await scanning.catch(() => undefined);
    return whole(o.manifest, tocs.reason, mode);
  }
  const scanned = await scanning;
  const sources = await Promise.all((o.sources ?? []).map((s) => SnapshotSource.open(s, o.preserve)));
  const { tree, skip } = newTree(tocs.layers, o.reserved);
  // The layers' lists (a TocFile per file) are not needed again: the tree is.
  tocs = { ...tocs, layers: [] };
  const { plan, index } = await planAgainst(tree, o.oldRoot, o.preserve, o.indexFile, scanned, sources);
  if (o.saveIndexTo)
    for (const [i, s] of sources.entries()) {
      const file = o.sources![i]!.indexFile;
      if (file && s.index.hashedFiles > 0) await saveIndex(s.index, file);
    }
  const lacking = frameless(plan.fetch);
  if (lacking.length) {
    if (o.saveIndexTo && index.hashedFiles > 0) await saveIndex(index, o.saveIndexTo);
    return whole(
      o.manifest,
      `/${showPath(lacking[0]!.path)} has no content frame of its own in the table of contents`,
      mode,
    );
  }
  const artifact = choice ? artifactReport(choice, tally) : undefined;
  if (artifact && files && 'unusable' in files) artifact.unused = files.unusable;
  const split =
    Array.isArray(files) && choice?.chosen
      ? await choosePatches(plan.fetch, files, await oldSources(o, choice.chosen.holder, scanned, index, sources))
      : { uses: [], rest: plan.fetch };
  if (o.saveIndexTo && index.hashedFiles > 0) await saveIndex(index, o.saveIndexTo);
  // The booted tree's scan has answered the plan and the patches' choice: its rows are not
  // left to the next full collection, which may come after the download's peak.
  releaseScan(scanned);
  const co = o.coalesce ?? {};
  const ranges = coalesce(split.rest, co);
  const content = rangeBytes(ranges);
  const pranges = patchRanges(split.uses, co);
  const patchBytes = rangeBytes(pranges);
  if (artifact) artifact.patches = { count: split.uses.length, bytes: patchBytes };
  const artifactBytes = artifact ? artifact.indexBytes + artifact.tocPatches.bytes + patchBytes : 0;
  return {
    path: 'delta',
    source: o.source,
    manifest: o.manifest,
    tree,
    skip,
    ...(spill ? { rows: spill } : {}),
    top: topEntries(plan),
    fetch: plan.fetch,
    sources,
    frames: split.rest,
    ranges,
    ...(choice?.chosen && split.uses.length
      ? { patches: { blob: choice.chosen.patches, uses: split.uses, ranges: pranges } }
      : {}),
    coalesce: co,
    report: {
      path: 'delta',
      layerBytes: layerBytes(o.manifest.layers),
      downloadBytes: tocs.tocBytes + artifactBytes + content,
      tocBytes: tocs.tocBytes,
      contentBytes: content,
      requests: tocs.requests + tally.requests + ranges.length + pranges.length + (choice?.chosen ? 1 : 0),
      files: { ...plan.summary, changed: changedFiles(plan.summary) },
      hashed: { files: index.hashedFiles, bytes: index.hashedBytes },
      hashedInSources: {
        files: sources.reduce((n, s) => n + s.index.hashedFiles, 0),
        bytes: sources.reduce((n, s) => n + s.index.hashedBytes, 0),
      },
      ...(artifact ? { artifact } : {}),
    },
  };
}

/**
 * Where a delta artifact's old files may be: the planned-against snapshot, then the snapshot
 * holding FROM (scanned now, with its content index from the cache where one is kept).
 */
async function oldSources(
  o: PrepareOptions,
  holder: HeldImage,
  scanned: OldTree,
  index: ContentIndex,
  contentSources: readonly SnapshotSource[],
): Promise<OldSource[]> {
  const sources: OldSource[] = [{ root: o.oldRoot, tree: scanned, index }];
  if (holder.root !== o.oldRoot) {
    // The holder is usually one of the plan's content sources already: its scan serves both.
    const planned = contentSources.find((s) => s.root === holder.root);
    const tree = planned ? await planned.tree() : undefined;
    if (planned && tree) return [...sources, { root: holder.root, tree, index: planned.index }];
    const scan = await scanTree(holder.root, { preserve: o.preserve });
    const idx = holder.indexFile
      ? await ContentIndex.load(holder.root, holder.indexFile, rowsOf(scan))
      : new ContentIndex(holder.root);
    sources.push({ root: holder.root, tree: scan, index: idx });
  }
  return sources;
}

/** What prepareTransfer downloaded already: TOCs, and a delta artifact's index and TOC patches. */
export function preparedBytes(r: TransferReport): number {
  return r.tocBytes + (r.artifact ? r.artifact.indexBytes + r.artifact.tocPatches.bytes : 0);
}

/** The delta's ranges for the files `store` lacks: all of them, unless it kept some from an interrupted run. */
export function pendingRanges(t: DeltaTransfer, store: ContentStore): FetchRange[] {
  if (store.size === 0) return t.ranges;
  return coalesce(
    t.frames.filter((e) => !(e.digest && store.has(e.digest))),
    t.coalesce,
  );
}

/** The delta artifact's patch requests for the files `store` lacks. */
export function pendingPatchRanges(t: DeltaTransfer, store: ContentStore): PatchRange[] {
  if (!t.patches) return [];
  if (store.size === 0) return t.patches.ranges;
  return patchRanges(
    t.patches.uses.filter((u) => !store.has(u.entry.digest!)),
    t.coalesce,
  );
}

/** Bytes the download of what `store` lacks fetches: frames and patches. */
export function pendingBytes(t: DeltaTransfer, store: ContentStore): number {
  return rangeBytes(pendingRanges(t, store)) + rangeBytes(pendingPatchRanges(t, store));
}

/** A download's figures; with a delta artifact, its patches' share and the files they failed for. */
export interface TransferStats extends DownloadStats {
  patches?: { files: number; bytes: number; fallbacks: Fallbacks };
}

/**
 * Download what `store` lacks of the delta into it (verified); the measured bytes. Patches
 * first: a file whose patch fails is fetched by its frame with the others.
 */
export async function downloadTransfer(
  t: DeltaTransfer,
  store: ContentStore,
  opts: { concurrency?: number; signal?: AbortSignal; onBytes?: (n: number) => void } = {},
): Promise<TransferStats> {
  let patches: TransferStats['patches'];
  let failed: TreeEntry[] = [];
  const frames = pendingRanges(t, store);
  const pranges = pendingPatchRanges(t, store);
  if (t.patches && pranges.length) {
    const fallbacks = new Fallbacks();
    const p = await downloadPatches(t.source, t.patches.blob, pranges, store, fallbacks, opts);
    patches = { files: p.files, bytes: p.bytes, fallbacks };
    failed = p.failed;
  }
  const ranges = [...frames, ...coalesce(failed, t.coalesce)];
  const s = await downloadRanges(t.source, t.manifest.layers, ranges, store, { ...opts, maxSpan: t.coalesce.maxSpan });
  if (!patches) return s;
  return {
    bytes: s.bytes + patches.bytes,
    requests: s.requests + pranges.length,
    files: s.files + patches.files,
    patches,
  };
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
 * is saved to `saveIndexTo`, for the update that runs from it. Uses `t` up (spendTransfer): one
 * apply per transfer.
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
  // The download's lists are done with: not alive beside the plan made now.
  spendDownload(t);
  // The tree prepareTransfer made and planned, planned again against the new snapshot (not
  // flattened again from the layers: their lists went when it was made). `opts.reserved` is
  // the set it was made without (the update's run gives both calls the same).
  const tree = t.tree;
  if (!tree) throw new Error('applyTransfer: this transfer was applied already');
  const skip = t.skip;
  const { plan, index } = await planAgainst(tree, root, opts.preserve, opts.indexFile, undefined, t.sources, t.rows, {
    noFetchList: true,
  });
  spendTransfer(t);
  // The booted tree's rows have answered the plan; the executor records the new tree's files
  // (every digest from the plan: planApply refuses a regular file without a sha256 one) in their
  // arrays, not in a second table made beside them at the end of the writing.
  index.forgetRows();
  const provider = storeProvider(t.source, t.manifest.layers, store, {
    concurrency: opts.concurrency,
    signal: opts.signal,
    coalesce: t.coalesce,
    maxSpan: t.coalesce.maxSpan,
  });
  // The apply engine's writing half, imported where a plan is applied: `--check` and the
  // download only plan, and carry none of it.
  const { executePlan } = await import('../apply/execute.ts');
  // The plans' garbage (the new snapshot's scan, the layers' tree map, the planner's lists) goes
  // now, not at a full collection V8 may time after the writing's peak (util/collect.ts). A
  // last-resort one, which also hands the freed heap pages back: after a regular one the
  // writing's first ~150 ms still raised the peak (a first install of the larger bench tree,
  // VmHWM set there at 100.1-106.1 MiB in 4 runs; with this one 96.6-99.6, set later).
  collectNow();
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

/**
 * The plan holds the new tree now: the transfer lets go of its layers' entries, the download's
 * lists and the content sources (their scans), which the update's run state would otherwise
 * keep alive through the execution, the /etc merge and the commit (~20 MiB of heap at the
 * commit of a first install of the bench's larger tree). Its manifest, source and report stay.
 */
function spendTransfer(t: DeltaTransfer): void {
  t.tree = undefined;
  t.sources = [];
  spendDownload(t);
}

/** What only the download used: the files to fetch, their ranges, the artifact's patches. */
function spendDownload(t: DeltaTransfer): void {
  t.fetch = [];
  t.frames = [];
  t.ranges = [];
  delete t.patches;
}

async function saveIndex(index: ContentIndex, file: string): Promise<void> {
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  await index.save(file);
}

/** Where the content index of snapshot `n` is kept (in the cache, on /var). */
export function contentIndexFile(cacheDir: string, n: number): string {
  return join(cacheDir, 'content-index', `${n}.json`);
}

/** Drop the content indexes of snapshots other than `keep` (every snapshot that can still be planned against or from). */
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
  const a = r.artifact;
  if (r.downloaded === undefined) {
    if (r.path === 'whole-layer')
      return `transfer: whole layers, ${humanSize(r.downloadBytes)} (${r.reason ?? 'no reason given'})`;
    return `transfer: ${kind(r)}, ${humanSize(r.downloadBytes)} of ${humanSize(r.layerBytes)} (${f?.write.count ?? 0} files to download, ${f?.changed ?? 0} to change, ${r.requests} requests)${artifactNote(a)}`;
  }
  if (r.path === 'whole-layer')
    return `download: whole layers, ${humanSize(r.downloaded)} (${r.reason ?? 'no reason given'})`;
  return `download: ${kind(r)}, ${humanSize(r.downloaded)} instead of ${humanSize(r.layerBytes)} for whole layers; ${f?.write.count ?? 0} files downloaded, ${f?.changed ?? 0} changed, ${r.requests} requests${artifactNote(a)}`;
}

function kind(r: TransferReport): string {
  return r.artifact && !r.artifact.unused ? 'delta artifact' : 'file delta';
}

/** The artifact's figures: which one and how much of it, the fallbacks; or why none is used. */
function artifactNote(a: ArtifactReport | undefined): string {
  if (!a) return '';
  if (a.unused) return `; ${a.unused}`;
  const fb = a.fallbacks.count
    ? `, ${a.fallbacks.count} patch(es) failed and came whole (${a.fallbacks.reasons[0]})`
    : '';
  return `; ${a.digest} from ${a.from}: ${a.patches.count} file(s) as patches (${humanSize(a.patches.bytes)}), ${a.tocPatches.count} table(s) of contents as patches${fb}`;
}
