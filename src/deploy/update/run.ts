/**
 * The one state an update carries from stage to stage. Each stage takes the run as the stages
 * before it left it and returns it extended by what it found (`Settled`, `Resolved`, `Planned`
 * …), so a stage's type says what it may rely on. What must be given back whatever stage fails
 * (the lock, an open source, a content store) is in `held`, which `release` empties.
 */
import type { Target } from '../../content/interfaces.ts';
import { hostPlatform } from '../../oci/platform.ts';
import type { Descriptor, ImageManifest } from '../../oci/types.ts';
import type { ApplyReport, Reserved } from '../apply/index.ts';
import type { RowSpill } from '../apply/row-spill.ts';
import type { SystemdBoot } from '../boot/index.ts';
import type { TiuConfig } from '../config.ts';
import type { ContentStore, DeltaTransfer, ImageManifests, TransferMode, TransferReport } from '../delta/index.ts';
import type { EtcConflict } from '../etc-merge.ts';
import type { AgeJudgement } from '../image-age.ts';
import type { HookRun } from '../hooks.ts';
import type { UpdateLock } from '../lock.ts';
import type { RootedDir } from '../rooted.ts';
import type { CleanupReport } from '../snapshot.ts';
import type { Context, SystemState } from '../state.ts';
import type { IdClash } from '../users-merge.ts';
import type { CacheTarget, UpdateDeps } from './deps.ts';
import { UpdateError } from './errors.ts';

export interface UpdateOptions {
  sysroot?: string;
  /** Default: `image` from tiu.conf. */
  reference?: string;
  downloadOnly?: boolean;
  offline?: boolean;
  config?: TiuConfig;
  signal?: AbortSignal;
  onProgress?: (line: string) => void;
  /** The platform to pick from an index (default: linux and this machine's architecture). */
  platform?: { os: string; architecture: string };
  /** 'auto' (default): file-level delta by Range where the source and layers allow it, else whole layers. */
  transfer?: TransferMode;
  /** Time between two "downloading …" progress lines (default 2000 ms). */
  progressEveryMs?: number;
  /** Install an image older than the booted or pending one (otherwise DOWNGRADE). */
  allowDowngrade?: boolean;
}

export type UpdateResult =
  | { status: 'already-present'; image: string; digest: string; snapshot: number; cleanup: CleanupReport }
  | { status: 'downloaded'; image: string; digest: string; cache: string; cleanup: CleanupReport }
  | {
      status: 'updated';
      image: string;
      digest: string;
      snapshot: number;
      from: number;
      etcConflicts: EtcConflict[];
      userClashes: IdClash[];
      addedUsers: string[];
      relabel: boolean;
      hooks: HookRun[];
      apply: ApplyReport;
      cleanup: CleanupReport;
      /** Which download path was taken and what it cost (absent for --offline). */
      transfer?: TransferReport;
      /** The downgrade check: the image's age against the booted and pending ones. */
      age?: AgeJudgement;
    };

/** `tiu update --check`: whether an update exists and what it would download; nothing written. */
export type CheckResult =
  | { status: 'already-present'; image: string; digest: string; snapshot: number }
  | {
      status: 'available';
      image: string;
      digest: string;
      booted: number;
      transfer: TransferReport;
      /** The downgrade check (an older image is refused with DOWNGRADE unless allowDowngrade). */
      age: AgeJudgement;
    };

/** What must be given back whatever stage fails. */
export interface Held {
  lock?: UpdateLock;
  /** The opened source (not the cache). */
  source?: Target;
  /** The delta's content store: removed at the end, its content is in the snapshot or useless. */
  store?: ContentStore;
  /** The files the prepared transfers' rows may be in (apply/row-spill.ts): closed at the end. */
  rows?: RowSpill[];
}

/** The run as `begin` made it: the options read, nothing of the system touched. */
export interface UpdateRun {
  opts: UpdateOptions;
  ctx: Context;
  config: TiuConfig;
  image: string;
  platform: { os: string; architecture: string };
  progress: (line: string) => void;
  signal: AbortSignal | undefined;
  held: Held;
}

