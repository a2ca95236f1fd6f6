/**
 * `tiu update`: an image reference -> a new snapper snapshot that is the next boot.
 *
 *   lock; clean what a crashed run left; resolve the reference; AlreadyPresent? stop;
 *   the policy accepts the signature; then either the file-level delta (only the files the
 *   booted snapshot lacks, by range, verified into a content store) or the whole image into the
 *   local cache (every byte verified) — `--download-only` stops here, `--offline` starts from
 *   the cache; cached layers with tables of contents are then read like a delta, locally;
 *   snapshot of the booted system (in progress) with /etc carried; apply the layers as a
 *   difference; merge /etc and the user databases; SELinux relabel rule; hooks in a chroot;
 *   commit (read-only, userdata, default). Any failure before the commit deletes the snapshot.
 *
 * The transports, the policy, the diff-apply engine and the merges come in as `UpdateDeps`
 * (wired in src/deploy/wiring.ts), so this file is only the sequence.
 */
import { createHash } from 'node:crypto';
import { lstat, readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { isLayer, layerOpeners, verifyBlobs, withLayers, type LayerOpener } from '../layer/openers.ts';
import type { Target } from '../content/interfaces.ts';
import type { Descriptor, ImageManifest } from '../oci/types.ts';
import { fetchManifest } from '../content/graph.ts';
import type { CopyEvent } from '../copy/copy.ts';
import { downloadProgress } from './download-progress.ts';
import { UnsafePathError, validateTarLayers, type ApplyReport, type Reserved } from './apply/index.ts';
import { checkRoom, fsSpace, SpaceGuard } from './apply/space.ts';
import type { TreeEntry } from './apply/types.ts';
import { keepMountPoints, reservedOf } from './mount-points.ts';
import type { EtcConflict, EtcMergeReport } from './etc-merge.ts';
import type { IdClash, UsersMergeResult } from './users-merge.ts';
import { TiuError, asError, isDiskFullError, isTiuError, isTransientError } from '../errors.ts';
import { hasSelinuxLabel, selinuxConfigWants } from '../host/selinux.ts';
import { parentOf } from '../layer/paths.ts';
import { RootedDir } from './rooted.ts';
import { isSubvolume, subvolumeDelete, subvolumeSnapshot } from '../host/btrfs.ts';
import { DEFAULT_HOOKS, loadConfig, type TiuConfig } from './config.ts';
import { existingPaths, kernelFacts, planHooks, runHooks, type HookRun } from './hooks.ts';
import { acquireUpdateLock } from './lock.ts';
import { detectBoot, settleBoot } from './boot/index.ts';
import { cleanupInProgress, commitSnapshot, createInProgress, deleteSnapshot, type CleanupReport } from './snapshot.ts';
import { openContext, readState, snapshotPath, type SystemState } from './state.ts';
import {
  applyTransfer,
  ContentStore,
  contentIndexFile,
  describeTransfer,
  pendingRanges,
  pruneContentIndexes,
  downloadTransfer,
  prepareTransfer,
  rangeBytes,
  type DeltaTransfer,
  type PreparedTransfer,
  type TransferMode,
  type TransferReport,
} from './delta/index.ts';
import { humanSize } from '../format.ts';

export class UpdateError extends TiuError {}

export { layerOpeners, verifyBlobs, type LayerOpener } from '../layer/openers.ts';

/** Top-level paths of a snapshot that are not image content: never written or deleted by the apply. */
export const PRESERVE = [
  '.snapshots',
  'var',
  'home',
  'root',
  'opt',
  'srv',
  'usr/local',
  'boot/writable',
  'boot/grub2/x86_64-efi',
  'boot/grub2/i386-pc',
  'boot/grub2/arm64-efi',
  'boot/grub2/powerpc-ieee1275',
  'boot/grub2/s390x-emu',
  'boot/efi',
] as const;
/** Where the admin's /etc waits in the new snapshot while the image is written. */
export const ETC_ASIDE = '.tiu-etc-merge';
/** The image's pristine /etc, the base of the next three-way merge. */
export const PRISTINE_ETC = 'usr/lib/tiu/etc';

/** The cache: an OCI layout, which can forget an image once it is in a snapshot. */
export interface CacheTarget extends Target {
  removeImage?(digest: string): Promise<{ blobs: number; bytes: number }>;
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
  /** Throws when the signature policy refuses the image. */
  checkPolicy(o: {
    reference: string;
    source: Target;
    root: Descriptor;
    policyPath: string | undefined;
    sysroot: string;
    signedIdentity?: string;
    signal?: AbortSignal;
  }): Promise<void>;
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
}

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
    };

