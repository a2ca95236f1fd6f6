/**
 * An OCI image layout directory as a Target (image-spec image-layout.md): `oci-layout`,
 * `index.json`, `blobs/<alg>/<hex>`. What makes it safe on a USB stick and with several
 * writers:
 *  - a blob is written to a temp file beside its final name, verified by digest and size while
 *    it is written, fsynced, then renamed into place: a blob file is complete or absent;
 *  - index.json is replaced atomically (temp + fsync + rename) under a lock file, so two
 *    writers (processes) never lose each other's tags or leave a torn file;
 *  - tags are index.json entries annotated `org.opencontainers.image.ref.name`;
 *  - a pushed manifest that has a `subject` gets an untagged index.json entry, which is where
 *    referrers() finds it (and what keeps it from being garbage to other tools).
 */
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import {
  chmod,
  copyFile,
  mkdir,
  open,
  readdir,
  readFile,
  rename,
  stat,
  unlink,
  type FileHandle,
} from 'node:fs/promises';
import { constants as fsc } from 'node:fs';
import { join, resolve as resolvePath } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { TiuError } from '../errors.ts';
import { isDigest, parseDigest, SizeMismatchError, verifiedStream } from '../oci/digest.ts';
import { MAX_MANIFEST_BYTES, MediaType, isManifestLike } from '../oci/mediatypes.ts';
import { Annotation, type Descriptor, type ImageIndex } from '../oci/types.ts';
import {
  ManifestTooLargeError,
  detectManifestMediaType,
  parseIndexBytes,
  parseManifestOrIndex,
  readAllCapped,
  validateDescriptor,
  type ParsedManifest,
} from '../oci/validate.ts';
import { fsyncDir, fsyncFile, writeFileAtomic } from '../util/atomic.ts';
import { RingWriter } from '../util/ring-writer.ts';
import { InvalidTagError, NotFoundError } from './errors.ts';
import { fileRangeReader, readerStream, verifiedReader, type BlobReader } from './blob-reader.ts';
import type { FetchOptions, PushOptions, Target } from './interfaces.ts';
import { withLock } from './lock.ts';
import { checkRange } from './range.ts';
import { referrerDescriptor } from './referrers.ts';

export const LAYOUT_VERSION = '1.0.0';
/** Write all of `bytes` at `position` (a write may take fewer bytes than asked). */
async function writeAt(fh: FileHandle, bytes: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < bytes.length) {
    const { bytesWritten } = await fh.write(bytes, done, bytes.length - done, position + done);
    done += bytesWritten;
  }
}

/** A RingWriter whose buffers go to `fh` one after another (positional writes, in order). */
function fileRing(fh: FileHandle, onBytes: ((n: number) => void) | undefined): RingWriter {
  let position = 0;
  return new RingWriter(async (bytes) => {
    const at = position;
    position += bytes.length;
    await writeAt(fh, bytes, at);
    onBytes?.(bytes.length);
  });
}
/**
 * A new temporary file beside `final` holding what `fill` writes into its ring, synced; its
 * name is returned for `install`. On any failure the file is removed and the error rethrown.
 */
async function writeTemporary(
  final: string,
  onBytes: ((n: number) => void) | undefined,
  fill: (ring: RingWriter) => Promise<void>,
): Promise<string> {
  const dir = join(final, '..');
  await mkdir(dir, { recursive: true });
  const tmp = join(dir, `.tiu-${randomBytes(8).toString('hex')}.tmp`);
  const fh = await open(tmp, 'wx', 0o644);
  try {
    try {
      const ring = fileRing(fh, onBytes);
      try {
        await fill(ring);
      } catch (e) {
        await ring.abort(e);
        throw e;
      }
      await ring.end();
      await fh.sync();
    } finally {
      await fh.close();
    }
  } catch (e) {
    await unlink(tmp).catch(() => undefined);
    throw e;
  }
  return tmp;
}

/** A written temporary file becomes the blob (rename, then the directory synced); removed if that fails. */
async function install(tmp: string, final: string): Promise<void> {
  try {
    await rename(tmp, final);
    await fsyncDir(join(final, '..'));
  } catch (e) {
    await unlink(tmp).catch(() => undefined);
    throw e;
  }
}
const COSIGN_TAG_RE = /^[a-z0-9]+-[0-9a-f]{64}\.(?:sig|att|sbom)$/;

export class InvalidLayoutError extends TiuError {
  constructor(path: string, why: string) {
    super('LAYOUT_INVALID', `${path} is not a usable OCI layout: ${why}`, { path });
  }
}
export class AmbiguousReferenceError extends TiuError {
  constructor(where: string, count: number) {
    super('REFERENCE_AMBIGUOUS', `${where} holds ${count} images; name one with :TAG or @DIGEST`, { where, count });
  }
}

