/**
 * The registry as a Target (DESIGN.md §2) for one repository: pulls go through the
 * registries.conf mirrors in order and then the primary (sticking to the endpoint that
 * answered); pushes, tags and deletes go to the primary only. Referrers use the API where the
 * registry has it, else the `sha256-<hex>` tag-schema index, which pushes keep up to date.
 */
import { Readable } from 'node:stream';
import { TiuError, type ErrorCode } from '../../errors.ts';
import { NotFoundError } from '../../content/errors.ts';
import { readerStream, type BlobReader } from '../../content/blob-reader.ts';
import type { FetchOptions, PushOptions, Target } from '../../content/interfaces.ts';
import { Semaphore } from '../../util/semaphore.ts';
import { isDigest, parseDigest, TrailingDataError, verifyBuffer } from '../../oci/digest.ts';
import { isIndexType, isManifestLike, MAX_MANIFEST_BYTES, MediaType } from '../../oci/mediatypes.ts';
import type { DockerReference } from '../../oci/reference.ts';
import type { Descriptor, ImageIndex } from '../../oci/types.ts';
import { ManifestTooLargeError, parseIndexBytes, parseManifestOrIndex, readAllCapped } from '../../oci/validate.ts';
import { RepositoryClient, type ClientTuning } from './client.ts';
import { loadRegistriesConf, pullEndpoints, pushEndpoint, emptyRegistriesConf, type Endpoint, type RegistriesConf } from './registries-conf.ts';
import { RegistrySession, type SessionOptions } from './session.ts';

export interface RegistryClientOptions extends SessionOptions, ClientTuning {
  /** registries.conf: parsed, a file path, or false for none. Default: the system's files. */
  registriesConf?: RegistriesConf | string | false;
  /** Drop-in directory when registriesConf is a path; default `<path>.d`. */
  registriesConfDir?: string;
  /** Share HTTP connections, tokens and pings between targets. */
  session?: RegistrySession;
  /** Blob uploads running at once in this target. Default 4. */
  maxParallelUploads?: number;
}

/** The registries.conf `opts` select: parsed, read from a path, none, or the files containers/image reads. */
export function registriesConfOf(opts: Pick<RegistryClientOptions, 'registriesConf' | 'registriesConfDir'>): RegistriesConf {
  const rc = opts.registriesConf;
  if (rc === false) return emptyRegistriesConf();
  if (typeof rc === 'object') return rc;
  return loadRegistriesConf({ ...(rc ? { file: rc } : {}), ...(opts.registriesConfDir ? { dropInDir: opts.registriesConfDir } : {}) });
}

/** Errors after which the next pull endpoint (a mirror, then the primary) is tried. */
const FAILOVER: ReadonlySet<ErrorCode> = new Set([
  'CONTENT_NOT_FOUND', 'REGISTRY_UNREACHABLE', 'REGISTRY_TIMEOUT', 'TLS_ERROR', 'REGISTRY_UNAVAILABLE', 'REGISTRY_TOO_MANY_REQUESTS',
  'REGISTRY_UNAUTHORIZED', 'REGISTRY_DENIED', 'REGISTRY_ERROR', 'REGISTRY_BAD_RESPONSE', 'DIGEST_MISMATCH', 'SIZE_MISMATCH', 'MANIFEST_TOO_LARGE', 'REGISTRY_TOO_SLOW',
]);

/** Where a blob was last seen on a registry, for cross-repository mounts: registry -> digest -> repository. */
const seenBlobs = new Map<string, Map<string, string>>();
function rememberBlob(registry: string, digest: string, repository: string): void {
  let m = seenBlobs.get(registry);
  if (!m) {
    m = new Map<string, string>();
    seenBlobs.set(registry, m);
  }
  m.delete(digest);
  m.set(digest, repository);
  if (m.size > 10_000) m.delete(m.keys().next().value!);
}

