/**
 * oci-archive: an OCI image layout in a tar file (containers-transports(5)).
 *
 * Reading extracts the tar into a private temporary layout, streaming (memory stays bounded
 * whatever the blob sizes), accepting only the layout's own files: `oci-layout`, `index.json`,
 * `blobs/<alg>/<hex>` as regular files; links, devices and paths outside the layout are
 * refused. Writing goes to that temporary layout; close() packs it into a tar written next to
 * the destination and renamed over it (atomic), then removes the temporary layout.
 * Blob content is not trusted because it came from a tar: every consumer verifies it by digest.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, readdir, rename, rm, stat, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve as resolvePath } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { TiuError } from '../errors.ts';
import { isDigest } from '../oci/digest.ts';
import type { Descriptor } from '../oci/types.ts';
import { fsyncDir, fsyncFile, tempNameFor } from '../util/atomic.ts';
import { NotFoundError } from './errors.ts';
import type { FetchOptions, PushOptions, Target } from './interfaces.ts';
import { OciLayoutTarget } from './oci-layout.ts';
import { forEachTarEntry } from './tar-entries.ts';

export class InvalidArchiveError extends TiuError {
  constructor(path: string, why: string) {
    super('ARCHIVE_INVALID', `${path} is not a usable oci-archive: ${why}`, { path });
  }
}

export interface ArchiveOptions {
  /** Start a new archive when the file does not exist (for destinations). */
  create?: boolean;
  name?: string;
  /** Where the temporary layout goes (default: $TMPDIR). */
  tmpDir?: string;
}

/** mtime of every entry tiu writes, for reproducible archives. */
function archiveTime(): Date {
  const epoch = Number(process.env.SOURCE_DATE_EPOCH);
  return new Date(Number.isFinite(epoch) && epoch >= 0 ? epoch * 1000 : 0);
}

function errno(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code;
}

/** A tar entry name inside a layout, normalised; undefined for names tiu ignores. Throws for hostile ones. */
function layoutEntryName(raw: string, archive: string): string | undefined {
  let name = raw.replace(/^(\.\/)+/, '');
  if (name.endsWith('/')) name = name.slice(0, -1);
  if (name === '' || name === '.') return undefined;
  const parts = name.split('/');
  if (name.startsWith('/') || parts.some((p) => p === '..' || p === '' || p === '.')) {
    throw new InvalidArchiveError(archive, `entry ${JSON.stringify(raw.slice(0, 200))} leaves the layout`);
  }
  return name;
}

export class OciArchiveTarget implements Target {
  readonly name: string;
  readonly path: string;
  readonly #layout: OciLayoutTarget;
  readonly #tmp: string;
  #dirty = false;
  #closed = false;

  private constructor(path: string, name: string, layout: OciLayoutTarget, tmp: string) {
    this.path = path;
    this.name = name;
    this.#layout = layout;
    this.#tmp = tmp;
  }

  static async open(path: string, opts: ArchiveOptions = {}): Promise<OciArchiveTarget> {
    const abs = resolvePath(path);
    const name = opts.name ?? `oci-archive:${path}`;
    let exists = true;
    try {
      const st = await stat(abs);
      if (!st.isFile()) throw new InvalidArchiveError(abs, 'not a regular file');
    } catch (e) {
      if (errno(e) !== 'ENOENT') throw e;
      exists = false;
    }
    if (!exists && !opts.create) throw new NotFoundError('oci-archive', abs);
    const tmp = await mkdtemp(join(opts.tmpDir ?? tmpdir(), 'tiu-archive-'));
    try {
      const layoutDir = join(tmp, 'layout');
      if (exists) await extractLayout(abs, layoutDir);
      const layout = await OciLayoutTarget.open(layoutDir, { create: !exists, name });
      const t = new OciArchiveTarget(abs, name, layout, tmp);
      if (!exists) t.#dirty = true;
      return t;
    } catch (e) {
      await rm(tmp, { recursive: true, force: true });
      if (exists && e instanceof TiuError && e.code === 'CONTENT_NOT_FOUND')
        throw new InvalidArchiveError(abs, 'no oci-layout file in it');
      throw e;
    }
  }

  #open(): void {
    if (this.#closed) throw new TiuError('TARGET_CLOSED', `${this.name} is closed`);
  }

