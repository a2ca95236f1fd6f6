/** What a referrers listing says about a manifest that has a `subject`. */
import type { Descriptor } from '../oci/types.ts';
import type { ParsedManifest } from '../oci/validate.ts';

/**
 * The descriptor a referrers listing returns for a manifest (as the OCI distribution spec's
 * referrers API does: artifactType from the manifest, else its config's media type, and the
 * manifest's annotations), with the digest of its subject; undefined without a subject.
 */
export function referrerDescriptor(
  desc: Descriptor,
  parsed: ParsedManifest,
): { subject: string; desc: Descriptor } | undefined {
  const doc = parsed.kind === 'index' ? parsed.index : parsed.manifest;
  if (!doc.subject) return undefined;
  const out: Descriptor = { mediaType: desc.mediaType, digest: desc.digest, size: desc.size };
  const artifactType = doc.artifactType ?? (parsed.kind === 'manifest' ? parsed.manifest.config.mediaType : undefined);
  if (artifactType !== undefined) out.artifactType = artifactType;
  if (doc.annotations && Object.keys(doc.annotations).length > 0) out.annotations = { ...doc.annotations };
  return { subject: doc.subject.digest, desc: out };
}