export interface LayoutOptions {
  /** Create the directory and an empty layout when there is none (for destinations). */
  create?: boolean;
  /** Name in messages; default `oci:<path>`. */
  name?: string;
}

/** A ref.name as tiu accepts it: printable, no whitespace, not empty, at most 255 characters. */
function checkRefName(ref: string): void {
  // eslint-disable-next-line no-control-regex
  if (ref === '' || ref.length > 255 || /[\s\u0000-\u001f\u007f]/.test(ref) || isDigest(ref))
    throw new InvalidTagError(ref);
}

function errno(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code;
}

export class OciLayoutTarget implements Target {
  readonly name: string;
  readonly path: string;
  readonly #lockPath: string;
  /** Parsed manifests by digest (content-addressed, so never stale). */
  readonly #parsed = new Map<string, ParsedManifest>();

  private constructor(path: string, name: string) {
    this.path = path;
    this.name = name;
    this.#lockPath = join(path, '.tiu.lock');
  }

  static async open(path: string, opts: LayoutOptions = {}): Promise<OciLayoutTarget> {
    const abs = resolvePath(path);
    const t = new OciLayoutTarget(abs, opts.name ?? `oci:${path}`);
    let layoutText: string | undefined;
    try {
      layoutText = await readFile(join(abs, 'oci-layout'), 'utf8');
    } catch (e) {
      if (errno(e) !== 'ENOENT' && errno(e) !== 'ENOTDIR') throw e;
    }
    if (layoutText === undefined) {
      if (!opts.create) throw new NotFoundError('OCI layout (no oci-layout file)', abs);
      await t.#init();
    } else {
      t.#checkLayoutFile(layoutText);
    }
    return t;
  }

