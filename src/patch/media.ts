/**
 * The delta artifact's names and limits (docs/bundle-format.md, "Delta artifacts"): an OCI 1.1
 * artifact, a referrer of TO's platform manifest, holding zstd patch-from frames that turn
 * FROM's files and TOCs into TO's.
 */

/** The artifact manifest's `artifactType`. */
export const DELTA_ARTIFACT_TYPE = 'application/vnd.opensuse.tiu.delta.v1';
/** layers[0]: header frame + files frame (compressed with the TOC dictionary). */
export const DELTA_INDEX_MEDIA_TYPE = 'application/vnd.opensuse.tiu.delta.index.v1+zstd';
/** layers[1]: TOC patches, then file patches, zstd frames back to back. */
export const DELTA_PATCHES_MEDIA_TYPE = 'application/vnd.opensuse.tiu.delta.patches.v1';

export const DeltaAnnotation = {
  /** On the artifact manifest: FROM's platform image manifest digest. */
  From: 'org.opensuse.tiu.delta.from',
  /** On each zstd:chunked layer `tiu build` writes: sha256 of the uncompressed TOC JSON (signed with the manifest). */
  TocJsonDigest: 'org.opensuse.tiu.toc.json-digest',
} as const;

/** The index format version this code writes and reads. */
export const DELTA_INDEX_VERSION = 1;

/** zstd level of every patch: level 19 gives what 22 gives on OS updates, level 3 three times more. */
export const PATCH_LEVEL = 19;
/** Largest window a patch may use (and the decoder accepts): bounds the decoder's memory to 64 MiB. */
export const PATCH_WINDOW_LOG_MAX = 26;
/** A file whose old or new content is larger than this gets no patch (its window would pass 2^26). */
export const MAX_PATCH_INPUT = 16 * 1024 * 1024;

/** Largest index blob read. */
export const MAX_DELTA_INDEX_BYTES = 16 * 1024 * 1024;
/** Largest header JSON (frame 1, uncompressed). */
export const MAX_DELTA_HEADER_BYTES = 1024 * 1024;
/** Largest files JSON (frame 2, uncompressed) a header may declare. */
export const MAX_DELTA_FILES_BYTES = 64 * 1024 * 1024;
/** Most layers a header may list (FROM TOCs, TO TOC patches). */
export const MAX_DELTA_LAYERS = 1024;
