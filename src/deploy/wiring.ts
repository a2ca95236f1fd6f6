/**
 * The real implementations behind UpdateDeps: transports and copy (src/transport, src/copy),
 * the signature policy (src/trust), the cache (an OCI layout), the diff-apply engine
 * (src/deploy/apply), the file delta (src/deploy/delta), the /etc and user database merges, and
 * the system: snapper, btrfs, the lock, the boot loader, hooks, SELinux, free space.
 */
import { existsSync } from 'node:fs';
import { readdir, rename } from 'node:fs/promises';
import { removeAll } from '../util/remove-all.ts';
import { join } from 'node:path';
import { OciLayoutTarget } from '../content/oci-layout.ts';
import { parseReference, type DockerReference, type ImageReference } from '../oci/reference.ts';
import { openReference } from '../transport/resolve.ts';
import { TrustError } from '../trust/errors.ts';
import { checkPolicy, DEFAULT_POLICY_PATHS, loadPolicy } from '../trust/policy.ts';
import { isSubvolume, subvolumeDelete, subvolumeSnapshot } from '../host/btrfs.ts';
import { hasSelinuxLabel } from '../host/selinux.ts';
import { checkRoom, fsSpace, SpaceGuard } from './apply/space.ts';
import { detectBoot, settleBoot } from './boot/index.ts';
import { loadConfig } from './config.ts';
import {
  applyTransfer,
  ContentStore,
  downloadTransfer,
  prepareTransfer,
  pruneContentIndexes,
  TocStore,
} from './delta/index.ts';
import { acquireUpdateLock } from './lock.ts';
import { keepMountPoints, reservedOf } from './mount-points.ts';
import { RootedDir } from './rooted.ts';
import { cleanupInProgress, commitSnapshot, createInProgress, deleteSnapshot } from './snapshot.ts';
import { openContext, readState } from './state.ts';
import type { UpdateDeps } from './update/deps.ts';

/** The policy file of the system at `sysroot`: the configured one, else the first default that exists. */
export function policyPathFor(sysroot: string, configured: string | undefined): string {
  if (configured !== undefined) return join(sysroot, configured);
  const candidates = DEFAULT_POLICY_PATHS.map((p) => join(sysroot, p));
  const found = candidates.find((p) => existsSync(p));
  if (!found)
    throw new TrustError(
      'POLICY_NOT_FOUND',
      `no signature policy: none of ${candidates.join(', ')} exists, and unsigned updates are refused`,
      { paths: candidates },
    );
  return found;
}

/**
 * A layout (USB stick) carries no registry name: its signatures are checked against the
 * configured signed-identity, with the layout's tag, as if it had been pulled from there.
 */
function layoutIdentity(ref: ImageReference, signedIdentity: string | undefined): { identity?: DockerReference } {
  if (ref.transport === 'docker' || signedIdentity === undefined) return {};
  const id = parseReference(`docker://${signedIdentity}${ref.tag ? ':' + ref.tag : ''}`);
  return id.transport === 'docker' ? { identity: id } : {};
}

/**
 * The whole-layer path's tar engine, loaded when an update takes that path: the file-level
 * delta and `--check` never need it, and every module a device command loads costs RSS.
 */
const tarEngine = async () => ({
  ...(await import('./apply/tar-apply.ts')),
  ...(await import('./apply/tar-validate.ts')),
});

/** The whole-image copy (the whole-layer path's download), loaded when an update fetches the image. */
const copier = () => import('../copy/copy.ts');
/** Hooks and their kernel facts, loaded when a new snapshot has hooks to run (not for --check). */
const hookRunner = () => import('./hooks.ts');
/** The /etc and user database merges, loaded when an update has a new snapshot to merge into (not for --check). */
const merges = async () => ({ ...(await import('./etc-merge.ts')), ...(await import('./users-merge.ts')) });

export const productionDeps: UpdateDeps = {
  async openSource(reference, o) {
    // tiu.conf's min-speed, speed-time, request-deadline (the environment overrides them)
    const { target, name } = await openReference(reference, {
      signal: o.signal,
      ...(o.config.network ? { registry: { speed: o.config.network } } : {}),
    });
    return { target, reference: name };
  },
  openCache: (dir) => OciLayoutTarget.open(dir, { create: true, name: `cache oci:${dir}` }),
  copy: async (src, srcRef, dst, dstRef, opts) => (await copier()).copy(src, srcRef, dst, dstRef, opts),
  async checkPolicy({ reference, source, root, policyPath, sysroot, signedIdentity }) {
    const policy = loadPolicy(policyPathFor(sysroot, policyPath));
    const ref = parseReference(reference);
    return checkPolicy(policy, source, root, ref, layoutIdentity(ref, signedIdentity));
  },
  applyLayers: async (o) =>
    (await tarEngine()).applyTarLayers(o.root, o.layers, {
      preserve: o.preserve,
      ...(o.reserved ? { reserved: o.reserved } : {}),
      ...(o.space ? { space: o.space } : {}),
    }),
  mergeEtc: async (base, ours, theirs) => (await merges()).mergeEtc(base, ours, theirs),
  mergeUsers: async (base, ours, theirs) => (await merges()).mergeUserDb(base, ours, theirs),
  system: {
    openContext,
    loadConfig,
    readState,
    lock: acquireUpdateLock,
    cleanupInProgress,
    createInProgress,
    deleteSnapshot,
    commitSnapshot,
    detectBoot,
    settleBoot,
    reservedOf,
    keepMountPoints,
    isSubvolume,
    subvolumeSnapshot,
    subvolumeDelete,
    hasSelinuxLabel,
    kernelFacts: async (...a) => (await hookRunner()).kernelFacts(...a),
    existingPaths: async (...a) => (await hookRunner()).existingPaths(...a),
    runHooks: async (...a) => (await hookRunner()).runHooks(...a),
    fsSpace,
    checkRoom,
    spaceGuard: (root, reserve) => new SpaceGuard(root, reserve),
  },
  delta: {
    prepareTransfer,
    downloadTransfer,
    applyTransfer,
    pruneContentIndexes,
    openStore: (dir, opts) => ContentStore.open(dir, opts),
    tocStore: (cacheDir, opts) => TocStore.open(cacheDir, opts),
    validateTarLayers: async (...a) => (await tarEngine()).validateTarLayers(...a),
  },
  files: { openRooted: (root) => RootedDir.open(root), removeAll, rename, readdir },
};
