/**
 * docker-archive: as a destination: one image in the `docker save` layout that `docker load` and
 * skopeo read, written as containers/image writes it (minus the legacy per-layer directories
 * and `repositories`, which neither needs):
 *   manifest.json   [{ "Config": "<hex>.json", "RepoTags": ["name:tag"], "Layers": ["<diff_id hex>.tar", …] }]
 *   <hex>.json      the config, as it is
 *   <hex>.tar       each layer uncompressed (the format has no compressed layers), named by its
 *                   diff_id, which must be the config's
 * Blobs are verified as they arrive, layers decompressed into a private directory; close()
 * packs the tar beside the destination and renames it over it.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, rename, rm, stat, unlink } from 'node:fs/promises';
import { dirname, join, resolve as resolvePath } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { TiuError } from '../errors.ts';
import { parseDigest, verifiedStream } from '../oci/digest.ts';
import { isIndexType, isManifestLike, MAX_MANIFEST_BYTES } from '../oci/mediatypes.ts';
import type { Descriptor, Digest } from '../oci/types.ts';
import {
  isImageConfigType,
  MAX_CONFIG_BYTES,
  parseConfigBytes,
  parseManifestBytes,
  readAllCapped,
} from '../oci/validate.ts';
import { decompressStream } from '../layer/decompress.ts';
import { fsyncDir, fsyncFile, tempNameFor } from '../util/atomic.ts';
import { InvalidDockerArchiveError } from './docker-archive.ts';
import { NotFoundError } from './errors.ts';
import type { FetchOptions, PushOptions, Target } from './interfaces.ts';

export class DockerArchiveWriter implements Target {
  readonly name: string;
  readonly path: string;
  readonly #tmp: string;
  /** `name:tag` for RepoTags (from the reference), none when it names no image. */
  readonly #repoTag: string | undefined;
  readonly #manifests = new Map<string, Buffer>();
  readonly #configs = new Map<string, string>();
  /** Layer blob digest -> its diff_id (the file `<hex>.tar` in #tmp). */
  readonly #layers = new Map<string, Digest>();
  #root: Descriptor | undefined;
  #closed = false;

  private constructor(path: string, name: string, tmp: string, repoTag: string | undefined) {
    this.path = path;
    this.name = name;
    this.#tmp = tmp;
    this.#repoTag = repoTag;
  }

  static async open(
    path: string,
    opts: { name?: string; repoTag?: string; tmpDir?: string } = {},
  ): Promise<DockerArchiveWriter> {
    const abs = resolvePath(path);
    const st = await stat(abs).catch(() => undefined);
    if (st && !st.isFile()) throw new InvalidDockerArchiveError(abs, 'not a regular file');
    const tmp = await mkdtemp(join(opts.tmpDir ?? dirname(abs), '.tiu-docker-archive-'));
    return new DockerArchiveWriter(abs, opts.name ?? `docker-archive:${path}`, tmp, opts.repoTag);
  }

  #check(): void {
    if (this.#closed) throw new TiuError('TARGET_CLOSED', `${this.name} is closed`);
  }

  fetch(desc: Descriptor, _opts?: FetchOptions): Promise<Readable> {
    return Promise.reject(new NotFoundError(`blob ${desc.digest}`, this.name));
  }

  exists(desc: Descriptor, _opts?: FetchOptions): Promise<boolean> {
    this.#check();
    const d = desc.digest;
    return Promise.resolve(this.#manifests.has(d) || this.#configs.has(d) || this.#layers.has(d));
  }

  resolve(reference: string): Promise<Descriptor> {
    return Promise.reject(new NotFoundError(`image ${JSON.stringify(reference)}`, this.name));
  }

  async push(desc: Descriptor, content: Readable, opts?: PushOptions): Promise<void> {
    this.#check();
    const verified = verifiedStream(content, desc, 'blob');
    if (isManifestLike(desc.mediaType)) {
      this.#manifests.set(desc.digest, await readAllCapped(verified, MAX_MANIFEST_BYTES, `manifest ${desc.digest}`));
      this.#root = desc;
      return;
    }
    if (isImageConfigType(desc.mediaType)) {
      const bytes = await readAllCapped(verified, MAX_CONFIG_BYTES, `config ${desc.digest}`);
      const file = join(this.#tmp, `${parseDigest(desc.digest).hex}.json`);
      await pipeline(Readable.from([bytes]), createWriteStream(file));
      this.#configs.set(desc.digest, file);
      return;
    }
    // A layer: stored uncompressed, named by the digest of what it decompresses to.
    const counted = new PassThrough();
    counted.on('data', (b: Buffer) => opts?.onBytes?.(b.length));
    const feeding = pipeline(verified, counted);
    feeding.catch(() => undefined); // awaited below; a failure of the decompressor may come first
    const { stream, done } = await decompressStream(counted);
    const hash = createHash('sha256');
    const partial = join(this.#tmp, `partial-${this.#layers.size}-${Date.now()}`);
    try {
      await pipeline(
        stream,
        async function* (source: AsyncIterable<Buffer>) {
          for await (const chunk of source) {
            hash.update(chunk);
            yield chunk;
          }
        },
        createWriteStream(partial, { flags: 'wx' }),
      );
      await Promise.all([feeding, done]);
    } catch (e) {
      await unlink(partial).catch(() => undefined);
      throw e;
    }
    const diffId: Digest = `sha256:${hash.digest('hex')}`;
    await rename(partial, join(this.#tmp, `${parseDigest(diffId).hex}.tar`));
    this.#layers.set(desc.digest, diffId);
  }

  /** The image to write is the one copy names last; the file's name comes from the reference. */
  tag(desc: Descriptor, _reference: string): Promise<void> {
    this.#check();
    this.#root = desc;
    return Promise.resolve();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      await this.#write();
    } finally {
      await rm(this.#tmp, { recursive: true, force: true });
    }
  }

  async discard(): Promise<void> {
    this.#closed = true;
    await rm(this.#tmp, { recursive: true, force: true });
  }

  async #write(): Promise<void> {
    const root = this.#root;
    const bytes = root && this.#manifests.get(root.digest);
    if (!root || !bytes) throw new InvalidDockerArchiveError(this.path, 'no image was written to it');
    if (isIndexType(root.mediaType))
      throw new InvalidDockerArchiveError(this.path, `${root.digest} is an index; copy one platform's manifest`);
    const manifest = parseManifestBytes(bytes, root.mediaType);
    const configFile = this.#configs.get(manifest.config.digest);
    if (!configFile) throw new InvalidDockerArchiveError(this.path, `config ${manifest.config.digest} was not written`);
    const config = parseConfigBytes(await readAllCapped(createReadStream(configFile), MAX_CONFIG_BYTES, 'config'));
    const diffIds = manifest.layers.map((l) => this.#layers.get(l.digest));
    const want = config.rootfs.diff_ids;
    if (diffIds.length !== want.length || diffIds.some((d, i) => d !== want[i]))
      throw new InvalidDockerArchiveError(
        this.path,
        `its layers decompress to ${diffIds.join(', ')} but the config's diff_ids are ${want.join(', ')}`,
      );
    const layerNames = want.map((d) => `${parseDigest(d).hex}.tar`);
    const configName = `${parseDigest(manifest.config.digest).hex}.json`;
    const item = { Config: configName, RepoTags: this.#repoTag ? [this.#repoTag] : [], Layers: layerNames };
    const files = [configName, ...new Set(layerNames)];

    const tmpTar = tempNameFor(this.path);
    const pack = tar.pack();
    const writing = pipeline(pack, createWriteStream(tmpTar, { flags: 'wx', mode: 0o644 }));
    try {
      const mtime = new Date(0);
      pack.entry({ name: 'manifest.json', mtime }, Buffer.from(JSON.stringify([item])));
      for (const name of files) {
        const file = join(this.#tmp, name);
        const size = (await stat(file)).size;
        const entry = pack.entry({ name, size, mtime });
        await pipeline(createReadStream(file), entry);
      }
      pack.finalize();
      await writing;
      await fsyncFile(tmpTar);
      await rename(tmpTar, this.path);
      await fsyncDir(dirname(this.path));
    } catch (e) {
      pack.destroy();
      await writing.catch(() => undefined);
      await unlink(tmpTar).catch(() => undefined);
      throw e;
    }
  }
}
