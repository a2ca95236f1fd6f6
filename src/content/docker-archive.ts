/**
 * docker-archive: the `docker save` format (containers-transports(5)), read as a source:
 *   manifest.json   [{ "Config": "<file>", "RepoTags": ["name:tag", …], "Layers": ["<file>", …] }, …]
 *   <config file>   the Docker image config, whose rootfs.diff_ids name the layers
 *   <layer files>   uncompressed layer tars (`<hex>.tar`, or the legacy `<id>/layer.tar`, which
 *                   may be a symlink to another entry)
 *   repositories    the legacy name -> tag -> layer id map (not needed to read)
 * The archive carries no manifest: one is made, a Docker schema 2 manifest whose layers are the
 * uncompressed tars (`…rootfs.diff.tar`) named by their diff_ids, so every layer is verified
 * against the config when it is read. Entries are extracted, streaming, under generated names
 * into a private directory; symlinks are followed only to other entries of the archive.
 */
import { createWriteStream } from 'node:fs';
import { mkdtemp, open, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, posix, resolve as resolvePath } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { TiuError } from '../errors.ts';
import { sha256 } from '../oci/digest.ts';
import { MediaType } from '../oci/mediatypes.ts';
import { dockerName, parseReference } from '../oci/reference.ts';
import type { Descriptor, Digest } from '../oci/types.ts';
import { MAX_CONFIG_BYTES, parseConfigBytes } from '../oci/validate.ts';
import { detectCompression } from '../layer/decompress.ts';
import { NotFoundError } from './errors.ts';
import { forEachTarEntry } from './tar-entries.ts';
import type { FetchOptions, Target } from './interfaces.ts';

const MAX_TAR_MANIFEST_BYTES = 4 * 1024 * 1024;

export class InvalidDockerArchiveError extends TiuError {
  constructor(path: string, why: string) {
    super('DOCKER_ARCHIVE_INVALID', `${path} is not a usable docker-archive: ${why}`, { path });
  }
}

interface TarManifestItem {
  Config: string;
  RepoTags: string[];
  Layers: string[];
}

/** An entry name inside the archive, normalised; undefined when it would leave the archive. */
function entryName(raw: string): string | undefined {
  const n = posix.normalize(raw.replace(/^\/+/, ''));
  if (n === '.' || n === '..' || n.startsWith('../')) return undefined;
  return n.replace(/\/+$/, '');
}

function parseTarManifest(bytes: Buffer, archive: string): TarManifestItem[] {
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw new InvalidDockerArchiveError(archive, 'manifest.json is not JSON');
  }
  if (!Array.isArray(doc) || doc.length === 0)
    throw new InvalidDockerArchiveError(archive, 'manifest.json must be a non-empty array');
  return doc.map((item: unknown, i) => {
    const it = item as Partial<Record<keyof TarManifestItem, unknown>> | null;
    const strings = (v: unknown) => Array.isArray(v) && v.every((s) => typeof s === 'string');
    if (typeof it?.Config !== 'string' || !strings(it.Layers) || (it.RepoTags != null && !strings(it.RepoTags)))
      throw new InvalidDockerArchiveError(archive, `manifest.json[${i}] needs Config, Layers and RepoTags as strings`);
    return { Config: it.Config, Layers: it.Layers, RepoTags: (it.RepoTags as string[] | null) ?? [] };
  });
}

/** A docker name as the containers tools compare them (docker.io, library/, :latest filled in). */
function normalName(name: string): string | undefined {
  try {
    const ref = parseReference(name);
    if (ref.transport !== 'docker' || ref.digest) return undefined;
    return dockerName({ ...ref, tag: ref.tag ?? 'latest' });
  } catch {
    return undefined;
  }
}

interface Image {
  root: Descriptor;
  manifest: Buffer;
  /** Blob digest -> extracted file. */
  files: Map<string, string>;
}

export class DockerArchiveTarget implements Target {
  readonly name: string;
  readonly path: string;
  readonly #tmp: string;
  readonly #items: TarManifestItem[];
  /** Archive entry name -> extracted file; symlink entry -> its target entry. */
  readonly #entries: Map<string, string>;
  readonly #links: Map<string, string>;
  readonly #images = new Map<number, Image>();
  #closed = false;

