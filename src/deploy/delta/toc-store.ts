/**
 * What the device keeps of the images it deployed, in the cache (`/var/cache/tiu`), so that an
 * update needs neither the tables of contents it already verified once nor a registry to say
 * what a local snapshot holds:
 *
 *   tocs/<hex>        a layer's compressed TOC, named by its manifest-checksum annotation
 *   tocs/<hex>.json   a TOC JSON that came from a delta artifact's patch (its compressed form
 *                     was never downloaded), named by the layer's signed json-digest annotation
 *   manifests/<hex>   the root and platform manifests of deployed images, by digest
 *
 * Everything is content-addressed and verified by sha256 on every read (a damaged file is
 * removed and counts as absent), so the store is only an accelerator: what it answers is what a
 * signed manifest pins. Written only after tiu verified the bytes; pruned to what the images of
 * existing snapshots need. `tiu update --check` opens it read-only.
 */
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Descriptor, ImageManifest } from '../../oci/types.ts';
import { parseManifestOrIndex } from '../../oci/validate.ts';
import { ZstdChunkedAnnotation } from '../../layer/toc.ts';
import { writeFileAtomic } from '../../util/atomic.ts';
import { DeltaAnnotation } from '../../patch/media.ts';

const TOC_JSON_DIGEST = DeltaAnnotation.TocJsonDigest;

const HEX = /^sha256:([0-9a-f]{64})$/;

function hexOf(digest: string | undefined): string | undefined {
  return digest === undefined ? undefined : HEX.exec(digest)?.[1];
}

