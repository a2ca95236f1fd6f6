/**
 * `tiu delta FROM TO` (and `tiu build --delta-from`): the CI side of delta artifacts
 * (docs/bundle-format.md, "Delta artifacts"). For each platform of TO that FROM has too: read
 * both images' TOCs, pair every TO regular file whose content FROM lacks with FROM's file at the
 * same path, encode zstd patch-from patches (old file as the dictionary) and patches of TO's
 * TOCs (FROM's TOCs as the dictionary), keep each only where it beats what it replaces, and
 * push index + patches as an OCI artifact whose subject is TO's platform manifest.
 * Deterministic: the same FROM and TO give the same artifact digest.
 */
import { availableParallelism } from 'node:os';
import { Readable } from 'node:stream';
import type { Target } from '../content/interfaces.ts';
import { MediaType } from '../oci/mediatypes.ts';
import type { Descriptor, Digest, ImageManifest } from '../oci/types.ts';
import { compressWithDictionary, encodePatch } from '../patch/codec.ts';
import { encodeDeltaIndex, tocDictionary, type DeltaFilePatch, type DeltaTocPatch } from '../patch/delta-index.ts';
import {
  DELTA_ARTIFACT_TYPE,
  DELTA_INDEX_MEDIA_TYPE,
  DELTA_PATCHES_MEDIA_TYPE,
  DeltaAnnotation,
  MAX_PATCH_INPUT,
} from '../patch/media.ts';
import { descriptorOf, pushIfAbsent } from '../trust/content.ts';
import { forEachBounded } from '../util/semaphore.ts';
import {
  blobRanges,
  DeltaImageError,
  imageFiles,
  platformImages,
  readImageFile,
  readLayerTocs,
  type BlobRange,
  type ImageFile,
  type LayerToc,
  type PlatformImage,
} from './delta-images.ts';

export interface DeltaOptions {
  /**
   * Patches encoded at a time (each holds an old and a new file, at most 16 MiB each, and a
   * level-19 zstd context, up to ~150 MiB). Default: the CPUs, at most 4.
   */
  concurrency?: number;
  onProgress?: (line: string) => void;
}

/** Why a TO file with new content has no patch. */
export type UnpatchedReason = 'no-old-file' | 'too-large' | 'chunked' | 'not-smaller' | 'not-patchable';

export interface DeltaResult {
  /** The artifact manifest's descriptor. */
  artifact: Descriptor;
  platform: string;
  /** FROM's and TO's platform image manifest digests. */
  from: Digest;
  to: Digest;
  /** false: the same artifact was already a referrer of TO. */
  pushed: boolean;
  files: {
    /** TO files whose content FROM lacks (one per distinct content). */
    changed: number;
    patched: number;
    unpatched: Record<UnpatchedReason, number>;
    /** Bytes of the file patches, and of the TO frames they replace. */
    patchBytes: number;
    frameBytes: number;
  };
  tocs: {
    /** TO layers whose TOC is not one of FROM's. */
    changed: number;
    patched: number;
    /** Bytes of the TOC patches, and of the compressed TOCs they replace. */
    patchBytes: number;
    compressedBytes: number;
  };
  indexBytes: number;
  seconds: number;
}

/** One side of a delta: a target and the root descriptor (manifest or index) of an image in it. */
export interface DeltaImageRef {
  readonly target: Target;
  readonly root: Descriptor;
}

const EMPTY_CONFIG = Buffer.from('{}');

const concurrency = (opts: DeltaOptions): number => opts.concurrency ?? Math.min(4, availableParallelism());

/**
 * Make and push a delta artifact from FROM to TO for every platform of TO that FROM has.
 * `to.target` must be writable: the artifacts go there, as referrers of TO's platform manifests.
 */
export async function makeDeltas(
  from: DeltaImageRef,
  to: DeltaImageRef,
  opts: DeltaOptions = {},
): Promise<DeltaResult[]> {
  const fromImages = await platformImages(from.target, from.root);
  const toImages = await platformImages(to.target, to.root);
  const pairs = toImages.flatMap((t) => {
    const f = fromImages.find((x) => x.platform === t.platform);
    if (!f) opts.onProgress?.(`${t.platform}: FROM has no image for it, no delta`);
    return f ? [{ f, t }] : [];
  });
  if (pairs.length === 0)
    throw new DeltaImageError(
      `FROM (${fromImages.map((x) => x.platform).join(', ') || 'no platform'}) and TO (${toImages.map((x) => x.platform).join(', ') || 'no platform'}) have no platform in common`,
      { from: from.root.digest, to: to.root.digest },
    );
  const out: DeltaResult[] = [];
  for (const { f, t } of pairs) out.push(await makeDelta(from.target, f, to.target, t, opts));
  return out;
}

interface FilePair {
  readonly old: ImageFile;
  readonly neu: ImageFile;
}