  private constructor(
    path: string,
    name: string,
    tmp: string,
    items: TarManifestItem[],
    entries: Map<string, string>,
    links: Map<string, string>,
  ) {
    this.path = path;
    this.name = name;
    this.#tmp = tmp;
    this.#items = items;
    this.#entries = entries;
    this.#links = links;
  }

  static async open(path: string, opts: { name?: string; tmpDir?: string } = {}): Promise<DockerArchiveTarget> {
    const abs = resolvePath(path);
    const name = opts.name ?? `docker-archive:${path}`;
    const st = await stat(abs).catch((e: unknown) => {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError('docker-archive', abs);
      throw e;
    });
    if (!st.isFile()) throw new InvalidDockerArchiveError(abs, 'not a regular file');
    const tmp = await mkdtemp(join(opts.tmpDir ?? tmpdir(), 'tiu-docker-archive-'));
    try {
      const { entries, links } = await extractEntries(abs, tmp);
      const t = new DockerArchiveTarget(abs, name, tmp, [], entries, links);
      const manifestFile = t.#file('manifest.json');
      if (manifestFile === undefined) throw new InvalidDockerArchiveError(abs, 'no manifest.json in it');
      const bytes = await readCapped(manifestFile, MAX_TAR_MANIFEST_BYTES, abs, 'manifest.json');
      t.#items.push(...parseTarManifest(bytes, abs));
      return t;
    } catch (e) {
      await rm(tmp, { recursive: true, force: true });
      throw e;
    }
  }

