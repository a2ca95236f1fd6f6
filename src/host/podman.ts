/**
 * containers-storage through podman's own tools: tiu does not read podman's storage itself (its
 * layout, locks and drivers are podman's business), it asks podman to save the image as an OCI
 * layout into a directory tiu owns.
 */
import { TiuError } from '../errors.ts';
import type { StorageReference, StorageSpecifier } from '../oci/reference.ts';
import { CommandFailedError, run } from './exec.ts';

/** podman's global options that select the storage a `[driver@root+runroot:options]` names. */
export function storageArgs(s: StorageSpecifier | undefined): string[] {
  if (!s) return [];
  const args = ['--root', s.root];
  if (s.runRoot) args.push('--runroot', s.runRoot);
  if (s.driver) args.push('--storage-driver', s.driver);
  if (s.options) for (const o of s.options.split(',')) args.push('--storage-opt', o);
  return args;
}

/**
 * `podman image save --format oci-dir` of `ref` into `dir` (which must not exist yet): a layout
 * holding that one image. PODMAN_MISSING without podman, CONTAINERS_STORAGE_FAILED when podman
 * refuses (an unknown image, a storage it can't open), keeping podman's error as the cause.
 */
export async function saveFromStorage(ref: StorageReference, dir: string, signal?: AbortSignal): Promise<void> {
  const args = [
    ...storageArgs(ref.storage),
    'image',
    'save',
    '--quiet',
    '--format',
    'oci-dir',
    '--output',
    dir,
    '--',
    ref.image,
  ];
  try {
    await run('podman', args, { timeout: 3_600_000, ...(signal ? { signal } : {}) });
  } catch (e) {
    if (e instanceof CommandFailedError && e.message.includes('is not installed')) {
      throw new TiuError('PODMAN_MISSING', `containers-storage:${ref.image} needs podman, which is not installed`, {
        image: ref.image,
      });
    }
    if (e instanceof TiuError && e.code === 'DISK_FULL') throw e;
    const stderr = e instanceof CommandFailedError ? e.details.stderr : undefined;
    const said = typeof stderr === 'string' ? stderr : '';
    throw new TiuError(
      'CONTAINERS_STORAGE_FAILED',
      `podman could not save containers-storage:${ref.image}${said ? `: ${said}` : ''}`,
      { image: ref.image },
      { cause: e },
    );
  }
}