/** Why `neu` cannot be patched from `old`, or undefined when it can. */
function unpatchable(old: ImageFile | undefined, neu: ImageFile): UnpatchedReason | undefined {
  if (!old) return 'no-old-file';
  if (old.size > MAX_PATCH_INPUT || neu.size > MAX_PATCH_INPUT) return 'too-large';
  if (old.chunked || neu.chunked) return 'chunked';
  return undefined;
}

const byPath = (a: ImageFile, b: ImageFile): number => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0);

/**
 * The TO files with content FROM lacks anywhere (content FROM has at any path is on the device
 * already), one pair per distinct content: the first path in byte order that has an old file to
 * patch from. Pairs in path order; the reasons of the contents that get none.
 */
export function pairFiles(fromTocs: readonly LayerToc[], toTocs: readonly LayerToc[]) {
  const fromFiles = imageFiles(fromTocs);
  const fromDigests = new Set([...fromFiles.values()].map((f) => f.digest));
  const unpatched: Record<UnpatchedReason, number> = {
    'no-old-file': 0,
    'too-large': 0,
    chunked: 0,
    'not-smaller': 0,
    'not-patchable': 0,
  };
  const byContent = new Map<string, ImageFile[]>();
  for (const f of [...imageFiles(toTocs).values()].sort(byPath)) {
    if (fromDigests.has(f.digest)) continue;
    const same = byContent.get(f.digest);
    if (same) same.push(f);
    else byContent.set(f.digest, [f]);
  }
  const pairs: FilePair[] = [];
  for (const paths of byContent.values()) {
    const neu = paths.find((f) => unpatchable(fromFiles.get(f.path), f) === undefined);
    if (neu) pairs.push({ old: fromFiles.get(neu.path)!, neu });
    else unpatched[unpatchable(fromFiles.get(paths[0]!.path), paths[0]!)!]++;
  }
  return { pairs: pairs.sort((a, b) => byPath(a.neu, b.neu)), unpatched, changed: byContent.size };
}

async function makeDelta(
  fromTarget: Target,
  fromImage: PlatformImage,
  toTarget: Target,
  toImage: PlatformImage,
  opts: DeltaOptions,
): Promise<DeltaResult> {
  const started = Date.now();
  const say = (line: string) => opts.onProgress?.(`${toImage.platform}: ${line}`);
  if (fromImage.desc.digest === toImage.desc.digest)
    throw new DeltaImageError(`FROM and TO are the same image (${toImage.desc.digest})`, {
      digest: toImage.desc.digest,
    });
  const fromRange = blobRanges(fromTarget);
  const toRange = blobRanges(toTarget);
  say(`reading the tables of contents of ${fromImage.desc.digest} and ${toImage.desc.digest}`);
  const fromTocs = await readLayerTocs(fromTarget, fromImage, fromRange);
  const toTocs = await readLayerTocs(toTarget, toImage, toRange);

  const { pairs, unpatched, changed } = pairFiles(fromTocs, toTocs);
  say(`${changed} files with new content, ${pairs.length} with an old version to patch from`);
  const filePatches = await encodeFilePatches(pairs, fromRange, toRange, opts, say, unpatched);
  const tocPatches = await encodeTocPatches(fromTocs, toTocs, opts);

  // Layout of the patches blob: TOC patches in TO's layer order, then file patches in path order.
  let offset = 0;
  const parts: Buffer[] = [];
  const tocs: DeltaTocPatch[] = tocPatches.patches.map(({ layer, patch }) => {
    parts.push(patch);
    offset += patch.length;
    return { layer: layer.digest, offset: offset - patch.length, size: patch.length };
  });
  const files: DeltaFilePatch[] = filePatches.map(({ pair, patch }) => {
    parts.push(patch);
    offset += patch.length;
    return {
      path: pair.neu.path,
      old: pair.old.digest,
      new: pair.neu.digest,
      offset: offset - patch.length,
      size: patch.length,
    };
  });
  const patches = Buffer.concat(parts, offset);
  const index = encodeDeltaIndex(
    { from: fromImage.desc.digest, to: toImage.desc.digest, fromTocs: fromTocs.map((t) => t.checksum), tocs },
    files,
    tocDictionary(
      fromTocs.map((t) => t.json),
      toTocs.map((t) => t.json),
    ),
  );
  const { artifact, pushed } = await pushArtifact(toTarget, toImage.desc, fromImage.desc.digest, index, patches);
  const patchBytes = filePatches.reduce((n, p) => n + p.patch.length, 0);
  const result: DeltaResult = {
    artifact,
    platform: toImage.platform,
    from: fromImage.desc.digest,
    to: toImage.desc.digest,
    pushed,
    files: {
      changed,
      patched: filePatches.length,
      unpatched,
      patchBytes,
      frameBytes: filePatches.reduce((n, p) => n + (p.pair.neu.endOffset - p.pair.neu.offset), 0),
    },
    tocs: {
      changed: tocPatches.changed,
      patched: tocPatches.patches.length,
      patchBytes: tocPatches.patches.reduce((n, p) => n + p.patch.length, 0),
      compressedBytes: tocPatches.patches.reduce((n, p) => n + p.compressedSize, 0),
    },
    indexBytes: index.length,
    seconds: (Date.now() - started) / 1000,
  };
  say(
    `${pushed ? 'pushed' : 'already there:'} ${artifact.digest}: ${result.files.patched} file patches (${patchBytes} bytes for ${result.files.frameBytes} bytes of frames), ${result.tocs.patched} TOC patches (${result.tocs.patchBytes} bytes), index ${index.length} bytes`,
  );
  return result;
}