/** The config and layers of a manifest live in the repository it came from: mount candidates. */
function rememberChildren(c: RepositoryClient, bytes: Buffer): void {
  try {
    const m = JSON.parse(bytes.toString('utf8')) as { config?: { digest?: unknown }; layers?: { digest?: unknown }[] };
    for (const d of [m.config, ...(Array.isArray(m.layers) ? m.layers : [])]) {
      if (d && typeof d.digest === 'string' && isDigest(d.digest)) rememberBlob(c.registry, d.digest, c.repository);
    }
  } catch {
    /* not JSON: the caller's checks will say so */
  }
}

/** The tag-schema fallback tag for referrers of `digest`: `<alg>-<hex>`. */
export function fallbackTag(digest: string): string {
  const { algorithm, hex } = parseDigest(digest);
  return `${algorithm}-${hex}`.slice(0, 128);
}

/** The descriptor of `manifest` (bytes) as an entry of a referrers index. */
function referrerEntry(desc: Descriptor, m: { artifactType?: unknown; config?: { mediaType?: unknown }; annotations?: unknown }): Descriptor {
  const e: Descriptor = { mediaType: desc.mediaType, digest: desc.digest, size: desc.size };
  const at = typeof m.artifactType === 'string' ? m.artifactType : typeof m.config?.mediaType === 'string' ? m.config.mediaType : undefined;
  if (at) e.artifactType = at;
  if (m.annotations && typeof m.annotations === 'object') e.annotations = m.annotations as Record<string, string>;
  return e;
}

export class RegistryTarget implements Target {
  readonly name: string;
  readonly ref: DockerReference;
  readonly #conf: RegistriesConf;
  readonly #session: RegistrySession;
  readonly #ownSession: boolean;
  readonly #tuning: ClientTuning;
  readonly #clients = new Map<string, RepositoryClient>();
  readonly #primary: RepositoryClient;
  #sticky: RepositoryClient | undefined;
  readonly #manifests = new Map<string, Buffer>();
  readonly #locks = new Map<string, Promise<unknown>>();
  readonly #uploads: Semaphore;

  constructor(ref: DockerReference, opts: RegistryClientOptions = {}) {
    this.ref = ref;
    this.name = `docker://${ref.registry}/${ref.repository}`;
    this.#conf = registriesConfOf(opts);
    this.#ownSession = !opts.session;
    this.#session = opts.session ?? new RegistrySession(opts);
    this.#tuning = opts;
    this.#uploads = new Semaphore(opts.maxParallelUploads ?? 4);
    // Both throw REGISTRY_BLOCKED now rather than at first use.
    pullEndpoints(this.#conf, ref);
    this.#primary = this.#client(pushEndpoint(this.#conf, ref));
  }

  /** The client of the primary location (after registries.conf rewriting). */
  get primary(): RepositoryClient {
    return this.#primary;
  }

  /** The endpoint that served the last pull (a mirror or the primary). */
  get lastPullEndpoint(): string | undefined {
    return this.#sticky?.name;
  }

  #client(ep: Endpoint): RepositoryClient {
    const key = `${ep.registry}/${ep.repository}`;
    let c = this.#clients.get(key);
    if (!c) {
      c = new RepositoryClient(this.#session, ep.registry, ep.repository, ep.insecure, this.#tuning);
      this.#clients.set(key, c);
    }
    return c;
  }

  #pullClients(reference: string | undefined): RepositoryClient[] {
    const r: DockerReference = { transport: 'docker', registry: this.ref.registry, repository: this.ref.repository };
    if (reference && isDigest(reference)) r.digest = reference;
    else r.tag = reference ?? this.ref.tag ?? 'latest';
    const list = pullEndpoints(this.#conf, r).map((e) => this.#client(e));
    if (this.#sticky && list.includes(this.#sticky)) return [this.#sticky, ...list.filter((c) => c !== this.#sticky)];
    return list;
  }

  async #tryPull<T>(reference: string | undefined, fn: (c: RepositoryClient) => Promise<T>): Promise<T> {
    const clients = this.#pullClients(reference);
    let last: unknown;
    for (const c of clients) {
      try {
        const v = await fn(c);
        this.#sticky = c;
        return v;
      } catch (e) {
        last = e;
        if (clients.length === 1 || !(e instanceof TiuError) || !FAILOVER.has(e.code)) throw e;
      }
    }
    throw last;
  }

  #checkReference(reference: string): void {
    if (!isDigest(reference) && !/^[\w][\w.-]{0,127}$/.test(reference)) {
      throw new TiuError('REFERENCE_INVALID', `${JSON.stringify(reference)} is neither a tag nor a digest`, { reference });
    }
  }

