/**
 * dir: the containers tools' directory transport (containers-transports(5)), one image per
 * directory, flat:
 *   version                       `Directory Transport Version: 1.1\n`
 *   manifest.json                 the image's manifest or list, as its source had it
 *   <hex>.manifest.json           a list's manifests, by their sha256
 *   <hex>                         configs and layers, by their sha256
 *   signature-N, <hex>.signature-N  simple-signing signatures (left alone: tiu's are cosign's)
 * Reading opens every file without following symlinks, and consumers verify all of it by digest.
 * Writing fills a new sibling directory and swaps it in on close(), so a failed copy leaves an
 * existing image as it was (skopeo empties the directory first); an existing destination must
 * be a dir: image (its version file), never an arbitrary directory.
 */
import { constants } from 'node:fs';
import { mkdir, mkdtemp, open, readFile, readdir, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve as resolvePath } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { TiuError } from '../errors.ts';
import { isDigest, parseDigest, sha256, verifiedStream } from '../oci/digest.ts';
import { isManifestLike, MAX_MANIFEST_BYTES } from '../oci/mediatypes.ts';
import type { Descriptor } from '../oci/types.ts';
import { detectManifestMediaType } from '../oci/validate.ts';
import { fsyncDir, replaceFileAtomic } from '../util/atomic.ts';
import { NotFoundError } from './errors.ts';
import type { FetchOptions, PushOptions, Target } from './interfaces.ts';

/** What containers/image writes (1.1) and what older versions wrote (1.0). */
const VERSION = 'Directory Transport Version: 1.1\n';
const READABLE_VERSIONS = new Set([VERSION, 'Directory Transport Version: 1.0\n']);

export class InvalidDirError extends TiuError {
  constructor(path: string, why: string) {
    super('DIR_INVALID', `${path} is not a usable dir: image: ${why}`, { path });
  }
}

export interface DirOptions {
  /** A destination: written anew and swapped in on close(). */
  create?: boolean;
  name?: string;
}

function errno(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code;
}

/** The file name of a blob: its sha256 hex (the transport names no other algorithm). */
function hexOf(digest: string, where: string): string {
  const { algorithm, hex } = parseDigest(digest);
  if (algorithm !== 'sha256') throw new InvalidDirError(where, `digest ${digest}: only sha256 is stored by hex`);
  return hex;
}

async function readNoFollow(path: string, limit: number, what: string, where: string): Promise<Buffer> {
  let fh;
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (e) {
    if (errno(e) === 'ENOENT') throw new NotFoundError(what, where);
    if (errno(e) === 'ELOOP') throw new InvalidDirError(where, `${basename(path)} is a symlink`);
    throw e;
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new InvalidDirError(where, `${basename(path)} is not a regular file`);
    if (st.size > limit) throw new InvalidDirError(where, `${basename(path)} is larger than ${limit} bytes`);
    return await fh.readFile();
  } finally {
    await fh.close();
  }
}

export class DirTarget implements Target {
  readonly name: string;
  /** The image's directory (the destination's final place). */
  readonly path: string;
  /** Where reads and writes go: `path`, or the new sibling a destination fills. */
  readonly #dir: string;
  readonly #writing: boolean;
  /** The source's root manifest (manifest.json), read once at open. */
  #root: { desc: Descriptor; bytes: Buffer } | undefined;
  /** A destination's image: what tag() named, else the manifest pushed last (copy pushes parents last). */
  #tagged: Descriptor | undefined;
  #lastManifest: Descriptor | undefined;
  #closed = false;

  private constructor(path: string, dir: string, name: string, writing: boolean) {
    this.path = path;
    this.#dir = dir;
    this.name = name;
    this.#writing = writing;
  }

  static async open(path: string, opts: DirOptions = {}): Promise<DirTarget> {
    const abs = resolvePath(path);
    const name = opts.name ?? `dir:${path}`;
    if (opts.create) {
      await DirTarget.#checkReplaceable(abs);
      await mkdir(dirname(abs), { recursive: true });
      const dir = await mkdtemp(join(dirname(abs), `.${basename(abs)}.tiu-`));
      return new DirTarget(abs, dir, name, true);
    }
    const t = new DirTarget(abs, abs, name, false);
    let version: Buffer | undefined;
    try {
      version = await readNoFollow(join(abs, 'version'), 256, 'version file', name);
    } catch (e) {
      if (!(e instanceof NotFoundError)) throw e;
    }
    if (version !== undefined && !READABLE_VERSIONS.has(version.toString('utf8')))
      throw new InvalidDirError(abs, `unknown version ${JSON.stringify(version.toString('utf8').slice(0, 60))}`);
    const bytes = await readNoFollow(join(abs, 'manifest.json'), MAX_MANIFEST_BYTES, 'manifest.json', name);
    const mediaType = detectManifestMediaType(bytes);
    t.#root = { desc: { mediaType, digest: sha256(bytes), size: bytes.length }, bytes };
    return t;
  }