/** `tiu update --check`: whether an update exists and what it would download; nothing written. */
export type CheckResult =
  | { status: 'already-present'; image: string; digest: string; snapshot: number }
  | { status: 'available'; image: string; digest: string; booted: number; transfer: TransferReport };

/** The tag an image reference is kept under in the cache layout. */
export function cacheTag(reference: string): string {
  return `tiu-${createHash('sha256').update(reference).digest('hex').slice(0, 32)}`;
}

const ARCH: Record<string, string> = {
  x64: 'amd64',
  arm64: 'arm64',
  arm: 'arm',
  ppc64: 'ppc64le',
  s390x: 's390x',
  riscv64: 'riscv64',
};

/** The image manifest for this machine: the root itself, or the matching entry of an index. */
export async function imageManifest(
  target: Target,
  root: Descriptor,
  platform: { os: string; architecture: string },
  signal?: AbortSignal,
): Promise<{ desc: Descriptor; manifest: ImageManifest }> {
  const first = await fetchManifest(target, root, { signal });
  if (first.parsed.kind === 'manifest') return { desc: root, manifest: withLayers(root, first.parsed.manifest) };
  const pick = first.parsed.index.manifests.find(
    (m) => m.platform?.os === platform.os && m.platform.architecture === platform.architecture,
  );
  if (!pick)
    throw new UpdateError(
      'IMAGE_PLATFORM_MISSING',
      `${root.digest} has no image for ${platform.os}/${platform.architecture}`,
      { digest: root.digest, platform },
    );
  const second = await fetchManifest(target, pick, { signal });
  if (second.parsed.kind !== 'manifest')
    throw new UpdateError(
      'MANIFEST_INVALID',
      `${pick.digest}, the ${platform.os}/${platform.architecture} entry of ${root.digest}, is not an image manifest`,
      { digest: pick.digest },
    );
  return { desc: pick, manifest: withLayers(pick, second.parsed.manifest) };
}

/**
 * The image's final tree must look like an operating system where tiu relies on it, before any
 * snapshot: a real /usr directory (IMAGE_NOT_OS otherwise), and /etc, where the image has one,
 * a real directory (the admin's /etc is merged into it, and on MicroOS it replaces a nested
 * subvolume: a symlink there is PATH_UNSAFE).
 */
export function checkOsTree(entryAt: (path: string) => TreeEntry | undefined, image: string): void {
  // The trees checked have their implicit parents: a `usr/...` entry alone makes `usr` a directory.
  const usr = entryAt('usr');
  if (usr?.type !== 'dir')
    throw new UpdateError(
      'IMAGE_NOT_OS',
      `${image} is not an operating system image: its tree has no /usr directory${usr ? ` (/usr is a ${usr.type})` : ''}`,
      { image },
    );
  const etc = entryAt('etc');
  if (etc && etc.type !== 'dir')
    throw new UnsafePathError(
      'etc',
      `/etc is a ${etc.type} in ${image}, not a directory: the admin's /etc is merged into it`,
    );
}

/** checkOsTree on the tree a delta planned (its actions hold every entry, implicit parents too). */
function checkOsPlan(d: DeltaTransfer, image: string): void {
  const top = new Map<string, TreeEntry>();
  for (const a of d.plan.actions) if (a.entry.path === 'usr' || a.entry.path === 'etc') top.set(a.entry.path, a.entry);
  checkOsTree((p) => top.get(p), image);
}

/** `*.tiunew` files under the snapshot's /etc: the conflicts the admin has not resolved yet. */
export async function pendingEtcConflicts(etc: string, limit = 1000): Promise<string[]> {
  const out: string[] = [];
  // An image's `etc -> /elsewhere` is not walked (below it, Dirent types never follow links).
  if (!(await lstat(etc).catch(() => undefined))?.isDirectory()) return out;
  const walk = async (dir: string, rel: string): Promise<void> => {
    const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
    for (const e of entries) {
      if (out.length >= limit) return;
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(join(dir, e.name), r);
      else if (e.name.endsWith('.tiunew')) out.push(`/etc/${r.slice(0, -'.tiunew'.length)}`);
    }
  };
  await walk(etc, '');
  return out.sort();
}

