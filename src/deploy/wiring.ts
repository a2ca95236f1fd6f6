/**
 * The real implementations behind UpdateDeps. Transports and copy come from src/transport and
 * src/copy; the signature policy, the diff-apply engine and the /etc and user merges are
 * added here as their modules land in main.
 */
import { OciLayoutTarget } from '../content/oci-layout.ts';
import { copy } from '../copy/copy.ts';
import { openReference } from '../transport/resolve.ts';
import type { UpdateDeps } from './update.ts';

export const transportDeps: Pick<UpdateDeps, 'openSource' | 'openCache' | 'copy'> = {
  async openSource(reference, o) {
    const { target, name } = await openReference(reference, { signal: o.signal });
    return { target, reference: name };
  },
  openCache: (dir) => OciLayoutTarget.open(dir, { create: true, name: `cache oci:${dir}` }),
  copy: (src, srcRef, dst, dstRef, opts) => copy(src, srcRef, dst, dstRef, opts),
};