  /** The extracted file of an entry, following symlinks within the archive (at most 16). */
  #file(name: string): string | undefined {
    let n: string | undefined = entryName(name);
    for (let hops = 0; n !== undefined && hops <= 16; hops++) {
      const f = this.#entries.get(n);
      if (f !== undefined) return f;
      n = this.#links.get(n);
    }
    return undefined;
  }

  #check(): void {
    if (this.#closed) throw new TiuError('TARGET_CLOSED', `${this.name} is closed`);
  }

  /** The manifest made for item `i`: its config as is, its layers uncompressed, named by diff_id. */
  async #image(i: number): Promise<Image> {
    const cached = this.#images.get(i);
    if (cached) return cached;
    const item = this.#items[i]!;
    const configFile = this.#file(item.Config);
    if (configFile === undefined) throw new InvalidDockerArchiveError(this.path, `config ${item.Config} is missing`);
    const configBytes = await readCapped(configFile, MAX_CONFIG_BYTES, this.path, item.Config);
    const config = parseConfigBytes(configBytes);
    const diffIds = config.rootfs.diff_ids;
    if (diffIds.length !== item.Layers.length)
      throw new InvalidDockerArchiveError(
        this.path,
        `${item.Layers.length} layers in manifest.json but ${diffIds.length} diff_ids in ${item.Config}`,
      );
    const files = new Map<string, string>();
    const configDesc: Descriptor = {
      mediaType: MediaType.DockerConfig,
      digest: sha256(configBytes),
      size: configBytes.length,
    };
    files.set(configDesc.digest, configFile);
    const layers: Descriptor[] = [];
    for (const [j, layerName] of item.Layers.entries()) {
      const file = this.#file(layerName);
      if (file === undefined) throw new InvalidDockerArchiveError(this.path, `layer ${layerName} is missing`);
      await refuseCompressed(file, this.path, layerName);
      const digest: Digest = diffIds[j]!;
      files.set(digest, file);
      layers.push({ mediaType: MediaType.DockerLayerTar, digest, size: (await stat(file)).size });
    }
    const manifest = Buffer.from(
      JSON.stringify({ schemaVersion: 2, mediaType: MediaType.DockerManifest, config: configDesc, layers }),
    );
    const root: Descriptor = { mediaType: MediaType.DockerManifest, digest: sha256(manifest), size: manifest.length };
    const image = { root, manifest, files };
    this.#images.set(i, image);
    return image;
  }

  async fetch(desc: Descriptor, _opts?: FetchOptions): Promise<Readable> {
    this.#check();
    for (let i = 0; i < this.#items.length; i++) {
      const image = await this.#image(i);
      if (image.root.digest === desc.digest) return Readable.from([image.manifest]);
      const file = image.files.get(desc.digest);
      if (file !== undefined) return (await open(file, 'r')).createReadStream();
    }
    throw new NotFoundError(`blob ${desc.digest}`, this.name);
  }

  async exists(desc: Descriptor, opts?: FetchOptions): Promise<boolean> {
    try {
      (await this.fetch(desc, opts)).destroy();
      return true;
    } catch (e) {
      if (e instanceof NotFoundError) return false;
      throw e;
    }
  }

  /** A name among the items' RepoTags (docker-normalised), or the manifest digest of one. */
  async resolve(reference: string, _opts?: FetchOptions): Promise<Descriptor> {
    this.#check();
    const wanted = normalName(reference);
    for (let i = 0; i < this.#items.length; i++) {
      const image = await this.#image(i);
      if (reference === image.root.digest) return image.root;
      if (wanted !== undefined && this.#items[i]!.RepoTags.some((t) => normalName(t) === wanted)) return image.root;
    }
    throw new NotFoundError(`image ${JSON.stringify(reference)}`, this.name);
  }

  async resolveDefault(_opts?: FetchOptions): Promise<Descriptor> {
    this.#check();
    if (this.#items.length !== 1)
      throw new TiuError(
        'REFERENCE_AMBIGUOUS',
        `${this.name} holds ${this.#items.length} images; name one with :NAME:TAG`,
        { where: this.name, count: this.#items.length },
      );
    return (await this.#image(0)).root;
  }

  push(_desc: Descriptor, content: Readable): Promise<void> {
    content.destroy();
    return Promise.reject(new TiuError('INTERNAL', `${this.name} is read only`));
  }

  tag(): Promise<void> {
    return Promise.reject(new TiuError('INTERNAL', `${this.name} is read only`));
  }

  async close(): Promise<void> {
    this.#closed = true;
    await rm(this.#tmp, { recursive: true, force: true });
  }
}

async function readCapped(file: string, limit: number, archive: string, what: string): Promise<Buffer> {
  if ((await stat(file)).size > limit)
    throw new InvalidDockerArchiveError(archive, `${what} is larger than ${limit} bytes`);
  return readFile(file);
}

async function refuseCompressed(file: string, archive: string, what: string): Promise<void> {
  const fh = await open(file, 'r');
  try {
    const head = Buffer.alloc(6);
    const { bytesRead } = await fh.read(head, 0, 6, 0);
    // docker save writes layers uncompressed; the manifest made here says so.
    if (detectCompression(head.subarray(0, bytesRead)) !== 'none')
      throw new InvalidDockerArchiveError(
        archive,
        `layer ${what} is compressed; tiu reads docker save's uncompressed layers`,
      );
  } finally {
    await fh.close();
  }
}

/** Every regular file of the archive under a generated name in `dir`; symlinks as name -> target entry. */
async function extractEntries(
  archive: string,
  dir: string,
): Promise<{ entries: Map<string, string>; links: Map<string, string> }> {
  const entries = new Map<string, string>();
  const links = new Map<string, string>();
  await forEachTarEntry(
    archive,
    async (entry) => {
      const h = entry.header;
      const name = entryName(h.name);
      if (name === undefined)
        throw new InvalidDockerArchiveError(
          archive,
          `entry ${JSON.stringify(h.name.slice(0, 200))} leaves the archive`,
        );
      if (entries.has(name) || links.has(name)) throw new InvalidDockerArchiveError(archive, `${name} appears twice`);
      if (h.type === 'symlink' && h.linkname) {
        const target = entryName(posix.join(posix.dirname(name), h.linkname));
        if (target !== undefined) links.set(name, target);
        entry.resume();
      } else if (h.type === 'file' || h.type === 'contiguous-file') {
        const file = join(dir, `e${entries.size}`);
        await pipeline(entry, createWriteStream(file, { flags: 'wx', mode: 0o600 }));
        entries.set(name, file);
      } else {
        entry.resume();
      }
    },
    (why) => new InvalidDockerArchiveError(archive, why),
  );
  return { entries, links };
}