export async function update(deps: UpdateDeps, opts: UpdateOptions = {}): Promise<UpdateResult> {
  const sysroot = opts.sysroot ?? '/';
  const progress = opts.onProgress ?? (() => undefined);
  const signal = opts.signal;
  const ctx = await openContext(sysroot);
  const config = opts.config ?? (await loadConfig(ctx.sysroot));
  const image = opts.reference ?? config.image;
  if (!image)
    throw new UpdateError(
      'REFERENCE_MISSING',
      `no image reference given and ${config.file ?? '/etc/tiu/tiu.conf'} sets no 'image'`,
    );
  if (opts.offline && opts.downloadOnly)
    throw new UpdateError('USAGE', '--offline and --download-only exclude each other');
  const platform = opts.platform ?? { os: 'linux', architecture: ARCH[process.arch] ?? process.arch };

  const lock = await acquireUpdateLock(ctx.sysroot);
  let opened: Target | undefined;
  let store: ContentStore | undefined;
  try {
    const cleanup = await cleanupInProgress(ctx);
    if (cleanup.deleted.length)
      progress(`removed unfinished snapshot(s) ${cleanup.deleted.join(', ')} left by an interrupted update`);
    // systemd-boot: the ESP follows the snapshots (deleted ones, a commit cut short, a counter
    // that ran out) before anything new is written; the booted snapshot's entry must exist.
    const boot = await detectBoot(ctx.sysroot, config);
    if (boot) {
      const booted = (await readState(ctx)).booted;
      await settleBoot(ctx, boot, config, { log: progress, required: booted !== undefined ? [booted] : [] });
    }
    const state = await readState(ctx);
    if (state.booted === undefined) {
      throw new UpdateError(
        'SYSROOT_NOT_SNAPSHOT',
        `${ctx.sysroot} does not run from a snapper snapshot (@/.snapshots/N/snapshot)`,
        { sysroot: ctx.sysroot },
      );
    }
    const from = state.booted;
    // What the image may not write: the preserved paths and the booted system's fstab mount points.
    const reserved = await reservedOf(snapshotPath(ctx.sysroot, from), PRESERVE);
    const cacheDir = join(ctx.sysroot, config.cache);
    const cache = await deps.openCache(cacheDir);
    const tag = cacheTag(image);

    // Resolve and decide.
    let root: Descriptor;
    let source: Target;
    if (opts.offline) {
      progress(`looking up ${image} in the cache ${cacheDir}`);
      root = await cache.resolve(tag, { signal }).catch((e: unknown) => {
        throw new UpdateError(
          'CACHE_BLOB_MISSING',
          `${image} is not in the cache ${cacheDir}; run 'tiu update --download-only ${image}' first`,
          { image, cache: cacheDir },
          { cause: e },
        );
      });
      source = cache;
    } else {
      const src = await deps.openSource(image, { sysroot: ctx.sysroot, config, signal });
      opened = src.target;
      progress(`resolving ${image}`);
      if (src.reference !== undefined) root = await src.target.resolve(src.reference, { signal });
      else if (src.target.resolveDefault) root = await src.target.resolveDefault({ signal });
      else
        throw new UpdateError(
          'REFERENCE_MISSING',
          `${image} does not say which image of ${src.target.name} to use: add a tag or digest`,
          { image },
        );
      source = src.target;
    }
    const present = presentIn(state, root.digest);
    if (present !== undefined && !opts.downloadOnly) {
      progress(`${image} (${root.digest}) is already deployed in snapshot ${present}`);
      return { status: 'already-present', image, digest: root.digest, snapshot: present, cleanup };
    }

    const checkPolicy = (src: Target, r: Descriptor) =>
      deps.checkPolicy({
        reference: image,
        source: src,
        root: r,
        policyPath: config.policy,
        sysroot: ctx.sysroot,
        signedIdentity: config.signedIdentity,
        signal,
      });
    // File-level delta: only the files the booted snapshot lacks, by Range, into a store in the cache.
    let delta: DeltaTransfer | undefined;
    let transfer: TransferReport | undefined;
    if (!opts.offline && !opts.downloadOnly) {
      // Planning saves the booted snapshot's content index into the cache: a full disk can show here.
      const t = await whileFetching(cacheDir, image, () =>
        chooseTransfer(deps, source, root, snapshotPath(ctx.sysroot, from), {
          image,
          config,
          sysroot: ctx.sysroot,
          platform,
          reserved,
          mode: opts.transfer,
          signal,
          index: { load: contentIndexFile(cacheDir, from), save: true },
        }),
      );
      transfer = t.report;
      progress(describeTransfer(transfer));
      if (t.path === 'delta') {
        delta = t;
        checkOsPlan(t, image);
      }
      // What the download writes into the cache (the new files of a delta, the blobs of whole
      // layers) must leave the reserve free: DISK_FULL now, before anything is written.
      const predicted = t.path === 'delta' ? (t.report.files?.write.bytes ?? 0) : t.report.layerBytes;
      await whileFetching(cacheDir, image, () =>
        checkRoom(
          cacheDir,
          predicted,
          config.diskReserve,
          t.path === 'delta' ? `the ${humanSize(predicted)} of new files of ${image}` : `the layers of ${image}`,
        ),
      );
    }
    // Into the cache: a disk that fills up here has changed nothing of the system yet.
    await whileFetching(cacheDir, image, async () => {
      if (opts.offline) {
        await checkPolicy(cache, root);
      } else if (delta) {
        const d = await downloadDelta(delta, cacheDir, root.digest, {
          progress,
          signal,
          progressEveryMs: opts.progressEveryMs,
        });
        store = d.store;
        transfer = { ...delta.report, downloaded: delta.report.tocBytes + d.bytes };
      } else {
        progress(`fetching ${image} (${root.digest}) into ${cacheDir}`);
        // Online, chooseTransfer has already accepted this digest's signature; --download-only checks it here.
        const received = await copyIntoCache(deps, source, root, cache, tag, {
          total: transfer?.downloadBytes,
          verify: opts.downloadOnly ? checkPolicy : undefined,
          progress,
          signal,
          progressEveryMs: opts.progressEveryMs,
        });
        if (transfer) transfer = { ...transfer, downloaded: received };
      }
    });
    if (opts.downloadOnly) return { status: 'downloaded', image, digest: root.digest, cache: cacheDir, cleanup };

    const { manifest } = delta ? { manifest: delta.manifest } : await imageManifest(cache, root, platform, signal);
    // Whole layers are in the cache now. Layers with tables of contents (tiu bundles,
    // zstd:chunked) are applied from there the way a delta is: planned against the booted
    // snapshot, only the changed files read (by range, from the local blobs) and verified into
    // the store. Other layers are streamed through the tar engine, so every blob is read through
    // its digest first. Either way, what the apply uses is intact before a snapshot exists.
    // No layer may expand past what the root filesystem can hold above its reserve (a gzip or
    // zstd bomb of zeros would otherwise keep the validation and the apply busy for ever).
    const fsNow = await fsSpace(ctx.sysroot, config.diskReserve);
    const expansionLimit = fsNow.total - fsNow.reserve;
    const readCache = async (): Promise<DeltaTransfer | undefined> => {
      const local = await prepareTransfer({
        source: cache,
        manifest,
        oldRoot: snapshotPath(ctx.sysroot, from),
        preserve: reserved.paths,
        reserved,
        mode: 'auto',
        signal,
        indexFile: contentIndexFile(cacheDir, from),
        saveIndexTo: contentIndexFile(cacheDir, from),
      });
      if (local.path !== 'delta') {
        // Every blob read through its digest, and every tar header checked as the apply will, before a snapshot exists.
        const checked = await validateTarLayers(layerOpeners(cache, manifest, signal, expansionLimit), {
          reserved,
          explain: (k) => verifyBlobs(cache, [manifest.layers[k]!], signal),
        });
        checkOsTree((p) => checked.tree.get(p), image);
        return undefined;
      }
      store = (
        await downloadDelta(local, cacheDir, root.digest, {
          progress,
          signal,
          progressEveryMs: opts.progressEveryMs,
          fromCache: true,
        })
      ).store;
      return local;
    };
    const cached = delta
      ? undefined
      : await whileFetching(cacheDir, image, () =>
          fromTheCache(cache, root.digest, manifest, { image, cacheDir, signal }, readCache),
        );
    const fromCache = cached !== undefined;
    delta ??= cached;

    if (cached) checkOsPlan(cached, image);
    // The reserve is still free (the apply checks it again as it writes).
    await checkRoom(ctx.sysroot, 0, config.diskReserve, `a new snapshot of ${image}`);
    progress(`creating snapshot from ${from}`);
    const n = await createInProgress(ctx, { from, description: `tiu update to ${image}`.slice(0, 200), image });
    try {
      const newRoot = snapshotPath(ctx.sysroot, n);
      const oldRoot = snapshotPath(ctx.sysroot, from);
      // A second copy of the admin's /etc waits aside while the image is written over the first
      // (so the image's /etc costs only what differs), then the merge writes into it.
      // Reads and writes in the snapshots outside the apply engine go through the rooted API:
      // a symlink on the way (usr/lib/tiu -> /elsewhere) is PATH_UNSAFE, never followed.
      const newRd = await RootedDir.open(newRoot);
      const oldRd = await RootedDir.open(oldRoot);
      const aside = join(newRoot, ETC_ASIDE);
      // btrfs resolves the path it is given: only a real directory of the snapshot is asked about (as for the new /etc below).
      if ((await oldRd.isDir('etc')) && (await isSubvolume(join(oldRoot, 'etc'))))
        await subvolumeSnapshot(join(oldRoot, 'etc'), aside);
      else await newRd.copyTree(oldRd, 'etc', ETC_ASIDE);
      progress(`writing ${manifest.layers.length} layer(s) into snapshot ${n}`);
      // DISK_FULL while the reserve is still free, whatever the layers expand to.
      const space = new SpaceGuard(newRoot, config.diskReserve);
      let applyReport: ApplyReport;
      if (delta && store) {
        const a = await applyTransfer(delta, newRoot, store, {
          preserve: [...reserved.paths, ETC_ASIDE],
          reserved,
          signal,
          space,
          indexFile: contentIndexFile(cacheDir, from),
          saveIndexTo: contentIndexFile(cacheDir, n),
        });
        await pruneContentIndexes(cacheDir, [from, n]);
        if (a.extra.bytes && !fromCache)
          transfer = { ...delta.report, downloaded: (transfer?.downloaded ?? 0) + a.extra.bytes };
        applyReport = a.report;
      } else {
        // readCache validated these layers (checkOsTree included) before the snapshot was made.
        applyReport = await deps.applyLayers({
          root: newRoot,
          layers: layerOpeners(cache, manifest, signal, expansionLimit),
          preserve: [...reserved.paths, ETC_ASIDE],
          reserved,
          signal,
          space,
        });
      }

      // /etc: base = the running image's pristine copy, ours = the admin's, theirs = the new pristine copy.
      if (!(await newRd.isDir(PRISTINE_ETC)) && (await newRd.lstat('etc'))) {
        await newRd.mkdir(parentOf(PRISTINE_ETC));
        await newRd.copyTree(newRd, 'etc', PRISTINE_ETC);
      }
      // The old pristine /etc may be missing (the first update); a symlink on its way is PATH_UNSAFE.
      await oldRd.isDir(PRISTINE_ETC);
      await newRd.verifyDir(ETC_ASIDE);
      const theirs = newRd.abs(PRISTINE_ETC);
      const base = oldRd.abs(PRISTINE_ETC);
      progress('merging /etc');
      const etc = await deps.mergeEtc(base, aside, theirs);
      const users = await deps.mergeUsers(base, aside, theirs);
      // btrfs resolves the path it is given: only a real directory of the snapshot is asked about.
      if ((await newRd.isDir('etc')) && (await isSubvolume(join(newRoot, 'etc'))))
        await subvolumeDelete(join(newRoot, 'etc'));
      else await rm(join(newRoot, 'etc'), { recursive: true, force: true });
      await rename(aside, join(newRoot, 'etc'));
      await keepMountPointsStep(newRoot, oldRoot, reserved, progress);

      let relabel = false;
      if (
        selinuxConfigWants((await newRd.readFileIfExists('etc/selinux/config'))?.toString('utf8') ?? '') &&
        !(await hasSelinuxLabel(join(newRoot, 'usr')))
      ) {
        await newRd.writeFileAtomic('.autorelabel', '', { mode: 0o644 });
        relabel = true;
      }

      const facts = await kernelFacts(oldRoot, newRoot);
      // tiu writes the systemd-boot entries itself where it found systemd-boot: sdbootutil's
      // default hook would add a second, differently named set.
      const hookSpecs = boot
        ? config.hooks.filter((h) => !(h.name === 'sdbootutil' && DEFAULT_HOOKS.includes(h)))
        : config.hooks;
      const present = await existingPaths(newRoot, hookSpecs);
      const planned = planHooks(hookSpecs, facts, n, (p) => present.has(p));
      for (const h of planned) progress(`hook ${h.name}: ${h.argv.join(' ')}`);
      const hooks = await runHooks(newRoot, planned, { sysroot: ctx.sysroot, signal });

      signal?.throwIfAborted();
      await commitSnapshot(ctx, n, {
        image,
        digest: root.digest,
        etcConflicts: etc.conflicts.length,
        ...(boot ? { boot: { sd: boot, config, log: progress } } : {}),
      });
      progress(`snapshot ${n} is the default: it boots next`);
      await releaseFromCache(cache, root.digest, progress);
      return {
        status: 'updated',
        image,
        digest: root.digest,
        snapshot: n,
        from,
        etcConflicts: etc.conflicts,
        userClashes: users.clashes,
        addedUsers: users.addedUsers,
        relabel,
        hooks,
        apply: applyReport,
        cleanup,
        ...(transfer ? { transfer } : {}),
      };
    } catch (e) {
      progress(`update failed, deleting snapshot ${n}: ${asError(e).message}`);
      try {
        await deleteSnapshot(ctx, n);
      } catch (d) {
        progress(`could not delete snapshot ${n} (the next run retries): ${asError(d).message}`);
      }
      if (isNoSpace(e)) {
        throw new UpdateError(
          'DISK_FULL',
          `no space left on the filesystem of ${ctx.sysroot} while writing snapshot ${n}; it was deleted again: ${asError(e).message}`,
          { snapshot: n },
          { cause: e },
        );
      }
      throw e;
    }
  } finally {
    await store?.remove().catch(() => undefined);
    await opened?.close?.().catch(() => undefined);
    await lock.release();
  }
}

