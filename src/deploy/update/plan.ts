/**
 * Stage `plan`: the download path against the booted snapshot (with the other snapshots tiu
 * deployed as content sources), the file-level delta where the source and layers allow it
 * (prepareTransfer), else whole layers. Reads the system, writes only content indexes into the
 * cache. `prepare` is shared with --check.
 */
import { join } from 'node:path';
import { fetchManifest } from '../../content/graph.ts';
import type { Target } from '../../content/interfaces.ts';
import { humanSize } from '../../format.ts';
import type { Descriptor } from '../../oci/types.ts';
import { UnsafePathError } from '../../layer/errors.ts';
import type { TreeEntry } from '../apply/types.ts';
import {
  contentIndexFile,
  describeTransfer,
  type DeltaTransfer,
  type HeldImage,
  type ImageManifests,
  type PreparedTransfer,
} from '../delta/index.ts';
import { snapshotPath, type SnapshotState, type SystemState } from '../state.ts';
import { withLayers } from '../../layer/openers.ts';
import type { UpdateDeps } from './deps.ts';
import { UpdateError, whileFetching } from './errors.ts';
import type { OfferedImage, OnBooted, Planned, Resolved, Settled } from './run.ts';
import { contentSources } from './sources.ts';

/** The image manifest for this machine: the root itself, or the matching entry of an index. */
export async function imageManifest(
  target: Target,
  root: Descriptor,
  platform: { os: string; architecture: string },
  signal?: AbortSignal,
): Promise<OfferedImage> {
  const first = await fetchManifest(target, root, { signal });
  const rootBytes = { digest: root.digest, bytes: first.bytes };
  if (first.parsed.kind === 'manifest')
    return {
      desc: root,
      manifest: withLayers(root, first.parsed.manifest),
      manifests: { root: rootBytes, platform: rootBytes },
    };
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
  return {
    desc: pick,
    manifest: withLayers(pick, second.parsed.manifest),
    manifests: { root: rootBytes, platform: { digest: pick.digest, bytes: second.bytes } },
  };
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

/** checkOsTree on the tree a delta planned (its plan held every entry, implicit parents too). */
export function checkOsPlan(d: DeltaTransfer, image: string): void {
  checkOsTree((p) => (p === 'usr' ? d.top.usr : p === 'etc' ? d.top.etc : undefined), image);
}

/**
 * The download path for the accepted image against the booted snapshot, using its content
 * index and the cache's TOC store (`save`: write what planning hashed and the TOCs it verified
 * back, for the next plan), with the other snapshots tiu deployed as content sources
 * (./sources.ts): what one of them holds is reflinked, not downloaded. Reads, never writes else.
 */
export async function prepare(
  deps: UpdateDeps,
  run: OnBooted & Resolved,
  index: { load: string; save: boolean },
): Promise<{ transfer: PreparedTransfer; manifests: ImageManifests }> {
  const { desc, manifest, manifests } =
    run.offered ?? (await imageManifest(run.source, run.root, run.platform, run.signal));
  const transfer = await deps.delta.prepareTransfer({
    source: run.source,
    manifest,
    oldRoot: snapshotPath(run.ctx.sysroot, run.from),
    preserve: run.reserved.paths,
    reserved: run.reserved,
    mode: run.opts.transfer ?? 'auto',
    signal: run.signal,
    indexFile: index.load,
    ...(index.save ? { saveIndexTo: index.load } : {}),
    tocStore: deps.delta.tocStore(cacheOf(run), { write: index.save }),
    deltaArtifacts: { subject: desc, held: heldImages(run.state, cacheOf(run)), platform: run.platform },
    sources: contentSources(run.state, run.from, join(run.ctx.sysroot, run.config.cache)),
    // The image's file rows wait on disk, a few blocks in memory: an unlinked file, gone with the process.
    spill: { dir: cacheOf(run), reserve: run.config.diskReserve },
  });
  if (transfer.path === 'delta' && transfer.rows) (run.held.rows ??= []).push(transfer.rows);
  return { transfer, manifests };
}

/**
 * The images local snapshots hold (root digests), in the order a delta artifact's FROM is
 * wanted: the booted one (the plan's old tree), the pending default, then the others, newest first.
 */
export function heldImages(state: SystemState, cacheDir: string): HeldImage[] {
  const done = state.snapshots.filter((s) => s.digest && !s.inProgress);
  const rank = (s: SnapshotState) => (s.booted ? 0 : s.default ? 1 : 2);
  return [...done]
    .sort((a, b) => rank(a) - rank(b) || b.number - a.number)
    .map((s) => ({
      digest: s.digest!,
      root: snapshotPath(state.sysroot, s.number),
      indexFile: contentIndexFile(cacheDir, s.number),
    }));
}

/** The cache directory (on /var) of this system. */
function cacheOf(run: OnBooted): string {
  return join(run.ctx.sysroot, run.config.cache);
}

/** The content index of snapshot `n`, in the cache. */
export function indexOf(run: OnBooted, n: number): string {
  return contentIndexFile(cacheOf(run), n);
}

/**
 * Online updates only (--offline reads the cache, --download-only fetches whole layers): the
 * download path, the delta's tree checked as an OS tree, and room in the cache for what the
 * download writes (the new files of a delta, the blobs of whole layers) above the reserve:
 * DISK_FULL now, before anything is written.
 */
export async function plan(deps: UpdateDeps, run: Settled & Resolved): Promise<Planned> {
  if (run.opts.offline || run.opts.downloadOnly)
    return { ...run, delta: undefined, transfer: undefined, manifests: undefined };
  const { cacheDir, image } = run;
  // Planning saves the booted snapshot's content index into the cache: a full disk can show here.
  const { transfer: t, manifests } = await whileFetching(cacheDir, image, () =>
    prepare(deps, run, { load: indexOf(run, run.from), save: true }),
  );
  run.progress(describeTransfer(t.report));
  if (t.path === 'delta') checkOsPlan(t, image);
  const predicted = t.path === 'delta' ? (t.report.files?.write.bytes ?? 0) : t.report.layerBytes;
  await whileFetching(cacheDir, image, () =>
    deps.system.checkRoom(
      cacheDir,
      predicted,
      run.config.diskReserve,
      t.path === 'delta' ? `the ${humanSize(predicted)} of new files of ${image}` : `the layers of ${image}`,
    ),
  );
  return { ...run, delta: t.path === 'delta' ? t : undefined, transfer: t.report, manifests };
}