  async resolve(reference: string, opts: FetchOptions = {}): Promise<Descriptor> {
    this.#checkReference(reference);
    return this.#tryPull(reference, async (c) => {
      const d = await c.headManifest(reference, opts.signal);
      if (!d) throw new NotFoundError(`manifest ${reference}`, c.name);
      return d;
    });
  }

  #cache(digest: string, bytes: Buffer): void {
    this.#manifests.delete(digest);
    this.#manifests.set(digest, bytes);
    if (this.#manifests.size > 64) this.#manifests.delete(this.#manifests.keys().next().value!);
  }

  async #manifestBytes(desc: Descriptor, signal?: AbortSignal): Promise<Buffer> {
    if (desc.size > MAX_MANIFEST_BYTES) throw new ManifestTooLargeError(desc.size, MAX_MANIFEST_BYTES);
    let bytes = this.#manifests.get(desc.digest);
    if (!bytes) {
      let from: RepositoryClient | undefined;
      bytes = (
        await this.#tryPull(desc.digest, (c) => {
          from = c;
          return c.getManifest(desc.digest, signal);
        })
      ).bytes;
      this.#cache(desc.digest, bytes);
      if (from) rememberChildren(from, bytes);
    }
    verifyBuffer(desc, bytes, `manifest ${desc.digest} from ${this.name}`);
    return bytes;
  }

  async fetch(desc: Descriptor, opts: FetchOptions = {}): Promise<Readable> {
    if (isManifestLike(desc.mediaType)) return Readable.from([await this.#manifestBytes(desc, opts.signal)]);
    return this.#tryPull(desc.digest, async (c) => {
      const s = await c.fetchBlob(desc, opts.signal);
      rememberBlob(c.registry, desc.digest, c.repository);
      return s;
    });
  }

  async fetchRange(desc: Descriptor, start: number, end: number, opts: FetchOptions = {}): Promise<Readable> {
    return this.#tryPull(desc.digest, (c) => c.fetchRange(desc, start, end, opts.signal));
  }

  /** A blob read into the consumer's buffers (no Buffer per socket read); unverified, like fetch(). */
  async openBlob(desc: Descriptor, opts: FetchOptions = {}): Promise<BlobReader> {
    return this.#tryPull(desc.digest, async (c) => {
      const r = await c.openBlob(desc, opts.signal);
      rememberBlob(c.registry, desc.digest, c.repository);
      return r;
    });
  }

  async openRange(desc: Descriptor, start: number, end: number, opts: FetchOptions = {}): Promise<BlobReader> {
    return this.#tryPull(desc.digest, (c) => c.openRange(desc, start, end, opts.signal));
  }

  /**
   * Whether the primary has `desc`. A blob it lacks but that tiu saw in another repository of
   * the same registry is mounted from there (and then it has it).
   */
  async exists(desc: Descriptor, opts: FetchOptions = {}): Promise<boolean> {
    const p = this.#primary;
    if (isManifestLike(desc.mediaType)) {
      try {
        return (await p.headManifest(desc.digest, opts.signal)) !== undefined;
      } catch (e) {
        if (e instanceof TiuError && e.code === 'CONTENT_NOT_FOUND') return false;
        throw e;
      }
    }
    if (await p.blobExists(desc, opts.signal)) {
      rememberBlob(p.registry, desc.digest, p.repository);
      return true;
    }
    const from = seenBlobs.get(p.registry)?.get(desc.digest);
    if (from && from !== p.repository) {
      const r = await p.mountBlob(desc, from, opts.signal);
      if (r === true) {
        rememberBlob(p.registry, desc.digest, p.repository);
        return true;
      }
      if (r instanceof URL) await p.cancelUpload(r);
    }
    return false;
  }

  async push(desc: Descriptor, content: Readable, opts: PushOptions = {}): Promise<void> {
    const p = this.#primary;
    if (isManifestLike(desc.mediaType)) {
      if (desc.size > MAX_MANIFEST_BYTES) {
        content.destroy();
        throw new ManifestTooLargeError(desc.size, MAX_MANIFEST_BYTES);
      }
      const bytes = await readAllCapped(content, desc.size, `manifest ${desc.digest}`, () => new TrailingDataError(desc.digest, desc.size));
      verifyBuffer(desc, bytes, `manifest ${desc.digest}`);
      const parsed = parseManifestOrIndex(bytes, desc.mediaType);
      const doc = parsed.kind === 'manifest' ? parsed.manifest : parsed.index;
      const r = await p.putManifest(desc.digest, bytes, desc.mediaType, opts.signal);
      this.#cache(desc.digest, bytes);
      opts.onBytes?.(bytes.length);
      if (doc.subject && typeof doc.subject.digest === 'string' && !r.subjectHandled) {
        await this.#updateFallback(doc.subject.digest, (list) => {
          if (list.some((d) => d.digest === desc.digest)) return undefined;
          return [...list, referrerEntry(desc, doc)];
        }, opts.signal);
      }
      return;
    }
    await this.#uploads.run(() =>
      p.pushBlob(desc, content, { ...(opts.signal ? { signal: opts.signal } : {}), ...(opts.onBytes ? { onBytes: opts.onBytes } : {}), ...(opts.reopen ? { reopen: opts.reopen } : {}) }),
    );
    rememberBlob(p.registry, desc.digest, p.repository);
  }

  /** A blob from a reader (an `oci:` layout's file) through the upload's own buffers (RepositoryClient.pushBlobFrom). */
  async pushFrom(desc: Descriptor, open: () => Promise<BlobReader>, opts: PushOptions = {}): Promise<void> {
    if (isManifestLike(desc.mediaType)) return this.push(desc, readerStream(await open()), opts);
    const p = this.#primary;
    await this.#uploads.run(() =>
      p.pushBlobFrom(desc, open, { ...(opts.signal ? { signal: opts.signal } : {}), ...(opts.onBytes ? { onBytes: opts.onBytes } : {}) }),
    );
    rememberBlob(p.registry, desc.digest, p.repository);
  }

  async tag(desc: Descriptor, reference: string, opts: FetchOptions = {}): Promise<void> {
    this.#checkReference(reference);
    if (isDigest(reference)) {
      if (reference !== desc.digest) throw new TiuError('REFERENCE_INVALID', `can't tag ${desc.digest} as another digest ${reference}`);
      return;
    }
    let bytes = this.#manifests.get(desc.digest);
    if (!bytes) {
      bytes = (await this.#primary.getManifest(desc.digest, opts.signal)).bytes;
      this.#cache(desc.digest, bytes);
    }
    verifyBuffer(desc, bytes, `manifest ${desc.digest}`);
    await this.#primary.putManifest(reference, bytes, desc.mediaType, opts.signal);
  }

  async referrers(desc: Descriptor, artifactType?: string, opts: FetchOptions = {}): Promise<Descriptor[]> {
    return this.#tryPull(desc.digest, async (c) => {
      const api = await c.referrersApi(desc.digest, artifactType, opts.signal);
      if (api) return api;
      let idx: ImageIndex;
      try {
        const m = await c.getManifest(fallbackTag(desc.digest), opts.signal);
        if (!isIndexType(m.desc.mediaType)) return [];
        idx = parseIndexBytes(m.bytes, m.desc.mediaType, `referrers index ${fallbackTag(desc.digest)}`);
      } catch (e) {
        if (e instanceof TiuError && e.code === 'CONTENT_NOT_FOUND') return [];
        throw e;
      }
      return idx.manifests.filter((d) => !artifactType || d.artifactType === artifactType);
    });
  }

  async tags(opts: FetchOptions = {}): Promise<string[]> {
    return this.#tryPull(undefined, (c) => c.tags(opts.signal));
  }

  /** Delete a manifest by digest (and its entry in a referrers fallback index). */
  async delete(desc: Descriptor, opts: FetchOptions = {}): Promise<void> {
    let subject: string | undefined;
    if (isManifestLike(desc.mediaType)) {
      try {
        const bytes = this.#manifests.get(desc.digest) ?? (await this.#primary.getManifest(desc.digest, opts.signal)).bytes;
        const s = (JSON.parse(bytes.toString('utf8')) as { subject?: { digest?: unknown } }).subject?.digest;
        if (typeof s === 'string' && isDigest(s)) subject = s;
      } catch (e) {
        if (!(e instanceof TiuError && e.code === 'CONTENT_NOT_FOUND')) throw e;
      }
    }
    await this.#primary.deleteManifest(desc.digest, opts.signal);
    this.#manifests.delete(desc.digest);
    if (subject) {
      await this.#updateFallback(subject, (list) => (list.some((d) => d.digest === desc.digest) ? list.filter((d) => d.digest !== desc.digest) : undefined), opts.signal);
    }
  }

  /**
   * Read-modify-write the fallback index of `subject`, serialised within this process and
   * re-read after writing so that a concurrent writer's entries and ours both survive.
   * `change` returns the new list, or undefined when nothing needs to change.
   */
  async #updateFallback(subject: string, change: (list: Descriptor[]) => Descriptor[] | undefined, signal?: AbortSignal): Promise<void> {
    const tag = fallbackTag(subject);
    const key = `${this.#primary.registry}/${this.#primary.repository}:${tag}`;
    const prev = this.#locks.get(key) ?? Promise.resolve();
    const run = prev.catch(() => undefined).then(async () => {
      const p = this.#primary;
      for (let attempt = 0; attempt < 4; attempt++) {
        let current: ImageIndex | undefined;
        try {
          const m = await p.getManifest(tag, signal);
          if (!isIndexType(m.desc.mediaType)) {
            throw new TiuError('REFERRERS_CONFLICT', `tag ${tag} in ${p.name} is not an index; refusing to overwrite it with a referrers index`, { tag });
          }
          current = parseIndexBytes(m.bytes, m.desc.mediaType, `referrers index ${tag}`);
        } catch (e) {
          if (!(e instanceof TiuError && e.code === 'CONTENT_NOT_FOUND')) throw e;
        }
        const next = change(current?.manifests ?? []);
        if (!next) return;
        const idx: ImageIndex = { schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: next };
        if (current?.annotations) idx.annotations = current.annotations;
        await p.putManifest(tag, Buffer.from(JSON.stringify(idx)), MediaType.OciIndex, signal);
      }
      throw new TiuError('REFERRERS_CONFLICT', `referrers index ${tag} in ${p.name} kept changing under tiu`, { tag });
    });
    this.#locks.set(key, run);
    try {
      await run;
    } finally {
      if (this.#locks.get(key) === run) this.#locks.delete(key);
    }
  }

  async close(): Promise<void> {
    if (this.#ownSession) await this.#session.close();
  }
}

export function openRegistryTarget(ref: DockerReference, opts: RegistryClientOptions = {}): RegistryTarget {
  return new RegistryTarget(ref, opts);
}