/**
 * The new snapshot has a real directory for every mount point of the old and the new (merged)
 * /etc/fstab, every preserved path and proc, sys, dev, run, tmp, whatever the image held: on a
 * read-only root nothing could create a missing one at boot.
 */
async function keepMountPointsStep(
  newRoot: string,
  oldRoot: string,
  reserved: Reserved,
  progress: (line: string) => void,
): Promise<void> {
  const kept = await keepMountPoints(newRoot, oldRoot, PRESERVE, reserved.mountPoints);
  if (kept.created.length)
    progress(`created mount point(s) the image lacks: ${kept.created.map((p) => '/' + p).join(', ')}`);
  if (kept.replaced.length)
    progress(`replaced non-directories of the image by mount points: ${kept.replaced.map((p) => '/' + p).join(', ')}`);
}

/**
 * The image is in a committed snapshot now: its layers in the cache (whole-layer and offline
 * updates, or an earlier --download-only) would only pile up, one image per update. Other
 * images in the cache (a --download-only of a later one) stay. Failing here does not fail the
 * update, which has already happened.
 */
async function releaseFromCache(cache: CacheTarget, digest: string, progress: (msg: string) => void): Promise<void> {
  if (!cache.removeImage) return;
  try {
    const freed = await cache.removeImage(digest);
    if (freed.blobs)
      progress(`freed ${freed.bytes} bytes (${freed.blobs} blob(s)) of the applied image from the cache`);
  } catch (e) {
    progress(`could not free the applied image from the cache, where it stays: ${asError(e).message}`);
  }
}

