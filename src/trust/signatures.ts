/**
 * Cosign signature manifests: tag `<alg>-<hex>.sig` in the image's repository, an OCI image
 * manifest whose every layer is a simple-signing payload blob
 * (application/vnd.dev.cosign.simplesigning.v1+json) carrying its base64 signature in the layer
 * annotation `dev.cosignproject.cosign/signature`. The config blob is the minimal image config
 * cosign writes (rootfs.diff_ids = the payload digests).
 */
import type { Target } from '../content/interfaces.ts';
import { InvalidManifestError } from '../oci/validate.ts';
import { parseDigest } from '../oci/digest.ts';
import { MAX_MANIFEST_BYTES, MediaType, isManifestType } from '../oci/mediatypes.ts';
import { parseManifestBytes } from '../oci/validate.ts';
import type { Descriptor, Digest, ImageManifest } from '../oci/types.ts';
import { descriptorOf, pushIfAbsent, readVerified, resolveOptional } from './content.ts';
import { MAX_PAYLOAD_BYTES } from './payload.ts';

export const SIGNATURE_ANNOTATION = 'dev.cosignproject.cosign/signature';
/** Most signatures one image may carry: a hostile signature manifest must not make us fetch thousands of blobs. */
export const MAX_SIGNATURES = 256;

/** `sha256:abc...` -> `sha256-abc....sig` */
export function signatureTag(digest: Digest): string {
  const { algorithm, hex } = parseDigest(digest);
  return `${algorithm}-${hex}.sig`;
}

export interface StoredSignature {
  /** The layer descriptor of the payload in the signature manifest. */
  layer: Descriptor;
  /** Base64 signature from the annotation (as stored; decoded by the verifier). */
  signature: string;
  /** The payload bytes, verified against the layer's digest. Undefined when they couldn't be read. */
  payload?: Buffer;
  /** Why the payload could not be read (a typed error code and message). */
  readError?: { code: string; message: string };
}

export interface SignatureManifest {
  descriptor: Descriptor;
  manifest: ImageManifest;
}

/** The signature manifest of `subject` in `target`, or undefined if it has none. */
export async function readSignatureManifest(target: Target, subject: Digest): Promise<SignatureManifest | undefined> {
  const desc = await resolveOptional(target, signatureTag(subject));
  if (!desc) return undefined;
  if (!isManifestType(desc.mediaType)) {
    throw new InvalidManifestError(
      `signature tag ${signatureTag(subject)} in ${target.name} is a ${desc.mediaType}, not an image manifest`,
    );
  }
  const bytes = await readVerified(target, desc, MAX_MANIFEST_BYTES, 'signature manifest');
  return { descriptor: desc, manifest: parseManifestBytes(bytes, desc.mediaType) };
}

/** Every simple-signing signature attached to `subject` (payloads read and digest-checked). */
export async function listSignatures(target: Target, subject: Digest): Promise<StoredSignature[]> {
  const sm = await readSignatureManifest(target, subject);
  if (!sm) return [];
  if (sm.manifest.layers.length > MAX_SIGNATURES) {
    throw new InvalidManifestError(
      `signature manifest ${sm.descriptor.digest} in ${target.name} has ${sm.manifest.layers.length} layers, more than the ${MAX_SIGNATURES} tiu reads`,
    );
  }
  const out: StoredSignature[] = [];
  for (const layer of sm.manifest.layers) {
    if (layer.mediaType !== MediaType.CosignSimpleSigning) continue;
    const signature = layer.annotations?.[SIGNATURE_ANNOTATION];
    if (typeof signature !== 'string') continue;
    const entry: StoredSignature = { layer, signature };
    try {
      entry.payload = await readVerified(target, layer, MAX_PAYLOAD_BYTES, 'signature payload');
    } catch (e) {
      const err = e as { code?: unknown; message?: unknown };
      entry.readError = { code: typeof err.code === 'string' ? err.code : 'INTERNAL', message: String(err.message) };
    }
    out.push(entry);
  }
  return out;
}

/** The config blob cosign writes for a signature manifest with these layers. */
export function signatureConfig(layers: Descriptor[]): Buffer {
  const zero = '0001-01-01T00:00:00Z';
  return Buffer.from(
    JSON.stringify({
      architecture: '',
      created: zero,
      history: layers.map(() => ({ created: zero })),
      os: '',
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) },
      config: {},
    }),
  );
}

export interface AppendResult {
  /** The signature manifest now at the tag. */
  descriptor: Descriptor;
  tag: string;
  /** False when an equivalent signature was already there (nothing was written). */
  added: boolean;
  /** Number of signatures in the manifest. */
  count: number;
}

/**
 * Add one signed payload to `subject`'s signature manifest (creating it if absent), as cosign
 * does: the existing layers are kept, the new layer appended, config and manifest rewritten and
 * the tag moved. `isDuplicate` decides whether an existing layer already is this signature.
 * `extraAnnotations` go on the layer beside the signature (a keyless signature's certificate,
 * chain and Rekor SET, as cosign writes them).
 */
export async function appendSignature(
  target: Target,
  subject: Digest,
  payload: Buffer,
  signatureB64: string,
  isDuplicate: (existing: StoredSignature) => boolean = (s) =>
    s.payload?.equals(payload) === true && s.signature === signatureB64,
  extraAnnotations: Record<string, string> = {},
): Promise<AppendResult> {
  const tag = signatureTag(subject);
  const existing = await readSignatureManifest(target, subject);
  const layers: Descriptor[] = existing ? [...existing.manifest.layers] : [];
  if (existing) {
    for (const s of await listSignatures(target, subject)) {
      if (isDuplicate(s)) return { descriptor: existing.descriptor, tag, added: false, count: layers.length };
    }
  }
  const layer = descriptorOf(MediaType.CosignSimpleSigning, payload, {
    annotations: { ...extraAnnotations, [SIGNATURE_ANNOTATION]: signatureB64 },
  });
  await pushIfAbsent(target, layer, payload);
  layers.push(layer);
  const config = signatureConfig(layers);
  const configDesc = descriptorOf(MediaType.OciConfig, config);
  await pushIfAbsent(target, configDesc, config);
  const manifest: ImageManifest = { schemaVersion: 2, mediaType: MediaType.OciManifest, config: configDesc, layers };
  const manifestBytes = Buffer.from(JSON.stringify(manifest));
  const manifestDesc = descriptorOf(MediaType.OciManifest, manifestBytes);
  await pushIfAbsent(target, manifestDesc, manifestBytes);
  await target.tag(manifestDesc, tag);
  return { descriptor: manifestDesc, tag, added: true, count: layers.length };
}
