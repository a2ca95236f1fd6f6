/**
 * containers-storage: as a source. podman saves the image as an OCI layout into a private
 * temporary directory (src/host/podman.ts); that layout is the Target, and closing it removes
 * the directory. The layout holds exactly the image named, so it is opened by its digest.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Target } from '../content/interfaces.ts';
import { OciLayoutTarget } from '../content/oci-layout.ts';
import { formatReference, type StorageReference } from '../oci/reference.ts';
import { saveFromStorage } from '../host/podman.ts';

export async function openStorageSource(
  ref: StorageReference,
  opts: { tmpDir?: string; signal?: AbortSignal } = {},
): Promise<{ target: Target; digest: string }> {
  // mkdtemp makes it 0700: nobody else can swap the layout under tiu.
  const dir = await mkdtemp(join(opts.tmpDir ?? tmpdir(), 'tiu-storage-'));
  const remove = () => rm(dir, { recursive: true, force: true });
  try {
    const layoutDir = join(dir, 'layout');
    await saveFromStorage(ref, layoutDir, opts.signal);
    const layout = await OciLayoutTarget.open(layoutDir, { name: formatReference(ref) });
    const root = await layout.resolveDefault();
    const own = (layout as Target).close?.bind(layout);
    const target: Target = Object.assign(layout, {
      close: async () => {
        await own?.();
        await remove();
      },
    });
    return { target, digest: root.digest };
  } catch (e) {
    await remove();
    throw e;
  }
}