/**
 * The file delta into its content store (from the source, or from the whole layers in the
 * cache). On failure the store stays when the network or a signal cut the download off, for
 * the next run to verify and go on from; otherwise (a full disk, a bad image: it would only
 * fail again) it goes.
 */
async function downloadDelta(
  delta: DeltaTransfer,
  cacheDir: string,
  digest: string,
  o: {
    progress: (line: string) => void;
    signal?: AbortSignal;
    progressEveryMs?: number;
    /** the source is the cache's whole layers */ fromCache?: boolean;
  },
): Promise<{ store: ContentStore; bytes: number }> {
  const store = await openStore(cacheDir, digest);
  if (store.resumed.files)
    o.progress(
      `resuming: ${store.resumed.files} file(s), ${humanSize(store.resumed.bytes)}, verified from an interrupted download`,
    );
  try {
    const onBytes = o.fromCache
      ? undefined
      : downloadProgress(rangeBytes(pendingRanges(delta, store)), o.progress, { everyMs: o.progressEveryMs });
    const got = await downloadTransfer(delta, store, {
      ...(o.signal ? { signal: o.signal } : {}),
      ...(onBytes ? { onBytes } : {}),
    });
    if (o.fromCache)
      o.progress(
        `read ${got.files} changed file(s) from the cached layers (${delta.report.files?.changed ?? 0} to change)`,
      );
    else
      o.progress(`downloaded ${got.files} file(s) in ${got.requests} request(s), ${humanSize(got.bytes)} of content`);
    return { store, bytes: got.bytes };
  } catch (e) {
    if (!isTransient(e, o.signal)) await store.remove().catch(() => undefined);
    throw e;
  }
}