/** The booted snapshot, the update's base, and what the image may not write. */
export interface OnBooted extends UpdateRun {
  state: SystemState;
  from: number;
  /** The preserved paths and the booted system's fstab mount points. */
  reserved: Reserved;
}

/** Under the lock, after what earlier runs left was cleaned and the ESP follows the snapshots. */
export interface Settled extends OnBooted {
  cleanup: CleanupReport;
  boot: SystemdBoot | undefined;
  cacheDir: string;
  cache: CacheTarget;
  /** The tag the image is kept under in the cache. */
  tag: string;
}

export interface Resolved {
  root: Descriptor;
  /** Where the image is read from: the opened source, or the cache (--offline). */
  source: Target;
  /** The snapshot that already holds this digest, if one does. */
  present: number | undefined;
  /** The verified manifests for this machine, once a stage fetched them (the downgrade check). */
  offered?: OfferedImage;
  /** The downgrade check's judgement, once it ran. */
  age?: AgeJudgement;
}

/** The image's verified manifests: the platform manifest (descriptor, parsed) and both as bytes. */
export interface OfferedImage {
  desc: Descriptor;
  manifest: ImageManifest;
  manifests: ImageManifests;
}

/** After the downgrade check: the offer is not older, or the operator allowed it. */
export interface Judged {
  offered: OfferedImage;
  age: AgeJudgement;
}

export interface Planned extends Settled, Resolved {
  /** The file-level delta, when planning chose it. */
  delta: DeltaTransfer | undefined;
  /** What the download costs (absent for --offline and --download-only). */
  transfer: TransferReport | undefined;
  /** The verified manifests of the image, when planning fetched them (online updates). */
  manifests: ImageManifests | undefined;
}

/** Everything the apply uses is local and verified; no snapshot yet. */
export interface Checked extends Planned {
  manifest: ImageManifest;
  manifests: ImageManifests;
  /** The delta was planned from the cached layers (its bytes are not downloads). */
  fromCache: boolean;
  /** No layer may expand past what the root filesystem holds above its reserve. */
  expansionLimit: number;
}

/** The new snapshot exists (in progress) and is `snapshot`; the paths of both. */
export interface Staged extends Checked {
  snapshot: number;
  newRoot: string;
  oldRoot: string;
}

/** The admin's /etc waits aside in the new snapshot; both snapshots opened for rooted access. */
export interface Aside extends Staged {
  newRd: RootedDir;
  oldRd: RootedDir;
}

export interface Applied extends Aside {
  apply: ApplyReport;
}

export interface Merged extends Applied {
  etcConflicts: EtcConflict[];
  userClashes: IdClash[];
  addedUsers: string[];
}

export interface Hooked extends Merged {
  relabel: boolean;
  hooks: HookRun[];
}

/** The options read and checked, the configuration loaded: what every stage after it relies on. */
export async function begin(deps: UpdateDeps, opts: UpdateOptions): Promise<UpdateRun> {
  const ctx = await deps.system.openContext(opts.sysroot ?? '/');
  const config = opts.config ?? (await deps.system.loadConfig(ctx.sysroot));
  const image = opts.reference ?? config.image;
  if (!image)
    throw new UpdateError(
      'REFERENCE_MISSING',
      `no image reference given and ${config.file ?? '/etc/tiu/tiu.conf'} sets no 'image'`,
    );
  if (opts.offline && opts.downloadOnly)
    throw new UpdateError('USAGE', '--offline and --download-only exclude each other');
  return {
    opts,
    ctx,
    config,
    image,
    platform: opts.platform ?? hostPlatform(),
    progress: opts.onProgress ?? (() => undefined),
    signal: opts.signal,
    held: {},
  };
}

/** Give back what the run holds: the store and the source quietly, the lock last. */
export async function release(held: Held): Promise<void> {
  for (const r of held.rows ?? []) r.close();
  await held.store?.remove().catch(() => undefined);
  await held.source?.close?.().catch(() => undefined);
  await held.lock?.release();
}
