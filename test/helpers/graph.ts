// The children of a manifest or index, fetched and checked as production code reads them.
import { childrenOf, fetchManifest } from '../../src/content/graph.ts';
import type { FetchOptions, Fetcher } from '../../src/content/interfaces.ts';
import { isManifestLike } from '../../src/oci/mediatypes.ts';
import type { Descriptor } from '../../src/oci/types.ts';

/** Index -> manifests; manifest -> config then layers; anything else has none. */
export async function successors(fetcher: Fetcher, desc: Descriptor, opts?: FetchOptions): Promise<Descriptor[]> {
  if (!isManifestLike(desc.mediaType)) return [];
  const { parsed } = await fetchManifest(fetcher, desc, opts);
  return childrenOf(parsed);
}