  fetch(desc: Descriptor, opts?: FetchOptions): Promise<Readable> {
    this.#open();
    return this.#layout.fetch(desc, opts);
  }
  fetchRange(desc: Descriptor, start: number, end: number, opts?: FetchOptions): Promise<Readable> {
    this.#open();
    return this.#layout.fetchRange(desc, start, end, opts);
  }
  exists(desc: Descriptor, opts?: FetchOptions): Promise<boolean> {
    this.#open();
    return this.#layout.exists(desc, opts);
  }
  async push(desc: Descriptor, content: Readable, opts?: PushOptions): Promise<void> {
    this.#open();
    this.#dirty = true;
    await this.#layout.push(desc, content, opts);
  }
  resolve(reference: string, opts?: FetchOptions): Promise<Descriptor> {
    this.#open();
    return this.#layout.resolve(reference, opts);
  }
  resolveDefault(opts?: FetchOptions): Promise<Descriptor> {
    this.#open();
    return this.#layout.resolveDefault(opts);
  }
  async tag(desc: Descriptor, reference: string, opts?: FetchOptions): Promise<void> {
    this.#open();
    this.#dirty = true;
    await this.#layout.tag(desc, reference, opts);
  }
  referrers(desc: Descriptor, artifactType?: string, opts?: FetchOptions): Promise<Descriptor[]> {
    this.#open();
    return this.#layout.referrers(desc, artifactType, opts);
  }
  tags(opts?: FetchOptions): Promise<string[]> {
    this.#open();
    return this.#layout.tags(opts);
  }

  /** Write the archive (when anything changed) and remove the temporary layout. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      if (this.#dirty) await packLayout(join(this.#tmp, 'layout'), this.path);
    } finally {
      await rm(this.#tmp, { recursive: true, force: true });
    }
  }

  /** Drop the temporary layout without writing anything (after a failed copy). */
  async discard(): Promise<void> {
    this.#closed = true;
    await rm(this.#tmp, { recursive: true, force: true });
  }
}

/** Extract the layout files of an archive into `dir`, streaming. */
export async function extractLayout(archive: string, dir: string): Promise<void> {
  await mkdir(join(dir, 'blobs'), { recursive: true });
  await forEachTarEntry(
    archive,
    async (entry) => {
      const h = entry.header;
      const name = layoutEntryName(h.name, archive);
      const parts = name?.split('/') ?? [];
      const known =
        name === 'oci-layout' ||
        name === 'index.json' ||
        name === 'blobs' ||
        (parts.length === 2 && parts[0] === 'blobs') ||
        (parts.length === 3 && parts[0] === 'blobs' && isDigest(`${parts[1]}:${parts[2]}`));
      if (name === undefined || !known) {
        entry.resume();
        return;
      }
      if (h.type === 'directory') {
        if (parts.length === 3) throw new InvalidArchiveError(archive, `${name} is a directory`);
        await mkdir(join(dir, name), { recursive: true });
        entry.resume();
        return;
      }
      if (h.type !== 'file' && h.type !== 'contiguous-file') {
        throw new InvalidArchiveError(archive, `${name} is a ${h.type ?? 'special file'}, not a regular file`);
      }
      if (parts.length === 2) throw new InvalidArchiveError(archive, `${name} is a file where a directory belongs`);
      const target = join(dir, name);
      await mkdir(dirname(target), { recursive: true });
      await pipeline(entry, createWriteStream(target, { flags: 'wx', mode: 0o644 })).catch((e: unknown) => {
        if (errno(e) === 'EEXIST') throw new InvalidArchiveError(archive, `${name} appears twice`);
        throw e;
      });
    },
    (why) => new InvalidArchiveError(archive, why),
  );
}

/** Pack the layout in `dir` into the tar `archive`, atomically (temp + fsync + rename). */
export async function packLayout(dir: string, archive: string): Promise<void> {
  const mtime = archiveTime();
  const tmp = tempNameFor(archive);
  const pack = tar.pack();
  const writing = pipeline(pack, createWriteStream(tmp, { flags: 'wx', mode: 0o644 }));
  try {
    const dirEntry = (name: string) =>
      new Promise<void>((res, rej) =>
        pack.entry({ name, type: 'directory', mode: 0o755, mtime, uid: 0, gid: 0 }, (e) => (e ? rej(e) : res())),
      );
    const fileEntry = async (name: string, path: string) => {
      const size = (await stat(path)).size;
      await new Promise<void>((res, rej) => {
        const sink = pack.entry({ name, type: 'file', size, mode: 0o644, mtime, uid: 0, gid: 0 }, (e) =>
          e ? rej(e) : res(),
        );
        const src = createReadStream(path);
        src.on('error', (e) => {
          sink.destroy(e);
          rej(e);
        });
        src.pipe(sink);
      });
    };
    await fileEntry('oci-layout', join(dir, 'oci-layout'));
    await fileEntry('index.json', join(dir, 'index.json'));
    await dirEntry('blobs');
    const algs = (await readdir(join(dir, 'blobs'))).filter((a) => !a.startsWith('.')).sort();
    for (const alg of algs) {
      await dirEntry(`blobs/${alg}`);
      const blobs = (await readdir(join(dir, 'blobs', alg))).filter((b) => isDigest(`${alg}:${b}`)).sort();
      for (const b of blobs) await fileEntry(`blobs/${alg}/${b}`, join(dir, 'blobs', alg, b));
    }
    pack.finalize();
    await writing;
    await fsyncFile(tmp);
    await rename(tmp, archive);
    await fsyncDir(dirname(archive));
  } catch (e) {
    pack.destroy();
    await writing.catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    throw e;
  }
}
