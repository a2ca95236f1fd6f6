/**
 * The content graph: an index names manifests, a manifest names its config and layers.
 * `subject` is not a successor: a referrer points at its subject, it does not contain it.
 */
import { isTiuError } from '../errors.ts';
import { TrailingDataError, verifyBuffer } from '../oci/digest.ts';
import { MAX_MANIFEST_BYTES } from '../oci/mediatypes.ts';
import type { Descriptor } from '../oci/types.ts';
import { ManifestTooLargeError, parseManifestOrIndex, readAllCapped, type ParsedManifest } from '../oci/validate.ts';
import type { FetchOptions, Fetcher } from './interfaces.ts';

/**
 * Fetch a manifest or index, size-capped and verified against its descriptor (digest and size),
 * and schema-checked against the descriptor's media type.
 */
export async function fetchManifest(
  fetcher: Fetcher,
  desc: Descriptor,
  opts?: FetchOptions,
): Promise<{ bytes: Buffer; parsed: ParsedManifest }> {
  if (desc.size > MAX_MANIFEST_BYTES) throw new ManifestTooLargeError(desc.size, MAX_MANIFEST_BYTES);
  const bytes = await fetchVerified(fetcher, desc, MAX_MANIFEST_BYTES, opts);
  return { bytes, parsed: parseManifestOrIndex(bytes, desc.mediaType) };
}

/** A small blob, whole, verified by digest and size. */
export async function fetchVerified(
  fetcher: Fetcher,
  desc: Descriptor,
  limit: number,
  opts?: FetchOptions,
): Promise<Buffer> {
  const stream = await fetcher.fetch(desc, opts);
  // One byte more than the size is enough to tell trailing data.
  const bytes = await readAllCapped(stream, Math.min(limit, desc.size), `blob ${desc.digest}`).catch((e: unknown) => {
    if (isTiuError(e, 'CONTENT_TOO_LARGE') && desc.size <= limit) throw new TrailingDataError(desc.digest, desc.size);
    throw e;
  });
  verifyBuffer(desc, bytes, 'blob');
  return bytes;
}

/** The children of a node, from parsed content. */
export function childrenOf(parsed: ParsedManifest): Descriptor[] {
  if (parsed.kind === 'index') return [...parsed.index.manifests];
  return [parsed.manifest.config, ...parsed.manifest.layers];
}