/** Encode each pair's patch, at most `concurrency` at a time; keeps those smaller than TO's frame, in the pairs' order. */
async function encodeFilePatches(
  pairs: readonly FilePair[],
  fromRange: BlobRange,
  toRange: BlobRange,
  opts: DeltaOptions,
  say: (line: string) => void,
  unpatched: Record<UnpatchedReason, number>,
): Promise<{ pair: FilePair; patch: Buffer }[]> {
  const patches: (Buffer | undefined)[] = new Array<Buffer | undefined>(pairs.length);
  let done = 0;
  let lastSaid = Date.now();
  await forEachBounded([...pairs.keys()], concurrency(opts), async (i) => {
    const { old, neu } = pairs[i]!;
    const patch = await encodePatch(await readImageFile(fromRange, old), await readImageFile(toRange, neu));
    patches[i] = patch;
    done++;
    if (Date.now() - lastSaid >= 2000) {
      lastSaid = Date.now();
      say(`encoded ${done} of ${pairs.length} file patches`);
    }
  });
  const kept: { pair: FilePair; patch: Buffer }[] = [];
  for (const [i, pair] of pairs.entries()) {
    const patch = patches[i];
    if (!patch) unpatched['not-patchable']++;
    else if (patch.length >= pair.neu.endOffset - pair.neu.offset) unpatched['not-smaller']++;
    else kept.push({ pair, patch });
  }
  return kept;
}

/**
 * A patch of each TO TOC that is not one of FROM's and is pinned by a json-digest annotation,
 * with FROM's TOC JSONs as the dictionary; kept when smaller than the compressed TOC.
 */
async function encodeTocPatches(fromTocs: readonly LayerToc[], toTocs: readonly LayerToc[], opts: DeltaOptions) {
  const fromChecksums = new Set(fromTocs.map((t) => t.checksum));
  // A layer listed twice in TO is one layer: one patch (the index names each layer once).
  const changed = toTocs.filter(
    (t, i) => !fromChecksums.has(t.checksum) && toTocs.findIndex((x) => x.layer.digest === t.layer.digest) === i,
  );
  const dictionary = Buffer.concat(fromTocs.map((t) => t.json));
  const candidates = changed.filter((t) => t.jsonDigest !== undefined);
  const encoded: Buffer[] = new Array<Buffer>(candidates.length);
  await forEachBounded([...candidates.keys()], concurrency(opts), async (i) => {
    encoded[i] = await compressWithDictionary(candidates[i]!.json, dictionary);
  });
  const patches = candidates.flatMap((t, i) =>
    encoded[i]!.length < t.compressedSize
      ? [{ layer: t.layer, patch: encoded[i]!, compressedSize: t.compressedSize }]
      : [],
  );
  return { changed: changed.length, patches };
}

/**
 * Push index, patches, the empty config and the artifact manifest to `target`, the manifest with
 * `subject` = TO's platform manifest (the target files it as a referrer: the referrers API, or
 * the tag-schema index). An identical artifact already listed is not pushed again.
 */
async function pushArtifact(
  target: Target,
  subject: Descriptor,
  from: Digest,
  index: Buffer,
  patches: Buffer,
): Promise<{ artifact: Descriptor; pushed: boolean }> {
  const indexDesc = descriptorOf(DELTA_INDEX_MEDIA_TYPE, index);
  const patchesDesc = descriptorOf(DELTA_PATCHES_MEDIA_TYPE, patches);
  const config = descriptorOf(MediaType.OciEmpty, EMPTY_CONFIG);
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: MediaType.OciManifest,
    artifactType: DELTA_ARTIFACT_TYPE,
    config,
    layers: [indexDesc, patchesDesc],
    subject: { mediaType: subject.mediaType, digest: subject.digest, size: subject.size },
    annotations: { [DeltaAnnotation.From]: from },
  };
  const bytes = Buffer.from(JSON.stringify(manifest));
  const artifact = descriptorOf(MediaType.OciManifest, bytes, { artifactType: DELTA_ARTIFACT_TYPE });
  const listed = (await target.referrers?.(subject, DELTA_ARTIFACT_TYPE)) ?? [];
  if (listed.some((d) => d.digest === artifact.digest)) return { artifact, pushed: false };
  await pushIfAbsent(target, config, EMPTY_CONFIG);
  await pushIfAbsent(target, indexDesc, index);
  await pushIfAbsent(target, patchesDesc, patches);
  // Pushed even when the manifest exists: that (re)files it as a referrer.
  await target.push(artifact, Readable.from([bytes]));
  return { artifact, pushed: true };
}
