/**
 * Choosing a delta artifact (docs/bundle-format.md, "Delta artifacts") for the image about to
 * be deployed: among TO's referrers of the delta artifact type, one whose FROM is an image a
 * local snapshot holds (the booted one first, then the pending default, then the others) and
 * whose FROM TOCs the cache's store has (they are the dictionary of its TOC patches and of its
 * file index). Its manifest and index are fetched bounded and checked against the signed TO and
 * the FROM the device knows; the artifact itself is not signed, so nothing it says is used
 * unchecked. An artifact that does not fit is the reason for the plain file-level delta.
 */
import type { Target } from '../../content/interfaces.ts';
import { fetchManifest, fetchVerified } from '../../content/graph.ts';
import { asError } from '../../errors.ts';
import type { Descriptor, ImageManifest } from '../../oci/types.ts';
import { ZstdChunkedAnnotation } from '../../layer/toc.ts';
import { parseDeltaHeader, type DeltaHeader } from '../../patch/delta-index.ts';
import {
  DELTA_ARTIFACT_TYPE,
  DELTA_INDEX_MEDIA_TYPE,
  DELTA_PATCHES_MEDIA_TYPE,
  DeltaAnnotation,
  MAX_DELTA_INDEX_BYTES,
} from '../../patch/media.ts';
import type { TocBytes } from './tocs.ts';
import { tocJsonSize } from './toc-dictionary.ts';
import type { StoredImage, TocStore } from './toc-store.ts';

/** An image a local snapshot holds: its root digest (snapper userdata tiu-digest) and where the snapshot is. */
export interface HeldImage {
  digest: string;
  /** The snapshot's root directory (read only). */
  root: string;
  /** Its content index in the cache, where one is kept. */
  indexFile?: string;
}

/** What the device looks for: TO's platform manifest, and the images its snapshots hold. */
export interface DeltaWanted {
  /** TO's platform image manifest descriptor (the artifacts' subject). */
  subject: Descriptor;
  /** The images local snapshots hold, most wanted first. */
  held: readonly HeldImage[];
  platform: { os: string; architecture: string };
}

/** A delta artifact that fits: its parts, its checked header, and FROM's TOCs (the start of its dictionary). */
export interface ChosenDelta {
  artifact: Descriptor;
  from: StoredImage;
  /** The snapshot that holds FROM: where its old files are. */
  holder: HeldImage;
  index: Descriptor;
  patches: Descriptor;
  indexBlob: Buffer;
  header: DeltaHeader;
  /** FROM's TOCs in FROM layer order, as the store verified them (mostly compressed: decompressed into the dictionary when used). */
  fromTocs: TocBytes[];
}

/** Most listed artifacts looked at: a registry cannot make the device fetch manifests without end. */
const MAX_CANDIDATES = 16;

export type DeltaChoice =
  | { chosen: ChosenDelta }
  /** Why no artifact is used; `indexBytes`: an index fetched before it proved unusable. */
  | { chosen: undefined; reason: string; artifact?: string; indexBytes?: number };

/**
 * FROM's TOCs from the store, in layer order, as kept (a compressed TOC stays compressed: the
 * dictionary decompresses it into place when used); undefined when one is missing or its size
 * is not declared.
 */
async function fromStoredTocs(store: TocStore, m: ImageManifest): Promise<TocBytes[] | undefined> {
  const out: TocBytes[] = [];
  for (const d of m.layers) {
    const compressed = await store.compressedToc(d);
    const json = compressed ? undefined : await store.tocJson(d);
    const b: TocBytes | undefined = compressed ? { compressed } : json ? { json } : undefined;
    if (!b || tocJsonSize(b, d) === undefined) return undefined;
    out.push(b);
  }
  return out;
}

/** The FROM an artifact names: from its descriptor's annotations, else from its manifest. */
async function fromOf(source: Target, d: Descriptor, signal?: AbortSignal): Promise<string | undefined> {
  const a = d.annotations?.[DeltaAnnotation.From];
  if (a !== undefined) return a;
  const m = await fetchManifest(source, d, { signal }).catch(() => undefined);
  return m?.parsed.kind === 'manifest' ? m.parsed.manifest.annotations?.[DeltaAnnotation.From] : undefined;
}