function sha256Hex(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

/** A deployed image as the store knows it: its platform manifest (digest and parsed). */
export interface StoredImage {
  digest: string;
  manifest: ImageManifest;
}

/** The verified manifests of an image about to be deployed: the root (index or manifest) and the platform one. */
export interface ImageManifests {
  root: { digest: string; bytes: Buffer };
  platform: { digest: string; bytes: Buffer };
}

export class TocStore {
  readonly tocDir: string;
  readonly manifestDir: string;
  readonly writable: boolean;

  private constructor(cacheDir: string, writable: boolean) {
    this.tocDir = join(cacheDir, 'tocs');
    this.manifestDir = join(cacheDir, 'manifests');
    this.writable = writable;
  }

  /** The store of the cache at `cacheDir`; `write: false` (tiu update --check) never changes a file. */
  static open(cacheDir: string, opts: { write: boolean }): TocStore {
    return new TocStore(cacheDir, opts.write);
  }

  /** Bytes of `dir/name` when they hash to `hex`; a damaged file is removed (if writable). */
  async #readVerified(dir: string, name: string, hex: string): Promise<Buffer | undefined> {
    const path = join(dir, name);
    const bytes = await readFile(path).catch(() => undefined);
    if (bytes === undefined) return undefined;
    if (sha256Hex(bytes) === hex) return bytes;
    if (this.writable) await rm(path, { force: true });
    return undefined;
  }

  /** Keep `bytes` when they hash to `hex`. Best effort: a store that cannot be written (a full /var) only accelerates less. */
  async #write(dir: string, name: string, hex: string, bytes: Uint8Array): Promise<void> {
    if (!this.writable || sha256Hex(bytes) !== hex) return;
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      await writeFileAtomic(join(dir, name), bytes, 0o600);
    } catch {
      // nothing depends on it: the next update fetches what is missing
    }
  }

  /** The compressed TOC of layer `d` (by its manifest-checksum), verified; undefined when not kept. */
  async compressedToc(d: Descriptor): Promise<Buffer | undefined> {
    const hex = hexOf(d.annotations?.[ZstdChunkedAnnotation.ManifestChecksum]);
    return hex ? this.#readVerified(this.tocDir, hex, hex) : undefined;
  }

  /** The TOC JSON of layer `d` kept from a patch (by its json-digest annotation), verified. */
  async tocJson(d: Descriptor): Promise<Buffer | undefined> {
    const hex = hexOf(d.annotations?.[TOC_JSON_DIGEST]);
    return hex ? this.#readVerified(this.tocDir, `${hex}.json`, hex) : undefined;
  }

  /** Keep a compressed TOC that matched `checksum` (its layer's manifest-checksum annotation). */
  async keepCompressedToc(checksum: string, compressed: Uint8Array): Promise<void> {
    const hex = hexOf(checksum);
    if (hex) await this.#write(this.tocDir, hex, hex, compressed);
  }

  /** Keep a TOC JSON that matched `jsonDigest` (its layer's json-digest annotation). */
  async keepTocJson(jsonDigest: string, json: Uint8Array): Promise<void> {
    const hex = hexOf(jsonDigest);
    if (hex) await this.#write(this.tocDir, `${hex}.json`, hex, json);
  }

  async manifest(digest: string): Promise<Buffer | undefined> {
    const hex = hexOf(digest);
    return hex ? this.#readVerified(this.manifestDir, hex, hex) : undefined;
  }

  /** Keep the verified manifests of an image being deployed. */
  async keepImage(m: ImageManifests): Promise<void> {
    for (const { digest, bytes } of [m.root, m.platform]) {
      const hex = hexOf(digest);
      if (hex) await this.#write(this.manifestDir, hex, hex, bytes);
    }
  }

  /**
   * The kept manifests (root and platform, verified) of the deployed image whose root is
   * `rootDigest`: what a snapshot committed before tiu recorded its image's age holds.
   */
  async imageManifests(
    rootDigest: string,
    platform: { os: string; architecture: string },
  ): Promise<ImageManifests | undefined> {
    const root = await this.manifest(rootDigest);
    if (!root) return undefined;
    const img = await this.image(rootDigest, platform);
    if (!img) return undefined;
    const bytes = img.digest === rootDigest ? root : await this.manifest(img.digest);
    return bytes ? { root: { digest: rootDigest, bytes: root }, platform: { digest: img.digest, bytes } } : undefined;
  }

  /**
   * The platform manifest of the deployed image whose root is `rootDigest` (a snapshot's
   * `tiu-digest`), from the kept manifests; undefined when they are not (all) kept.
   */
  async image(rootDigest: string, platform: { os: string; architecture: string }): Promise<StoredImage | undefined> {
    const root = await this.manifest(rootDigest);
    if (!root) return undefined;
    try {
      const parsed = parseManifestOrIndex(root);
      if (parsed.kind === 'manifest') return { digest: rootDigest, manifest: parsed.manifest };
      const pick = parsed.index.manifests.find(
        (m) => m.platform?.os === platform.os && m.platform.architecture === platform.architecture,
      );
      if (!pick) return undefined;
      const bytes = await this.manifest(pick.digest);
      if (!bytes) return undefined;
      const second = parseManifestOrIndex(bytes, pick.mediaType);
      return second.kind === 'manifest' ? { digest: pick.digest, manifest: second.manifest } : undefined;
    } catch {
      // Verified bytes that do not parse were never kept by tiu: not an image it can use.
      return undefined;
    }
  }

  /**
   * Keep only what the images with these root digests need (their manifests and their layers'
   * TOCs); remove everything else.
   */
  async prune(rootDigests: readonly string[], platform: { os: string; architecture: string }): Promise<void> {
    if (!this.writable) return;
    const manifests = new Set<string>();
    const tocs = new Set<string>();
    for (const root of rootDigests) {
      const img = await this.image(root, platform);
      const rootHex = hexOf(root);
      if (rootHex && (await this.manifest(root))) manifests.add(rootHex);
      if (!img) continue;
      const hex = hexOf(img.digest);
      if (hex) manifests.add(hex);
      for (const l of img.manifest.layers) {
        const c = hexOf(l.annotations?.[ZstdChunkedAnnotation.ManifestChecksum]);
        if (c) tocs.add(c);
        const j = hexOf(l.annotations?.[TOC_JSON_DIGEST]);
        if (j) tocs.add(`${j}.json`);
      }
    }
    for (const [dir, keep] of [
      [this.manifestDir, manifests],
      [this.tocDir, tocs],
    ] as const) {
      for (const name of await readdir(dir).catch(() => [] as string[]))
        if (!keep.has(name)) await rm(join(dir, name), { recursive: true, force: true });
    }
  }
}