  /** An existing destination must be a dir: image; anything else is not tiu's to replace. */
  static async #checkReplaceable(abs: string): Promise<void> {
    let entries: string[];
    try {
      entries = await readdir(abs);
    } catch (e) {
      if (errno(e) === 'ENOENT') return;
      if (errno(e) === 'ENOTDIR') throw new InvalidDirError(abs, 'it is not a directory');
      throw e;
    }
    if (entries.length === 0) return;
    const version = await readFile(join(abs, 'version'), 'utf8').catch(() => undefined);
    if (version === undefined || !READABLE_VERSIONS.has(version))
      throw new InvalidDirError(abs, 'it is a non-empty directory without a dir: version file; not replaced');
  }

  #check(): void {
    if (this.#closed) throw new TiuError('TARGET_CLOSED', `${this.name} is closed`);
  }

  #manifestPath(digest: string): string {
    if (!this.#writing && this.#root?.desc.digest === digest) return join(this.#dir, 'manifest.json');
    return join(this.#dir, `${hexOf(digest, this.name)}.manifest.json`);
  }

  #pathOf(desc: Descriptor): string {
    if (!isDigest(desc.digest)) throw new InvalidDirError(this.name, `invalid digest ${JSON.stringify(desc.digest)}`);
    return isManifestLike(desc.mediaType)
      ? this.#manifestPath(desc.digest)
      : join(this.#dir, hexOf(desc.digest, this.name));
  }

  async fetch(desc: Descriptor, _opts?: FetchOptions): Promise<Readable> {
    this.#check();
    const path = this.#pathOf(desc);
    try {
      const fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
      return fh.createReadStream();
    } catch (e) {
      if (errno(e) === 'ENOENT') throw new NotFoundError(`blob ${desc.digest}`, this.name);
      if (errno(e) === 'ELOOP') throw new InvalidDirError(this.name, `${basename(path)} is a symlink`);
      throw e;
    }
  }

  async exists(desc: Descriptor, _opts?: FetchOptions): Promise<boolean> {
    this.#check();
    try {
      return (await stat(this.#pathOf(desc))).size === desc.size;
    } catch (e) {
      if (errno(e) === 'ENOENT') return false;
      throw e;
    }
  }

  async push(desc: Descriptor, content: Readable, opts?: PushOptions): Promise<void> {
    this.#check();
    if (!this.#writing) {
      content.destroy();
      throw new TiuError('INTERNAL', `${this.name} was opened for reading`);
    }
    const path = this.#pathOf(desc);
    await replaceFileAtomic(path, async (fh) => {
      await pipeline(verifiedStream(content, desc, 'blob'), async (source: AsyncIterable<Buffer>) => {
        for await (const chunk of source) {
          await fh.write(chunk);
          opts?.onBytes?.(chunk.length);
        }
      });
    });
    if (isManifestLike(desc.mediaType)) this.#lastManifest = desc;
  }

  /** The directory has no names: the only reference is its image's digest. */
  resolve(reference: string, opts?: FetchOptions): Promise<Descriptor> {
    if (this.#root && reference === this.#root.desc.digest) return this.resolveDefault(opts);
    return Promise.reject(new NotFoundError(`image ${JSON.stringify(reference)} (dir: holds one image)`, this.name));
  }

  resolveDefault(_opts?: FetchOptions): Promise<Descriptor> {
    this.#check();
    if (!this.#root) return Promise.reject(new NotFoundError('manifest.json', this.name));
    return Promise.resolve(this.#root.desc);
  }

  /** Names the destination's image (the name itself is not kept: the transport has none). */
  tag(desc: Descriptor, _reference: string, _opts?: FetchOptions): Promise<void> {
    this.#check();
    if (this.#tagged && this.#tagged.digest !== desc.digest)
      return Promise.reject(
        new InvalidDirError(this.name, `it holds one image (${this.#tagged.digest}), not also ${desc.digest}`),
      );
    this.#tagged = desc;
    return Promise.resolve();
  }

  /** A destination: the image's manifest becomes manifest.json, then the directory replaces the old one. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (!this.#writing) return;
    try {
      const root = this.#tagged ?? this.#lastManifest;
      if (!root) throw new InvalidDirError(this.name, 'nothing was written to it');
      await rename(this.#manifestPath(root.digest), join(this.#dir, 'manifest.json'));
      await replaceFileAtomic(join(this.#dir, 'version'), (fh) => fh.writeFile(VERSION));
      await fsyncDir(this.#dir);
      await DirTarget.#checkReplaceable(this.path);
      const old = `${this.#dir}.old`;
      const hadOld = await rename(this.path, old).then(
        () => true,
        (e: unknown) => {
          if (errno(e) === 'ENOENT') return false;
          throw e;
        },
      );
      await rename(this.#dir, this.path);
      await fsyncDir(dirname(this.path));
      if (hadOld) await rm(old, { recursive: true, force: true });
    } catch (e) {
      await rm(this.#dir, { recursive: true, force: true });
      throw e;
    }
  }

  async discard(): Promise<void> {
    this.#closed = true;
    if (this.#writing) await rm(this.#dir, { recursive: true, force: true });
  }
}