/** The whole image into the cache, with progress over its layers; the layer bytes received. */
async function copyIntoCache(
  deps: UpdateDeps,
  source: Target,
  root: Descriptor,
  cache: CacheTarget,
  tag: string,
  o: {
    total: number | undefined;
    verify: ((src: Target, root: Descriptor) => Promise<void>) | undefined;
    progress: (line: string) => void;
    signal?: AbortSignal;
    progressEveryMs?: number;
  },
): Promise<number> {
  const onBytes = downloadProgress(o.total, o.progress, { everyMs: o.progressEveryMs });
  const seen = new Map<string, number>();
  let received = 0;
  const onProgress = (e: CopyEvent) => {
    // Layers only (the total is theirs); one already in the cache counts as come.
    if (!isLayer(e.desc.mediaType)) return;
    if (e.type === 'blob-skipped') onBytes(e.desc.size);
    if (e.type !== 'blob-bytes') return;
    // A blob that starts over (a cut upload reads it again) counts again only past where it was.
    const before = seen.get(e.desc.digest) ?? 0;
    if (e.bytes > before) {
      onBytes(e.bytes - before);
      received += e.bytes - before;
      seen.set(e.desc.digest, e.bytes);
    }
  };
  await deps.copy(source, root.digest, cache, tag, {
    referrers: true,
    ...(o.verify ? { verify: o.verify } : {}),
    ...(o.signal ? { signal: o.signal } : {}),
    onProgress,
  });
  return received;
}

