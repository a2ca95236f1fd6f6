/**
 * Everything `tiu update` does to the world comes in through `UpdateDeps`: the registry and
 * the cache, the signature policy, the engines that write a tree (tar apply, file delta,
 * merges), snapper, btrfs, the lock, the boot loader, hooks, SELinux facts, free space and the
 * few plain file operations of the stages. The stage modules import only types, pure functions
 * (planning, naming, wording) and errors; reads through a Target the deps returned (manifests,
 * layers) are that Target's effects already.
 *
 * Why all and not none: the tests drive real updates against their own registries and need a
 * seam for the source (they replace `openSource`), so "none" is not an option; with half of the
 * effects behind the seam and half imported, neither a reader nor a test could tell which of
 * them a run used. src/deploy/wiring.ts is the one place that names the implementations.
 */
import type { readdir, rename } from 'node:fs/promises';
import type { Target } from '../../content/interfaces.ts';
import type { CopyEvent } from '../../copy/copy.ts';
import type { Descriptor } from '../../oci/types.ts';
import type { isSubvolume, subvolumeDelete, subvolumeSnapshot } from '../../host/btrfs.ts';
import type { hasSelinuxLabel } from '../../host/selinux.ts';
import type { LayerOpener } from '../../layer/openers.ts';
import type { PolicyDecision } from '../../trust/policy.ts';
import type { ApplyReport, Reserved, validateTarLayers } from '../apply/index.ts';
import type { checkRoom, fsSpace, SpaceGuard } from '../apply/space.ts';
import type { detectBoot, settleBoot } from '../boot/index.ts';
import type { loadConfig, TiuConfig } from '../config.ts';
import type {
  applyTransfer,
  ContentStore,
  downloadTransfer,
  prepareTransfer,
  pruneContentIndexes,
  TocStore,
} from '../delta/index.ts';
import type { EtcMergeReport } from '../etc-merge.ts';
import type { existingPaths, kernelFacts, runHooks } from '../hooks.ts';
import type { acquireUpdateLock } from '../lock.ts';
import type { keepMountPoints, reservedOf } from '../mount-points.ts';
import type { RootedDir } from '../rooted.ts';
import type { cleanupInProgress, commitSnapshot, createInProgress, deleteSnapshot } from '../snapshot.ts';
import type { openContext, readState } from '../state.ts';
import type { UsersMergeResult } from '../users-merge.ts';

/** The cache: an OCI layout, which can forget an image once it is in a snapshot. */
export interface CacheTarget extends Target {
  removeImage?(digest: string): Promise<{ blobs: number; bytes: number }>;
}

/** The system under update: its state, snapper, btrfs, the lock, the boot loader, hooks, free space. */
export interface SystemDeps {
  openContext: typeof openContext;
  loadConfig: typeof loadConfig;
  readState: typeof readState;
  lock: typeof acquireUpdateLock;
  cleanupInProgress: typeof cleanupInProgress;
  createInProgress: typeof createInProgress;
  deleteSnapshot: typeof deleteSnapshot;
  commitSnapshot: typeof commitSnapshot;
  detectBoot: typeof detectBoot;
  settleBoot: typeof settleBoot;
  reservedOf: typeof reservedOf;
  keepMountPoints: typeof keepMountPoints;
  isSubvolume: typeof isSubvolume;
  subvolumeSnapshot: typeof subvolumeSnapshot;
  subvolumeDelete: typeof subvolumeDelete;
  hasSelinuxLabel: typeof hasSelinuxLabel;
  kernelFacts: typeof kernelFacts;
  existingPaths: typeof existingPaths;
  runHooks: typeof runHooks;
  fsSpace: typeof fsSpace;
  checkRoom: typeof checkRoom;
  spaceGuard(root: string, reserve: TiuConfig['diskReserve']): SpaceGuard;
}

/** The file-level delta engine and its content store in the cache. */
export interface DeltaDeps {
  prepareTransfer: typeof prepareTransfer;
  downloadTransfer: typeof downloadTransfer;
  applyTransfer: typeof applyTransfer;
  pruneContentIndexes: typeof pruneContentIndexes;
  openStore(dir: string, opts: { resume?: boolean }): Promise<ContentStore>;
  /** The TOCs and manifests of deployed images in the cache (`write: false`: only read). */
  tocStore(cacheDir: string, opts: { write: boolean }): TocStore;
  validateTarLayers: typeof validateTarLayers;
}

/** The stages' own file operations: rooted access into snapshots, and the cache's and the /etc swap's plain ones. */
export interface FileDeps {
  openRooted(root: string): Promise<RootedDir>;
  /** A file or a tree removed (a missing one is not an error), a batch of names at a time. */
  removeAll(path: string): Promise<void>;
  rename: typeof rename;
  readdir: typeof readdir;
}

export interface UpdateDeps {
  /**
   * A reference string (docker://, oci:, oci-archive:) -> its Target and the tag/digest inside
   * it (undefined: the Target's only image, resolveDefault).
   */
  openSource(
    reference: string,
    o: { sysroot: string; config: TiuConfig; signal?: AbortSignal },
  ): Promise<{ target: Target; reference: string | undefined }>;
  /** The local cache (an OCI layout directory). */
  openCache(dir: string): Promise<CacheTarget>;
  copy(
    src: Target,
    srcRef: string | undefined,
    dst: Target,
    dstRef: string | undefined,
    opts: {
      referrers?: boolean;
      verify?: (src: Target, root: Descriptor) => Promise<void>;
      signal?: AbortSignal;
      onProgress?: (e: CopyEvent) => void;
    },
  ): Promise<Descriptor>;
  /** What the signature policy accepted the image with; throws when it refuses it. */
  checkPolicy(o: {
    reference: string;
    source: Target;
    root: Descriptor;
    policyPath: string | undefined;
    sysroot: string;
    signedIdentity?: string;
    signal?: AbortSignal;
  }): Promise<PolicyDecision>;
  applyLayers(o: {
    root: string;
    layers: LayerOpener[];
    preserve: string[];
    reserved?: Reserved;
    signal?: AbortSignal;
    space?: SpaceGuard;
  }): Promise<ApplyReport>;
  /** Three-way merge into `ours` (the new snapshot's /etc): base = old pristine /etc, theirs = new pristine /etc. */
  mergeEtc(base: string, ours: string, theirs: string): Promise<Pick<EtcMergeReport, 'conflicts'>>;
  mergeUsers(
    base: string,
    ours: string,
    theirs: string,
  ): Promise<Pick<UsersMergeResult, 'clashes' | 'addedUsers' | 'addedGroups'>>;
  system: SystemDeps;
  delta: DeltaDeps;
  files: FileDeps;
}
