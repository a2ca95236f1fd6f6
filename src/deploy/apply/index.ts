/**
 * Diff-apply: write an image tree into a directory (a fresh btrfs snapshot of the booted
 * system) touching only what differs. Public API of src/deploy/apply/.
 *
 * With a table of contents (tiu bundles, zstd:chunked):
 *   const layers = tocs.map((toc, i) => tocToEntries(toc, i));
 *   const { plan, report } = await applyFromToc(root, layers, provider, { preserve, indexFile });
 * Step by step: flattenLayers -> scanTree -> planApply (pure, lazy hashes) -> executePlan.
 * Without one (ordinary OCI/Docker images): applyTarLayers(root, [() => tarStream, ...]).
 * From a registry or layout by range (file-level delta), the product path: src/deploy/delta/.
 */

export * from './types.ts';
export * from './errors.ts';
export { normalizeEntryPath, normalizeLinkTarget } from '../../layer/paths.ts';
export { flattenLayers, whiteoutOf, OPAQUE_MARKER, WHITEOUT_PREFIX } from './layers.ts';
export { LayerEntries, tocToEntries, parseTimeNs, EMPTY_SHA256, type ChunkedToc, type ChunkedTocEntry } from './toc.ts';
export { scanTree, ContentIndex, hashFile, type ContentHasher, type ScanOptions } from './scan.ts';
export { planApply, metaDiff, type PlanOptions } from './plan.ts';
export { SnapshotSource, findInSources, type ContentSource, type SourceSpec } from './sources.ts';
export { executePlan, type ExecuteOptions } from './execute.ts';
export { openUnchanged } from './from-snapshot.ts';
export { SafeRoot } from './fsops.ts';
export {
  openerProvider,
  tarLayerProvider,
  byLayerOrder,
  isVerifiedFile,
  type ContentProvider,
  type ContentSink,
  type VerifiedFile,
} from './content.ts';
export { applyTarLayers, type TarApplyOptions } from './tar-apply.ts';
export type { LayerOpener } from '../../layer/openers.ts';
export { entriesFromTar } from './tar-entries.ts';
export { applyFromToc, type ApplyOptions, type ApplyResult } from './toc-apply.ts';
export {
  reservedSet,
  reservedRoot,
  reservedRootOfEntry,
  skipReserved,
  dropReserved,
  describeSkipped,
  SkipTally,
  parseFstab,
  fstabMountPoints,
  unescapeFstab,
  WORKING_NAMES,
  WORKING_PREFIXES,
  SKIPPED_PATHS_MAX,
  type Reserved,
  type SkipReport,
  type FstabEntry,
} from './reserved.ts';
export {
  SpaceGuard,
  DiskReserveError,
  checkRoom,
  fsSpace,
  parseReserve,
  reserveBytes,
  describeReserve,
  type DiskReserve,
  type FsSpace,
} from './space.ts';
export { validateTarLayers, type TarValidateOptions } from './tar-validate.ts';