/**
 * Read the cached image with `step`. A cached copy that fails its digests (a disk that rots, a
 * copy cut short) is dropped from the cache, so that the next update downloads it again instead
 * of failing the same way: CACHE_DAMAGED. Content that fails its table of contents while its
 * layer still matches the layer digest is the image's fault, and is said as it is.
 */
async function fromTheCache<T>(
  cache: CacheTarget,
  digest: string,
  manifest: ImageManifest,
  o: { image: string; cacheDir: string; signal?: AbortSignal },
  step: () => Promise<T>,
): Promise<T> {
  try {
    return await step();
  } catch (e) {
    const mismatch =
      isTiuError(e, 'DIGEST_MISMATCH') ||
      isTiuError(e, 'SIZE_MISMATCH') ||
      isTiuError(e, 'DELTA_FILE_MISMATCH') ||
      isTiuError(e, 'TOC_CHECKSUM_MISMATCH');
    if (!mismatch) throw e;
    if (!isTiuError(e, 'DIGEST_MISMATCH') && !isTiuError(e, 'SIZE_MISMATCH')) {
      const layersIntact = await verifyBlobs(cache, manifest.layers, o.signal).then(
        () => true,
        () => false,
      );
      if (layersIntact) throw e;
    }
    let dropped = false;
    if (cache.removeImage)
      dropped = await cache.removeImage(digest).then(
        () => true,
        () => false,
      );
    throw new UpdateError(
      'CACHE_DAMAGED',
      `the copy of ${o.image} in the cache ${o.cacheDir} is damaged (${asError(e).message})${dropped ? '; it was removed from the cache, so the next update downloads it again' : ''}`,
      { cache: o.cacheDir, digest },
      { cause: e },
    );
  }
}

/**
 * The content store of the delta to `digest`, in the cache: files an interrupted download of
 * the same image left there are kept when they still verify; stores of other images go.
 */
async function openStore(cacheDir: string, digest: string): Promise<ContentStore> {
  const parent = join(cacheDir, 'delta');
  const name = digest.replace(/^sha256:/, '');
  for (const other of await readdir(parent).catch(() => [] as string[]))
    if (other !== name) await rm(join(parent, other), { recursive: true, force: true });
  return ContentStore.open(join(parent, name), { resume: true });
}

/** ENOSPC while the image is fetched into the cache (before any snapshot) becomes DISK_FULL naming the cache. */
async function whileFetching<T>(cacheDir: string, image: string, step: () => Promise<T>): Promise<T> {
  try {
    return await step();
  } catch (e) {
    if (!isNoSpace(e)) throw e;
    throw new UpdateError(
      'DISK_FULL',
      `no space left on the filesystem of the cache ${cacheDir} while fetching ${image}; no snapshot was made: ${asError(e).message}`,
      { cache: cacheDir },
      { cause: e },
    );
  }
}

/**
 * Whether the delta's content store is worth keeping for the next run: the failure is transient
 * (a retry may get past it) and not a full disk, which the store itself helps fill.
 */
function isTransient(e: unknown, signal?: AbortSignal): boolean {
  return signal?.aborted === true || (isTransientError(e) && !isDiskFullError(e));
}