  #checkLayoutFile(text: string): void {
    let v: unknown;
    try {
      v = JSON.parse(text);
    } catch {
      throw new InvalidLayoutError(this.path, 'oci-layout is not JSON');
    }
    const ver = (v as { imageLayoutVersion?: unknown } | null)?.imageLayoutVersion;
    if (typeof ver !== 'string' || !/^1\.\d+\.\d+$/.test(ver)) {
      throw new InvalidLayoutError(this.path, `unsupported imageLayoutVersion ${JSON.stringify(ver)}`);
    }
  }

  async #init(): Promise<void> {
    try {
      await mkdir(join(this.path, 'blobs', 'sha256'), { recursive: true });
    } catch (e) {
      throw new InvalidLayoutError(this.path, `cannot create it (${(e as Error).message})`);
    }
    await withLock(this.#lockPath, async () => {
      // Another writer may have created it meanwhile.
      const exists = await stat(join(this.path, 'oci-layout')).then(
        () => true,
        () => false,
      );
      if (exists) return;
      const hasIndex = await stat(join(this.path, 'index.json')).then(
        () => true,
        () => false,
      );
      if (!hasIndex) await this.#writeIndex({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [] });
      await writeFileAtomic(join(this.path, 'oci-layout'), JSON.stringify({ imageLayoutVersion: LAYOUT_VERSION }));
    });
  }

  blobPath(digest: string): string {
    const { algorithm, hex } = parseDigest(digest);
    return join(this.path, 'blobs', algorithm, hex);
  }

  // ---- index.json

  async readIndex(): Promise<ImageIndex> {
    let bytes: Buffer;
    try {
      bytes = await readFile(join(this.path, 'index.json'));
    } catch (e) {
      if (errno(e) === 'ENOENT') throw new InvalidLayoutError(this.path, 'index.json is missing');
      throw e;
    }
    try {
      return parseIndexBytes(bytes);
    } catch (e) {
      throw new InvalidLayoutError(this.path, `index.json: ${(e as Error).message}`);
    }
  }

  async #writeIndex(idx: ImageIndex): Promise<void> {
    await writeFileAtomic(join(this.path, 'index.json'), JSON.stringify(idx));
  }

  /** Read-modify-write index.json under the layout's lock. */
  async #updateIndex(fn: (idx: ImageIndex) => ImageIndex | undefined): Promise<void> {
    await withLock(this.#lockPath, async () => {
      const next = fn(await this.readIndex());
      if (next) await this.#writeIndex(next);
    });
  }

  // ---- Storage

  /** The blob's file, open for reading; a missing one is NotFoundError. */
  async #openBlobFile(desc: Descriptor): Promise<FileHandle> {
    try {
      return await open(this.blobPath(desc.digest), 'r');
    } catch (e) {
      if (errno(e) === 'ENOENT') throw new NotFoundError(`blob ${desc.digest}`, this.name);
      throw e;
    }
  }

  async fetch(desc: Descriptor, _opts?: FetchOptions): Promise<Readable> {
    return (await this.#openBlobFile(desc)).createReadStream();
  }

  async openBlob(desc: Descriptor, _opts?: FetchOptions): Promise<BlobReader> {
    const fh = await this.#openBlobFile(desc);
    return {
      read: async (into) => (await fh.read(into, 0, into.length, null)).bytesRead,
      close: () => fh.close(),
    };
  }

  async fetchRange(desc: Descriptor, start: number, end: number, _opts?: FetchOptions): Promise<Readable> {
    const path = this.blobPath(desc.digest);
    let size: number;
    try {
      size = (await stat(path)).size;
    } catch (e) {
      if (errno(e) === 'ENOENT') throw new NotFoundError(`blob ${desc.digest}`, this.name);
      throw e;
    }
    checkRange(size, start, end, desc.digest);
    if (start === end) return Readable.from([]);
    return createReadStream(path, { start, end: end - 1 });
  }

  /** fetchRange's bytes read into the consumer's buffers: no Buffer per chunk (blob-reader.ts). */
  async openRange(desc: Descriptor, start: number, end: number, _opts?: FetchOptions): Promise<BlobReader> {
    const fh = await this.#openBlobFile(desc);
    try {
      checkRange((await fh.stat()).size, start, end, desc.digest);
    } catch (e) {
      await fh.close();
      throw e;
    }
    return fileRangeReader(fh, start, end);
  }

  async exists(desc: Descriptor, _opts?: FetchOptions): Promise<boolean> {
    try {
      return (await stat(this.blobPath(desc.digest))).size === desc.size;
    } catch (e) {
      if (errno(e) === 'ENOENT') return false;
      throw e;
    }
  }

  /**
   * A finished file as a blob: renamed into place when it is on this filesystem, else copied by
   * the kernel (copy_file_range or a reflink), then fsynced like a pushed blob. Manifests go
   * through push(): they are parsed and may be referrers.
   */
  async pushFile(desc: Descriptor, file: string, opts?: PushOptions): Promise<void> {
    if (isManifestLike(desc.mediaType)) return this.push(desc, createReadStream(file), opts);
    validateDescriptor(desc);
    opts?.signal?.throwIfAborted();
    const size = (await stat(file)).size;
    if (size !== desc.size) throw new SizeMismatchError(desc.digest, desc.size, size, 'blob');
    const final = this.blobPath(desc.digest);
    const dir = join(final, '..');
    await mkdir(dir, { recursive: true });
    const tmp = join(dir, `.tiu-${randomBytes(8).toString('hex')}.tmp`);
    try {
      try {
        await rename(file, tmp);
      } catch (e) {
        if (errno(e) !== 'EXDEV') throw e;
        await copyFile(file, tmp, fsc.COPYFILE_EXCL | fsc.COPYFILE_FICLONE);
      }
      await chmod(tmp, 0o644);
      await fsyncFile(tmp);
      await rename(tmp, final);
      await fsyncDir(dir);
      opts?.onBytes?.(size);
    } catch (e) {
      await unlink(tmp).catch(() => undefined);
      throw e;
    }
  }

  /**
   * A blob read by `openReader()`'s reader straight into the ring's buffers (RingWriter.fill), which
   * the file writes take from: a registry's body reaches the disk with one copy and no
   * allocation per chunk. Verified as it is read; the file becomes the blob only once the reader
   * has ended cleanly (the end is where a digest or size mismatch throws).
   */
  async pushFrom(desc: Descriptor, openReader: () => Promise<BlobReader>, opts?: PushOptions): Promise<void> {
    if (isManifestLike(desc.mediaType)) return this.push(desc, readerStream(await openReader()), opts);
    validateDescriptor(desc);
    const final = this.blobPath(desc.digest);
    const reader = verifiedReader(await openReader(), desc, 'blob');
    try {
      const tmp = await writeTemporary(final, opts?.onBytes, async (ring) => {
        while ((await ring.fill((into) => reader.read(into))) > 0) opts?.signal?.throwIfAborted();
      });
      await install(tmp, final);
    } finally {
      await reader.close();
    }
  }

  async push(desc: Descriptor, content: Readable, opts?: PushOptions): Promise<void> {
    validateDescriptor(desc);
    const manifestLike = isManifestLike(desc.mediaType);
    if (manifestLike && desc.size > MAX_MANIFEST_BYTES) {
      content.destroy();
      throw new ManifestTooLargeError(desc.size, MAX_MANIFEST_BYTES);
    }
    const final = this.blobPath(desc.digest);
    const kept: Buffer[] = [];
    // Chunks are copied into a few buffers of the writer's own as they arrive and written from
    // there (ring-writer.ts): no incoming chunk waits for the disk, so none outlives the young
    // generation, and the bytes held are bounded whatever the blob's size.
    const tmp = await writeTemporary(final, opts?.onBytes, (ring) =>
      pipeline(
        verifiedStream(content, desc, 'blob'),
        async (source: AsyncIterable<Buffer>) => {
          for await (const chunk of source) {
            if (manifestLike) kept.push(chunk);
            await ring.write(chunk);
          }
        },
        { signal: opts?.signal },
      ),
    );
    try {
      let parsed: ParsedManifest | undefined;
      if (manifestLike) {
        parsed = parseManifestOrIndex(Buffer.concat(kept), desc.mediaType);
        this.#parsed.set(desc.digest, parsed);
      }
      await install(tmp, final);
      const ref = parsed && referrerDescriptor(desc, parsed);
      if (ref) {
        const entry: Descriptor = { mediaType: desc.mediaType, digest: desc.digest, size: desc.size };
        if (desc.artifactType) entry.artifactType = desc.artifactType;
        await this.#updateIndex((idx) => {
          if (idx.manifests.some((m) => m.digest === desc.digest)) return undefined;
          return { ...idx, manifests: [...idx.manifests, entry] };
        });
      }
    } catch (e) {
      await unlink(tmp).catch(() => undefined);
      throw e;
    }
  }

  // ---- Resolver / Tagger

  async resolve(reference: string, _opts?: FetchOptions): Promise<Descriptor> {
    const idx = await this.readIndex();
    if (isDigest(reference)) {
      const e = idx.manifests.find((m) => m.digest === reference);
      if (e) return { mediaType: e.mediaType, digest: e.digest, size: e.size };
      // Not listed (a child of an index, or an untagged copy): judge the blob itself.
      const path = this.blobPath(reference);
      let bytes: Buffer;
      try {
        const st = await stat(path);
        if (st.size > MAX_MANIFEST_BYTES) throw new ManifestTooLargeError(st.size, MAX_MANIFEST_BYTES);
        bytes = await readAllCapped(createReadStream(path), MAX_MANIFEST_BYTES, `blob ${reference}`);
      } catch (e) {
        if (errno(e) === 'ENOENT') throw new NotFoundError(`manifest ${reference}`, this.name);
        throw e;
      }
      return { mediaType: detectManifestMediaType(bytes), digest: reference, size: bytes.length };
    }
    const hits = idx.manifests.filter((m) => m.annotations?.[Annotation.RefName] === reference);
    const hit = hits[hits.length - 1];
    if (!hit) throw new NotFoundError(`tag ${JSON.stringify(reference)}`, this.name);
    return { mediaType: hit.mediaType, digest: hit.digest, size: hit.size };
  }

  /** Without a reference: the only image of the layout (referrers do not count). */
  async resolveDefault(opts?: FetchOptions): Promise<Descriptor> {
    const idx = await this.readIndex();
    const images: Descriptor[] = [];
    for (const m of idx.manifests) {
      // Referrers and cosign's tag-scheme attachments (sha256-<hex>.sig) are not images.
      if (COSIGN_TAG_RE.test(m.annotations?.[Annotation.RefName] ?? '')) continue;
      if (isManifestLike(m.mediaType) && (await this.#subjectOf(m)) !== undefined) continue;
      if (images.some((i) => i.digest === m.digest)) continue;
      images.push(m);
    }
    if (images.length === 0) throw new NotFoundError('any image', this.name);
    if (images.length > 1) throw new AmbiguousReferenceError(this.name, images.length);
    const only = images[0]!;
    return this.resolve(only.digest, opts);
  }

  async tag(desc: Descriptor, reference: string, _opts?: FetchOptions): Promise<void> {
    checkRefName(reference);
    if (!(await this.exists(desc))) throw new NotFoundError(`manifest ${desc.digest}`, this.name);
    const entry: Descriptor = { mediaType: desc.mediaType, digest: desc.digest, size: desc.size };
    if (desc.platform) entry.platform = desc.platform;
    entry.annotations = { [Annotation.RefName]: reference };
    await this.#updateIndex((idx) => ({
      ...idx,
      manifests: [...idx.manifests.filter((m) => m.annotations?.[Annotation.RefName] !== reference), entry],
    }));
  }

  async tags(_opts?: FetchOptions): Promise<string[]> {
    const idx = await this.readIndex();
    const names = new Set<string>();
    for (const m of idx.manifests) {
      const n = m.annotations?.[Annotation.RefName];
      if (n !== undefined) names.add(n);
    }
    return [...names].sort();
  }

  // ---- Referrers

  async #parsedOf(desc: Descriptor): Promise<ParsedManifest | undefined> {
    const cached = this.#parsed.get(desc.digest);
    if (cached) return cached;
    if (desc.size > MAX_MANIFEST_BYTES) return undefined;
    let bytes: Buffer;
    try {
      bytes = await readFile(this.blobPath(desc.digest));
    } catch (e) {
      if (errno(e) === 'ENOENT') return undefined;
      throw e;
    }
    const parsed = parseManifestOrIndex(bytes, desc.mediaType);
    this.#parsed.set(desc.digest, parsed);
    return parsed;
  }

  async #subjectOf(desc: Descriptor): Promise<string | undefined> {
    const p = await this.#parsedOf(desc);
    return p && referrerDescriptor(desc, p)?.subject;
  }

  async referrers(desc: Descriptor, artifactType?: string, _opts?: FetchOptions): Promise<Descriptor[]> {
    const idx = await this.readIndex();
    const out: Descriptor[] = [];
    const seen = new Set<string>();
    for (const m of idx.manifests) {
      if (!isManifestLike(m.mediaType) || seen.has(m.digest)) continue;
      seen.add(m.digest);
      const p = await this.#parsedOf(m);
      const r = p && referrerDescriptor(m, p);
      if (r && r.subject === desc.digest && (artifactType === undefined || r.desc.artifactType === artifactType))
        out.push(r.desc);
    }
    return out;
  }

  // ---- Removal

  /**
   * Forget an image and free what only it used: its tags, cosign's tag-scheme attachments for
   * it (`sha256-<hex>.sig` …), the referrers whose subject it is, then every blob that nothing
   * still listed in index.json reaches. index.json is the only root, so a writer that has
   * pushed blobs but not yet tagged them must not run at the same time (tiu update holds its
   * update lock around both).
   */
  async removeImage(digest: string): Promise<{ blobs: number; bytes: number }> {
    const { algorithm, hex } = parseDigest(digest);
    return withLock(this.#lockPath, async () => {
      const idx = await this.readIndex();
      const keep: Descriptor[] = [];
      for (const m of idx.manifests) {
        const name = m.annotations?.[Annotation.RefName] ?? '';
        if (m.digest === digest) continue;
        if (COSIGN_TAG_RE.test(name) && name.startsWith(`${algorithm}-${hex}.`)) continue;
        if (isManifestLike(m.mediaType) && (await this.#subjectOf(m)) === digest) continue;
        keep.push(m);
      }
      if (keep.length !== idx.manifests.length) await this.#writeIndex({ ...idx, manifests: keep });
      return this.#deleteUnreachable(keep);
    });
  }

  /** Delete blobs no descriptor in `roots` reaches (through manifests and indexes). */
  async #deleteUnreachable(roots: readonly Descriptor[]): Promise<{ blobs: number; bytes: number }> {
    const reachable = new Set<string>();
    const queue = [...roots];
    for (let d = queue.pop(); d; d = queue.pop()) {
      if (reachable.has(d.digest)) continue;
      reachable.add(d.digest);
      if (!isManifestLike(d.mediaType)) continue;
      let p: ParsedManifest | undefined;
      try {
        p = await this.#parsedOf(d);
      } catch {
        continue; // an unreadable manifest keeps only itself
      }
      if (p?.kind === 'manifest') queue.push(p.manifest.config, ...p.manifest.layers);
      if (p?.kind === 'index') queue.push(...p.index.manifests);
    }
    let blobs = 0;
    let bytes = 0;
    const top = join(this.path, 'blobs');
    for (const alg of await readdir(top)) {
      const dir = join(top, alg);
      let names: string[];
      try {
        names = await readdir(dir);
      } catch (e) {
        if (errno(e) === 'ENOTDIR') continue;
        throw e;
      }
      let removed = false;
      for (const name of names) {
        // Temp files of blobs being written start with a dot; anything else not a digest is not ours.
        if (name.startsWith('.') || !isDigest(`${alg}:${name}`) || reachable.has(`${alg}:${name}`)) continue;
        const path = join(dir, name);
        const size = (await stat(path)).size;
        await unlink(path);
        this.#parsed.delete(`${alg}:${name}`);
        blobs++;
        bytes += size;
        removed = true;
      }
      if (removed) await fsyncDir(dir);
    }
    return { blobs, bytes };
  }
}