/** The artifact's manifest, checked against what the device asked for: its two blobs. */
async function artifactParts(
  source: Target,
  d: Descriptor,
  want: DeltaWanted,
  from: string,
  signal?: AbortSignal,
): Promise<{ index: Descriptor; patches: Descriptor }> {
  const m = await fetchManifest(source, d, { signal });
  const bad = (why: string) => new Error(`its manifest ${why}`);
  if (m.parsed.kind !== 'manifest') throw bad('is an index');
  const a = m.parsed.manifest;
  if (a.artifactType !== DELTA_ARTIFACT_TYPE) throw bad(`has artifactType ${String(a.artifactType)}`);
  if (a.subject?.digest !== want.subject.digest) throw bad(`has another subject than ${want.subject.digest}`);
  if (a.annotations?.[DeltaAnnotation.From] !== from) throw bad('names another FROM than its referrer entry');
  const [index, patches] = a.layers;
  if (
    a.layers.length !== 2 ||
    index?.mediaType !== DELTA_INDEX_MEDIA_TYPE ||
    patches?.mediaType !== DELTA_PATCHES_MEDIA_TYPE
  )
    throw bad('does not hold an index and a patches blob');
  if (index.size > MAX_DELTA_INDEX_BYTES)
    throw bad(`declares an index of ${index.size} bytes, over the limit of ${MAX_DELTA_INDEX_BYTES}`);
  return { index, patches };
}

/** The header's claims against the signed TO and the FROM the device holds. */
function checkHeader(h: DeltaHeader, want: DeltaWanted, from: StoredImage): void {
  if (h.from !== from.digest || h.to !== want.subject.digest)
    throw new Error(`its index is for ${h.from} -> ${h.to}, not ${from.digest} -> ${want.subject.digest}`);
  const tocs = from.manifest.layers.map((l) => l.annotations?.[ZstdChunkedAnnotation.ManifestChecksum]);
  if (h.fromTocs.length !== tocs.length || h.fromTocs.some((t, i) => t !== tocs[i]))
    throw new Error(`its index names other FROM tables of contents than ${from.digest} has`);
}

/**
 * The delta artifact to use for `want.subject`, or why none. Failures of the listing or of an
 * artifact are reasons, not errors: the file-level delta does without it.
 */
export async function chooseDelta(
  source: Target,
  want: DeltaWanted,
  store: TocStore,
  signal?: AbortSignal,
): Promise<DeltaChoice> {
  if (!source.referrers) return { chosen: undefined, reason: `${source.name} lists no referrers` };
  let listed: Descriptor[];
  try {
    listed = await source.referrers(want.subject, DELTA_ARTIFACT_TYPE, { signal });
  } catch (e) {
    signal?.throwIfAborted();
    return {
      chosen: undefined,
      reason: `listing the referrers of ${want.subject.digest} failed: ${asError(e).message}`,
    };
  }
  listed = listed.filter((d) => d.artifactType === undefined || d.artifactType === DELTA_ARTIFACT_TYPE);
  if (listed.length === 0) return { chosen: undefined, reason: 'no delta artifact for this image' };
  // The images local snapshots hold, by platform manifest digest, in the order wanted.
  const held = new Map<string, { rank: number; image: StoredImage; holder: HeldImage }>();
  for (const [rank, holder] of want.held.entries()) {
    const image = await store.image(holder.digest, want.platform);
    if (image && !held.has(image.digest)) held.set(image.digest, { rank, image, holder });
  }
  let best: { rank: number; image: StoredImage; holder: HeldImage; desc: Descriptor; fromTocs: TocBytes[] } | undefined;
  let why = `no delta artifact is from an image a local snapshot holds (${listed.length} for other images)`;
  for (const d of listed.slice(0, MAX_CANDIDATES)) {
    const from = await fromOf(source, d, signal);
    const h = from === undefined ? undefined : held.get(from);
    if (!h || (best && best.rank <= h.rank)) continue;
    const fromTocs = await fromStoredTocs(store, h.image.manifest).catch(() => undefined);
    if (!fromTocs) {
      why = `the tables of contents of ${h.image.digest}, the FROM of delta artifact ${d.digest}, are not in the cache`;
      continue;
    }
    best = { ...h, desc: d, fromTocs };
  }
  if (!best) return { chosen: undefined, reason: why };
  const { desc, image, holder, fromTocs } = best;
  let indexBytes: number | undefined;
  try {
    const { index, patches } = await artifactParts(source, desc, want, image.digest, signal);
    const indexBlob = await fetchVerified(source, index, MAX_DELTA_INDEX_BYTES, { signal });
    indexBytes = indexBlob.length;
    const header = parseDeltaHeader(indexBlob, patches.size);
    checkHeader(header, want, image);
    return { chosen: { artifact: desc, from: image, holder, index, patches, indexBlob, header, fromTocs } };
  } catch (e) {
    signal?.throwIfAborted();
    return {
      chosen: undefined,
      reason: `delta artifact ${desc.digest} cannot be used: ${asError(e).message}`,
      artifact: desc.digest,
      ...(indexBytes !== undefined ? { indexBytes } : {}),
    };
  }
}