/** A full disk anywhere in the cause chain (DISK_FULL, or Node's ENOSPC/EDQUOT). */
function isNoSpace(e: unknown): boolean {
  return isDiskFullError(e);
}

/**
 * Accept the image's signature, then decide the download path: the file-level delta against
 * `oldRoot` where possible (prepareTransfer), else whole layers. Reads, never writes.
 */
async function chooseTransfer(
  deps: UpdateDeps,
  source: Target,
  root: Descriptor,
  oldRoot: string,
  o: {
    image: string;
    config: TiuConfig;
    sysroot: string;
    platform: { os: string; architecture: string };
    reserved: Reserved;
    mode?: TransferMode;
    signal?: AbortSignal;
    index?: { load: string; save: boolean };
  },
): Promise<PreparedTransfer> {
  // Nothing of the image (TOCs included) is used before the policy accepted its signature.
  await deps.checkPolicy({
    reference: o.image,
    source,
    root,
    policyPath: o.config.policy,
    sysroot: o.sysroot,
    signedIdentity: o.config.signedIdentity,
    signal: o.signal,
  });
  const { manifest } = await imageManifest(source, root, o.platform, o.signal);
  return prepareTransfer({
    source,
    manifest,
    oldRoot,
    preserve: o.reserved.paths,
    reserved: o.reserved,
    mode: o.mode ?? 'auto',
    signal: o.signal,
    ...(o.index ? { indexFile: o.index.load, ...(o.index.save ? { saveIndexTo: o.index.load } : {}) } : {}),
  });
}

/**
 * `tiu update --check`: resolve, check the signature, and run the download planning of a real
 * update (the same prepareTransfer) against the booted snapshot. Takes no lock, writes nothing:
 * no cache, no snapshot, no cleanup.
 */
export async function checkUpdate(
  deps: UpdateDeps,
  opts: Omit<UpdateOptions, 'downloadOnly' | 'offline' | 'onProgress'> = {},
): Promise<CheckResult> {
  const ctx = await openContext(opts.sysroot ?? '/');
  const config = opts.config ?? (await loadConfig(ctx.sysroot));
  const image = opts.reference ?? config.image;
  if (!image)
    throw new UpdateError(
      'REFERENCE_MISSING',
      `no image reference given and ${config.file ?? '/etc/tiu/tiu.conf'} sets no 'image'`,
    );
  const platform = opts.platform ?? { os: 'linux', architecture: ARCH[process.arch] ?? process.arch };
  const state = await readState(ctx);
  if (state.booted === undefined)
    throw new UpdateError(
      'SYSROOT_NOT_SNAPSHOT',
      `${ctx.sysroot} does not run from a snapper snapshot (@/.snapshots/N/snapshot)`,
      { sysroot: ctx.sysroot },
    );
  const src = await deps.openSource(image, { sysroot: ctx.sysroot, config, signal: opts.signal });
  try {
    let root: Descriptor;
    if (src.reference !== undefined) root = await src.target.resolve(src.reference, { signal: opts.signal });
    else if (src.target.resolveDefault) root = await src.target.resolveDefault({ signal: opts.signal });
    else
      throw new UpdateError(
        'REFERENCE_MISSING',
        `${image} does not say which image of ${src.target.name} to use: add a tag or digest`,
        { image },
      );
    const present = presentIn(state, root.digest);
    if (present !== undefined) return { status: 'already-present', image, digest: root.digest, snapshot: present };
    // Read-only use of the booted snapshot's content index, where an update left one.
    const index = { load: contentIndexFile(join(ctx.sysroot, config.cache), state.booted), save: false };
    const reserved = await reservedOf(snapshotPath(ctx.sysroot, state.booted), PRESERVE);
    const t = await chooseTransfer(deps, src.target, root, snapshotPath(ctx.sysroot, state.booted), {
      image,
      config,
      sysroot: ctx.sysroot,
      platform,
      reserved,
      mode: opts.transfer,
      signal: opts.signal,
      index,
    });
    return { status: 'available', image, digest: root.digest, booted: state.booted, transfer: t.report };
  } finally {
    await src.target.close?.().catch(() => undefined);
  }
}

/** The snapshot (default first, then booted) that already holds the image with this digest. */
function presentIn(state: SystemState, digest: string): number | undefined {
  const def = state.snapshots.find((s) => s.default);
  if (def?.digest === digest) return def.number;
  const booted = state.snapshots.find((s) => s.booted);
  if (booted?.digest === digest) return booted.number;
  return undefined;
}
