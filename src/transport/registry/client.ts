/**
 * The distribution-spec calls for one repository on one registry endpoint: manifests
 * (GET/HEAD/PUT/DELETE), tags, blobs (GET with resume, HEAD, ranges, uploads, mounts) and the
 * referrers API. Mirrors, fallbacks and the Target shape are in target.ts.
 */
import type { Readable, Writable } from 'node:stream';
import { TiuError } from '../../errors.ts';
import { NotFoundError, RangeUnsupportedError } from '../../content/errors.ts';
import { ManifestTooLargeError, parseIndexBytes, readAllCapped } from '../../oci/validate.ts';
import { sha256, TrailingDataError, verifiedStream, verifyBuffer, VerifyingStream } from '../../oci/digest.ts';
import { isManifestLike, MAX_MANIFEST_BYTES, MediaType } from '../../oci/mediatypes.ts';
import type { Descriptor, Digest } from '../../oci/types.ts';
import { pullScope, pushScope } from './auth.ts';
import { DeniedError, UnexpectedStatusError, UnreachableError } from './errors.ts';
import { backoffMs, bodyExcerpt, headerOne, readBody, type BodyWriter, type HttpRequest, type HttpResponse, type ResponseBody } from './http.ts';
import type { StreamedBody } from './streamed-get.ts';
import { BadResponseError } from './response-parser.ts';
import { RangeReader, ResumingBlobReader } from './blob-download.ts';
import { RingWriter } from '../../util/ring-writer.ts';
import { readerStream, verifiedReader, type BlobReader } from '../../content/blob-reader.ts';
import { setTimeout as delay } from 'node:timers/promises';
import type { RegistrySession } from './session.ts';

export const MANIFEST_ACCEPT = [MediaType.OciManifest, MediaType.OciIndex, MediaType.DockerManifest, MediaType.DockerManifestList].join(', ');

/** Blobs up to this size are sent in one request (POST ?digest=, then PUT if the registry wants). */
export const SINGLE_POST_MAX = 64 * 1024;

export interface ClientTuning {
  /**
   * Blobs larger than this are uploaded in PATCH chunks of this size (each held in memory so it
   * can be sent again). Default: none, every blob is streamed in one PATCH.
   */
  chunkSize?: number;
  /** Resumptions of one blob download after cut connections. Default 5. */
  maxResumes?: number;
  /** Page size for tags/list. Default 1000. */
  tagPageSize?: number;
}

interface SendOptions {
  method: string;
  path: string | URL;
  scopes: string[];
  headers?: Record<string, string>;
  body?: Buffer | Readable | BodyWriter;
  signal?: AbortSignal | undefined;
  followRedirects?: boolean;
  noRetry?: boolean;
  what: string;
  /** Body bytes expected: scales the request's deadline (speed.ts). */
  expectedBytes?: number;
}

export interface FetchedManifest {
  desc: Descriptor;
  bytes: Buffer;
}

function mediaTypeOf(res: HttpResponse, bytes?: Buffer): string {
  const ct = headerOne(res.headers['content-type'])?.split(';')[0]?.trim();
  if (ct && ct !== 'application/json' && ct !== 'text/plain' && ct !== 'application/octet-stream') return ct;
  if (bytes) {
    try {
      const j = JSON.parse(bytes.toString('utf8')) as { mediaType?: unknown; manifests?: unknown };
      if (typeof j.mediaType === 'string') return j.mediaType;
      return Array.isArray(j.manifests) ? MediaType.OciIndex : MediaType.OciManifest;
    } catch {
      /* fall through */
    }
  }
  return ct ?? MediaType.OciManifest;
}

export class RepositoryClient {
  readonly registry: string;
  readonly repository: string;
  readonly insecure: boolean;
  readonly #s: RegistrySession;
  readonly #tuning: Required<Omit<ClientTuning, 'chunkSize'>> & Pick<ClientTuning, 'chunkSize'>;
  /** Bytes received in blob GET bodies (tests count the resume overhead). */
  blobBytesReceived = 0;

  constructor(session: RegistrySession, registry: string, repository: string, insecure: boolean, tuning: ClientTuning = {}) {
    this.#s = session;
    this.registry = registry;
    this.repository = repository;
    this.insecure = insecure;
    this.#tuning = { chunkSize: tuning.chunkSize, maxResumes: tuning.maxResumes ?? 5, tagPageSize: tuning.tagPageSize ?? 1000 };
  }

  get name(): string {
    return `docker://${this.registry}/${this.repository}`;
  }

  #send(o: SendOptions): Promise<HttpResponse> {
    return this.#sendVia(o, (r) => this.#s.http.request(r));
  }

  /** A GET whose body is read into the consumer's buffers (HttpClient.requestStreamed). */
  #sendStreamed(o: SendOptions): Promise<HttpResponse<StreamedBody>> {
    return this.#sendVia(o, (r) => this.#s.http.requestStreamed({ ...r, method: 'GET' }));
  }

  async #sendVia<B extends ResponseBody>(o: SendOptions, request: (r: HttpRequest) => Promise<HttpResponse<B>>): Promise<HttpResponse<B>> {
    const base = await this.#s.base(this.registry, this.insecure, o.signal);
    const auth = this.#s.auth(this.registry);
    const url = o.path instanceof URL ? o.path : new URL(o.path, base);
    for (let attempt = 0; ; attempt++) {
      const authz = await auth.header(this.repository, o.scopes, o.signal);
      const headers = { ...o.headers };
      if (authz) headers.authorization = authz;
      const res = await request({
        method: o.method,
        url,
        headers,
        body: o.body,
        signal: o.signal,
        followRedirects: o.followRedirects ?? false,
        ...(o.noRetry ? { noRetry: true } : {}),
        what: `${o.what} (${o.method})`,
        ...(o.expectedBytes !== undefined ? { expectedBytes: o.expectedBytes } : Buffer.isBuffer(o.body) ? { expectedBytes: o.body.length } : {}),
      });
      if (res.status === 401) {
        const streamed = o.body !== undefined && !Buffer.isBuffer(o.body);
        await auth.rejected(res, this.repository, o.scopes, streamed ? 1 : attempt, o.what);
        continue;
      }
      if (res.status === 403) {
        res.body.resume();
        throw new DeniedError(this.registry, o.what);
      }
      return res;
    }
  }

  #path(kind: string, rest = ''): string {
    return `/v2/${this.repository}/${kind}${rest}`;
  }

  async #fail(res: HttpResponse<ResponseBody>, what: string): Promise<never> {
    throw new UnexpectedStatusError(this.registry, what, res.status, await bodyExcerpt(res));
  }

  // ---- manifests ----

  async getManifest(reference: string, signal?: AbortSignal): Promise<FetchedManifest> {
    const what = `manifest ${this.repository}:${reference}`;
    const res = await this.#send({ method: 'GET', path: this.#path('manifests/', reference), scopes: [pullScope(this.repository)], headers: { accept: MANIFEST_ACCEPT }, signal, what });
    if (res.status === 404) {
      res.body.resume();
      throw new NotFoundError(`manifest ${reference}`, this.name);
    }
    if (res.status !== 200) await this.#fail(res, `GET ${what}`);
    const bytes = await readBody(res, MAX_MANIFEST_BYTES, (n) => new ManifestTooLargeError(n, MAX_MANIFEST_BYTES));
    const mediaType = mediaTypeOf(res, bytes);
    let digest: Digest;
    if (reference.includes(':')) {
      verifyBuffer({ digest: reference as Digest, size: bytes.length }, bytes, `manifest from ${this.name}`);
      digest = reference as Digest;
    } else {
      digest = sha256(bytes);
      const claimed = headerOne(res.headers['docker-content-digest']);
      if (claimed?.startsWith('sha256:') && claimed !== digest) {
        throw new TiuError('DIGEST_MISMATCH', `manifest ${this.repository}:${reference} from ${this.registry}: content hashes to ${digest}, the registry says ${claimed}`, { expected: claimed, actual: digest });
      }
    }
    return { desc: { mediaType, digest, size: bytes.length }, bytes };
  }

  /** HEAD: the descriptor without the body; undefined when absent. Falls back to GET when the registry leaves out the digest. */
  async headManifest(reference: string, signal?: AbortSignal): Promise<Descriptor | undefined> {
    const what = `manifest ${this.repository}:${reference}`;
    const res = await this.#send({ method: 'HEAD', path: this.#path('manifests/', reference), scopes: [pullScope(this.repository)], headers: { accept: MANIFEST_ACCEPT }, signal, what });
    res.body.resume();
    if (res.status === 404) return undefined;
    if (res.status !== 200) throw new UnexpectedStatusError(this.registry, `HEAD ${what}`, res.status, '');
    const digest = headerOne(res.headers['docker-content-digest']);
    const size = Number(res.headers['content-length']);
    if (!digest || !Number.isFinite(size) || (reference.includes(':') && digest !== reference) || !isManifestLike(mediaTypeOf(res))) {
      return (await this.getManifest(reference, signal)).desc;
    }
    if (size > MAX_MANIFEST_BYTES) throw new ManifestTooLargeError(size, MAX_MANIFEST_BYTES);
    return { mediaType: mediaTypeOf(res), digest: digest as Digest, size };
  }

  /** PUT a manifest under a tag or its digest. Returns whether the registry took care of referrers (OCI-Subject). */
  async putManifest(reference: string, bytes: Buffer, mediaType: string, signal?: AbortSignal): Promise<{ subjectHandled: boolean; digest: string | undefined }> {
    if (bytes.length > MAX_MANIFEST_BYTES) throw new ManifestTooLargeError(bytes.length, MAX_MANIFEST_BYTES);
    const what = `manifest ${this.repository}:${reference}`;
    const res = await this.#send({ method: 'PUT', path: this.#path('manifests/', reference), scopes: [pushScope(this.repository)], headers: { 'content-type': mediaType }, body: bytes, signal, what });
    if (res.status !== 201 && res.status !== 200 && res.status !== 202) await this.#fail(res, `PUT ${what}`);
    res.body.resume();
    return { subjectHandled: res.headers['oci-subject'] !== undefined, digest: headerOne(res.headers['docker-content-digest']) };
  }

  async deleteManifest(digest: string, signal?: AbortSignal): Promise<void> {
    const what = `manifest ${this.repository}@${digest}`;
    const res = await this.#send({ method: 'DELETE', path: this.#path('manifests/', digest), scopes: [`repository:${this.repository}:delete`, pushScope(this.repository)], signal, what });
    if (res.status === 404) {
      res.body.resume();
      throw new NotFoundError(`manifest ${digest}`, this.name);
    }
    if (res.status !== 202 && res.status !== 200) await this.#fail(res, `DELETE ${what}`);
    res.body.resume();
  }

  async tags(signal?: AbortSignal): Promise<string[]> {
    const out: string[] = [];
    let next: string | URL = `${this.#path('tags/list')}?n=${this.#tuning.tagPageSize}`;
    for (let page = 0; page < 100_000; page++) {
      const res = await this.#send({ method: 'GET', path: next, scopes: [pullScope(this.repository)], signal, what: `tags of ${this.repository}` });
      if (res.status === 404) {
        res.body.resume();
        return out;
      }
      if (res.status !== 200) await this.#fail(res, `GET tags of ${this.repository}`);
      const body = await readBody(res, 64 * 1024 * 1024, (n) => new UnexpectedStatusError(this.registry, 'tags list', 200, `${n} bytes is too large`));
      let j: { tags?: unknown };
      try {
        j = JSON.parse(body.toString('utf8')) as typeof j;
      } catch {
        throw new UnexpectedStatusError(this.registry, 'tags list', 200, 'not JSON');
      }
      if (Array.isArray(j.tags)) out.push(...j.tags.filter((t): t is string => typeof t === 'string'));
      const link = headerOne(res.headers.link);
      const m = link ? /<([^>]+)>\s*;\s*rel="?next"?/.exec(link) : null;
      if (!m) break;
      next = new URL(m[1]!, res.url);
      if (next.host !== res.url.host) throw new UnexpectedStatusError(this.registry, 'tags list', 200, 'Link to another host');
    }
    return out;
  }

  // ---- referrers API ----

  /** The referrers API's answer, or undefined where the registry has no such API (404). */
  async referrersApi(digest: string, artifactType: string | undefined, signal?: AbortSignal): Promise<Descriptor[] | undefined> {
    const q = artifactType ? `?artifactType=${encodeURIComponent(artifactType)}` : '';
    const what = `referrers of ${digest} in ${this.repository}`;
    const res = await this.#send({ method: 'GET', path: this.#path('referrers/', digest) + q, scopes: [pullScope(this.repository)], signal, what });
    if (res.status === 404 || res.status === 405 || res.status === 400) {
      res.body.resume();
      return undefined;
    }
    if (res.status !== 200) await this.#fail(res, `GET ${what}`);
    const ct = headerOne(res.headers['content-type'])?.split(';')[0]?.trim();
    const bytes = await readBody(res, MAX_MANIFEST_BYTES, (n) => new ManifestTooLargeError(n, MAX_MANIFEST_BYTES));
    if (ct !== MediaType.OciIndex) return undefined;
    const idx = parseIndexBytes(bytes, MediaType.OciIndex, what);
    const filtered = headerOne(res.headers['oci-filters-applied'])?.split(',').map((s) => s.trim()).includes('artifactType');
    return idx.manifests.filter((d) => !artifactType || filtered || d.artifactType === artifactType);
  }

  // ---- blobs ----

  async blobExists(desc: Descriptor, signal?: AbortSignal): Promise<boolean> {
    const what = `blob ${desc.digest} in ${this.repository}`;
    const res = await this.#send({ method: 'HEAD', path: this.#path('blobs/', desc.digest), scopes: [pullScope(this.repository)], signal, followRedirects: true, what });
    res.body.resume();
    if (res.status === 200) return true;
    if (res.status === 404) return false;
    throw new UnexpectedStatusError(this.registry, `HEAD ${what}`, res.status, '');
  }

  async #getBlob(desc: Descriptor, range: string | undefined, signal?: AbortSignal, expectedBytes?: number): Promise<HttpResponse<StreamedBody>> {
    const what = `blob ${desc.digest} in ${this.repository}`;
    const res = await this.#sendStreamed({
      method: 'GET',
      path: this.#path('blobs/', desc.digest),
      scopes: [pullScope(this.repository)],
      ...(range ? { headers: { range } } : {}),
      signal,
      followRedirects: true,
      what: range ? `${what}, ${range}` : what,
      expectedBytes: expectedBytes ?? desc.size,
    });
    if (res.status === 404) {
      res.body.resume();
      throw new NotFoundError(`blob ${desc.digest}`, this.name);
    }
    return res;
  }

  /**
   * The blob read into the caller's buffers (BlobReader), unverified (verifiedReader checks it).
   * A connection cut mid-body is resumed with `Range: bytes=<received>-` (up to maxResumes
   * times); a registry answering 200 to that is read past the bytes already received.
   */
  async openBlob(desc: Descriptor, signal?: AbortSignal): Promise<BlobReader> {
    const first = await this.#getBlob(desc, undefined, signal);
    if (first.status !== 200) await this.#fail(first, `GET blob ${desc.digest}`);
    return new ResumingBlobReader(first.body, {
      registry: this.registry,
      what: `blob ${desc.digest}`,
      size: desc.size,
      maxResumes: this.#tuning.maxResumes,
      signal,
      received: (n) => {
        this.blobBytesReceived += n;
      },
      reopen: async (offset) => {
        const res = await this.#getBlob(desc, `bytes=${offset}-`, signal);
        if (res.status === 200) return { body: res.body, skip: offset };
        if (res.status !== 206) await this.#fail(res, `GET (resume) blob ${desc.digest}`);
        const cr = headerOne(res.headers['content-range']);
        const m = cr ? /^bytes (\d+)-/.exec(cr) : null;
        if (!m || Number(m[1]) !== offset) {
          res.body.destroy();
          throw new BadResponseError(this.registry, `resume of blob ${desc.digest}: Content-Range ${cr ?? 'missing'} does not start at ${offset}`);
        }
        return { body: res.body, skip: 0 };
      },
    });
  }

  /** The blob as a stream, verified by digest and size as it flows (openBlob's reader, resumed the same way). */
  async fetchBlob(desc: Descriptor, signal?: AbortSignal): Promise<Readable> {
    const reader = await this.openBlob(desc, signal);
    const out = new VerifyingStream(desc, `blob ${desc.digest} from ${this.name}`);
    const chunks = readerStream(reader);
    chunks.on('error', (e) => out.destroy(e));
    out.on('close', () => chunks.destroy());
    return chunks.pipe(out);
  }

  /**
   * Bytes [start, end) of a blob read into the caller's buffers; RANGE_UNSUPPORTED when the
   * registry answers 200 instead of 206, REGISTRY_BAD_RESPONSE when its Content-Range or
   * Content-Length is not the range asked for.
   */
  async openRange(desc: Descriptor, start: number, end: number, signal?: AbortSignal): Promise<BlobReader> {
    if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end > desc.size || start > end) {
      throw new TiuError('RANGE_INVALID', `range [${start}, ${end}) is outside blob ${desc.digest} of ${desc.size} bytes`, { start, end, size: desc.size });
    }
    if (start === end) return { read: () => Promise.resolve(0), close: () => Promise.resolve() };
    const res = await this.#getBlob(desc, `bytes=${start}-${end - 1}`, signal, end - start);
    if (res.status === 200) {
      res.body.destroy();
      throw new RangeUnsupportedError(this.name);
    }
    if (res.status !== 206) await this.#fail(res, `GET range of blob ${desc.digest}`);
    const cr = headerOne(res.headers['content-range']);
    const m = cr ? /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(cr.trim()) : null;
    const declared = res.body.declaredLength;
    if (!m || Number(m[1]) !== start || Number(m[2]) !== end - 1 || (m[3] !== '*' && Number(m[3]) !== desc.size) || (declared !== undefined && declared !== end - start)) {
      res.body.destroy();
      const got = `Content-Range ${cr ?? 'missing'}${declared !== undefined ? `, Content-Length ${declared}` : ''}`;
      throw new BadResponseError(this.registry, `range of blob ${desc.digest}: ${got} is not bytes ${start}-${end - 1}/${desc.size}`);
    }
    return new RangeReader(res.body, end - start, this.registry, `range of blob ${desc.digest}`, signal);
  }

  /** Bytes [start, end) of a blob as a stream (openRange's reader). */
  async fetchRange(desc: Descriptor, start: number, end: number, signal?: AbortSignal): Promise<Readable> {
    return readerStream(await this.openRange(desc, start, end, signal));
  }

  #uploadUrl(res: HttpResponse, what: string): URL {
    const loc = headerOne(res.headers.location);
    if (!loc) throw new UnexpectedStatusError(this.registry, what, res.status, 'no Location header');
    return new URL(loc, res.url);
  }

  async cancelUpload(url: URL | undefined): Promise<void> {
    if (!url) return;
    try {
      const res = await this.#send({ method: 'DELETE', path: url, scopes: [pushScope(this.repository)], what: 'cancel upload' });
      res.body.resume();
    } catch {
      /* best effort */
    }
  }

  /**
   * Try a cross-repository mount from `from` (same registry). Returns true when mounted; otherwise
   * the upload session the registry opened instead (or undefined).
   */
  async mountBlob(desc: Descriptor, from: string, signal?: AbortSignal): Promise<true | URL | undefined> {
    const what = `mount of blob ${desc.digest} from ${from} into ${this.repository}`;
    const path = `${this.#path('blobs/uploads/')}?mount=${encodeURIComponent(desc.digest)}&from=${encodeURIComponent(from)}`;
    let res: HttpResponse;
    try {
      res = await this.#send({ method: 'POST', path, scopes: [pushScope(this.repository), pullScope(from)], headers: { 'content-length': '0' }, signal, what });
    } catch (e) {
      if (e instanceof TiuError && (e.code === 'REGISTRY_DENIED' || e.code === 'REGISTRY_UNAUTHORIZED')) return undefined;
      throw e;
    }
    res.body.resume();
    if (res.status === 201) return true;
    if (res.status === 202) return this.#uploadUrl(res, what);
    return undefined;
  }

  /**
   * Upload a blob. Small blobs: POST ?digest= with the body (201 done; 202 means the registry
   * opened a session instead, then PUT). Others: POST, then the whole blob streamed in one
   * PATCH, then PUT ?digest= with no body, which is what commits it: it is sent only once the
   * content has been read to its end and verified, so the registry never commits content that
   * failed verification (and checks the digest itself). A tuning `chunkSize` uploads blobs above
   * it in PATCH chunks of that size instead (registries or proxies that cap request bodies),
   * each recoverable on its own. A streamed upload cut by a connection failure or a 5xx is
   * started again from a fresh stream of the content when the caller can give one (`reopen`).
   */
  async pushBlob(
    desc: Descriptor,
    content: Readable,
    opts: { signal?: AbortSignal; onBytes?: (n: number) => void; session?: URL; reopen?: () => Promise<Readable> } = {},
  ): Promise<void> {
    const what = `upload of blob ${desc.digest} to ${this.repository}`;
    const scopes = [pushScope(this.repository)];
    const signal = opts.signal;
    let upload: URL | undefined = opts.session;
    try {
      if (desc.size <= SINGLE_POST_MAX && !upload && !this.#s.noSinglePost.has(this.registry)) {
        const buf = await readAllCapped(content, desc.size, `blob ${desc.digest}`, () => new TrailingDataError(desc.digest, desc.size));
        verifyBuffer(desc, buf, `blob ${desc.digest}`);
        const res = await this.#send({
          method: 'POST',
          path: `${this.#path('blobs/uploads/')}?digest=${encodeURIComponent(desc.digest)}`,
          scopes,
          headers: { 'content-type': 'application/octet-stream' },
          body: buf,
          signal,
          what,
        });
        res.body.resume();
        if (res.status === 201) {
          opts.onBytes?.(buf.length);
          return;
        }
        if (res.status !== 202) await this.#fail(res, what);
        // This registry ignores the body of POST ?digest= (distribution 2.8 does): next time, POST then PUT.
        this.#s.noSinglePost.add(this.registry);
        upload = this.#uploadUrl(res, what);
        const put = new URL(upload);
        put.searchParams.set('digest', desc.digest);
        const r2 = await this.#send({ method: 'PUT', path: put, scopes, headers: { 'content-type': 'application/octet-stream' }, body: buf, signal, what });
        if (r2.status !== 201) await this.#fail(r2, what);
        r2.body.resume();
        opts.onBytes?.(buf.length);
        return;
      }
      const chunkSize = this.#tuning.chunkSize;
      for (let attempt = 0; ; attempt++) {
        if (!upload) upload = await this.#startUpload(scopes, what, signal);
        const verified = verifiedStream(content, desc, `blob ${desc.digest}`);
        try {
          if (chunkSize !== undefined && desc.size > chunkSize) {
            upload = await this.#patchChunks(desc, verified, upload, scopes, what, chunkSize, opts);
          } else {
            upload = await this.#patchStream(desc, verified, upload, scopes, what, opts);
          }
        } catch (e) {
          if (!opts.reopen || attempt >= STREAM_RETRIES || signal?.aborted || !isRetryableUpload(e)) throw e;
          verified.destroy();
          content.destroy();
          await this.cancelUpload(upload);
          upload = undefined;
          await delay(backoffMs(attempt + 1, 200, 2000), undefined, signal ? { signal } : {});
          content = await opts.reopen();
          continue;
        }
        break;
      }
      await this.#commitUpload(desc, upload, scopes, what, signal);
      upload = undefined;
    } catch (e) {
      content.resume();
      await this.cancelUpload(upload);
      throw e;
    }
  }

  /**
   * Upload a blob read by `open()`'s reader straight into the upload's own buffers (a file of an
   * `oci:` layout): the same few buffers carry a blob of any size from the disk to the socket,
   * checked by digest and size in place (verifiedReader). Like pushBlob: one streamed PATCH,
   * then the committing PUT once every byte was read and verified; a cut upload starts again
   * from a fresh reader. Small blobs and chunked uploads take pushBlob's way.
   */
  async pushBlobFrom(desc: Descriptor, open: () => Promise<BlobReader>, opts: { signal?: AbortSignal; onBytes?: (n: number) => void } = {}): Promise<void> {
    const what = `upload of blob ${desc.digest} to ${this.repository}`;
    const verified = async (): Promise<BlobReader> => verifiedReader(await open(), desc, `blob ${desc.digest}`);
    const chunkSize = this.#tuning.chunkSize;
    if (desc.size <= SINGLE_POST_MAX || (chunkSize !== undefined && desc.size > chunkSize)) {
      const reopen = async (): Promise<Readable> => readerStream(await verified());
      return this.pushBlob(desc, await reopen(), { ...opts, reopen });
    }
    const scopes = [pushScope(this.repository)];
    const signal = opts.signal;
    let upload: URL | undefined;
    try {
      for (let attempt = 0; ; attempt++) {
        upload = await this.#startUpload(scopes, what, signal);
        const reader = await verified();
        try {
          upload = await this.#patchFromReader(desc, reader, upload, scopes, what, opts);
        } catch (e) {
          if (attempt >= STREAM_RETRIES || signal?.aborted || !isRetryableUpload(e)) throw e;
          await this.cancelUpload(upload);
          upload = undefined;
          await delay(backoffMs(attempt + 1, 200, 2000), undefined, signal ? { signal } : {});
          continue;
        } finally {
          await reader.close();
        }
        break;
      }
      await this.#commitUpload(desc, upload, scopes, what, signal);
      upload = undefined;
    } catch (e) {
      await this.cancelUpload(upload);
      throw e;
    }
  }

  /** PUT ?digest= with no body: the registry checks and commits what the upload holds. */
  async #commitUpload(desc: Descriptor, upload: URL, scopes: string[], what: string, signal: AbortSignal | undefined): Promise<void> {
    const put = new URL(upload);
    put.searchParams.set('digest', desc.digest);
    const r = await this.#send({ method: 'PUT', path: put, scopes, headers: { 'content-length': '0' }, signal, what });
    if (r.status !== 201) await this.#fail(r, what);
    r.body.resume();
  }

  async #startUpload(scopes: string[], what: string, signal: AbortSignal | undefined): Promise<URL> {
    const res = await this.#send({ method: 'POST', path: this.#path('blobs/uploads/'), scopes, headers: { 'content-length': '0' }, signal, what });
    if (res.status !== 202) await this.#fail(res, what);
    res.body.resume();
    return this.#uploadUrl(res, what);
  }

  /**
   * The whole (verified) content in one streamed PATCH. Returns the next upload URL once the
   * registry holds every byte and the stream has ended without a verification error.
   */
  async #patchStream(desc: Descriptor, verified: VerifyingStream, upload: URL, scopes: string[], what: string, opts: { signal?: AbortSignal; onBytes?: (n: number) => void }): Promise<URL> {
    let failed: Error | undefined;
    verified.on('error', (e) => {
      failed ??= e;
    });
    const ended = new Promise<void>((resolve) => {
      verified.once('end', resolve);
      verified.once('close', resolve);
    });
    // The request takes the blob from buffers of the sender's own (ring-writer.ts), each reused
    // once the socket has written it: what the source hands over dies young, and the bytes
    // waiting for the socket are bounded whatever the blob's size.
    const body: BodyWriter = async (req) => {
      const ring = new RingWriter(async (bytes) => {
        await writeTo(req, bytes);
        opts.onBytes?.(bytes.length);
      });
      try {
        for await (const chunk of verified) await ring.write(chunk as Buffer);
      } catch (e) {
        await ring.abort(e);
        throw e;
      }
      await ring.end();
    };
    return this.#patch(desc, body, upload, scopes, what, opts.signal, {
      stop: () => verified.destroy(),
      finished: async (status) => {
        await ended;
        if (failed) throw failed;
        if (!verified.readableEnded) throw new IncompleteUploadError(this.registry, what, status, 'the registry answered before the whole blob was sent');
      },
    });
  }

  /** The whole blob in one PATCH, read by `reader` into the ring's buffers (RingWriter.fill). */
  async #patchFromReader(desc: Descriptor, reader: BlobReader, upload: URL, scopes: string[], what: string, opts: { signal?: AbortSignal; onBytes?: (n: number) => void }): Promise<URL> {
    let stopped = false;
    let fed: Promise<void> | undefined;
    const body: BodyWriter = (req) => {
      fed = (async () => {
        const ring = new RingWriter(async (bytes) => {
          await writeTo(req, bytes);
          opts.onBytes?.(bytes.length);
        });
        try {
          while (!stopped && (await ring.fill((into) => reader.read(into))) > 0);
        } catch (e) {
          await ring.abort(e);
          throw e;
        }
        await ring.end();
      })();
      return fed;
    };
    return this.#patch(desc, body, upload, scopes, what, opts.signal, {
      stop: () => {
        stopped = true;
      },
      finished: async (status) => {
        try {
          await fed;
        } catch (e) {
          // A verification failure says so; a request closed under the body is a short upload.
          if (e instanceof TiuError) throw e;
          throw new IncompleteUploadError(this.registry, what, status, 'the registry answered before the whole blob was sent');
        }
        if (stopped || fed === undefined) throw new IncompleteUploadError(this.registry, what, status, 'the blob was not sent');
      },
    });
  }

  /**
   * One PATCH with the whole blob as `body`; `finished` throws when the body was not sent whole
   * and verified, `stop` ends the body early when the registry refused the upload.
   */
  async #patch(desc: Descriptor, body: BodyWriter, upload: URL, scopes: string[], what: string, signal: AbortSignal | undefined, end: { stop: () => void; finished: (status: number) => Promise<void> }): Promise<URL> {
    const headers: Record<string, string> = { 'content-type': 'application/octet-stream', 'content-length': String(desc.size) };
    if (desc.size > 0) headers['content-range'] = `0-${desc.size - 1}`;
    const res = await this.#send({ method: 'PATCH', path: upload, scopes, headers, body, signal, noRetry: true, what, expectedBytes: desc.size });
    if (res.status !== 202 && res.status !== 204) {
      end.stop();
      await this.#fail(res, what);
    }
    res.body.resume();
    await end.finished(res.status);
    const held = heldBytes(headerOne(res.headers.range));
    if (held !== undefined && held !== desc.size) {
      throw new IncompleteUploadError(this.registry, what, res.status, `registry holds ${held} of ${desc.size} bytes after the upload`);
    }
    return this.#uploadUrl(res, what);
  }

  async #patchChunks(desc: Descriptor, stream: Readable, upload: URL, scopes: string[], what: string, size: number, opts: { signal?: AbortSignal; onBytes?: (n: number) => void }): Promise<URL> {
    let offset = 0;
    let pending: Buffer[] = [];
    let pendingLen = 0;
    const flush = async (): Promise<void> => {
      let chunk = Buffer.concat(pending, pendingLen);
      pending = [];
      pendingLen = 0;
      let failures = 0;
      // A PATCH is never replayed blindly: after a failure, or when the registry says it holds
      // less than was sent (some answer 202 instead of 416), ask it where the upload stands
      // and send what it lacks.
      while (chunk.length > 0) {
        const start = offset;
        const endIncl = offset + chunk.length - 1;
        let res: HttpResponse | undefined;
        let failure: UnreachableError | undefined;
        try {
          res = await this.#send({
            method: 'PATCH',
            path: upload,
            scopes,
            headers: { 'content-type': 'application/octet-stream', 'content-range': `${start}-${endIncl}` },
            body: chunk,
            signal: opts.signal,
            noRetry: true,
            what,
          });
        } catch (e) {
          if (!(e instanceof UnreachableError)) throw e;
          failure = e;
        }
        let have: number;
        if (res && (res.status === 202 || res.status === 204)) {
          res.body.resume();
          upload = this.#uploadUrl(res, what);
          have = heldBytes(headerOne(res.headers.range)) ?? endIncl + 1;
        } else {
          if (res && !(res.status >= 500 || res.status === 416 || res.status === 429)) await this.#fail(res, `${what} (chunk at ${start})`);
          res?.body.resume();
          if (++failures > 3) {
            if (failure) throw failure;
            await this.#fail(res!, `${what} (chunk at ${start})`);
          }
          await delay(backoffMs(failures, 200, 2000), undefined, opts.signal ? { signal: opts.signal } : {});
          const st = await this.#send({ method: 'GET', path: upload, scopes, signal: opts.signal, what: `status of ${what}` });
          if (st.status !== 204 && st.status !== 200) await this.#fail(st, `status of ${what}`);
          st.body.resume();
          if (st.headers.location) upload = this.#uploadUrl(st, what);
          have = heldBytes(headerOne(st.headers.range)) ?? 0;
        }
        if (have < start) {
          throw new UnexpectedStatusError(this.registry, what, res?.status ?? 0, `registry holds ${have} bytes of the upload, ${start} were sent before`);
        }
        const done = Math.min(have, endIncl + 1) - start;
        if (done < chunk.length && res && (res.status === 202 || res.status === 204) && ++failures > 3) {
          throw new UnexpectedStatusError(this.registry, what, res.status, `registry keeps only ${have} of ${endIncl + 1} bytes`);
        }
        if (done > 0) opts.onBytes?.(done);
        chunk = chunk.subarray(done);
        offset = start + done;
      }
    };
    for await (const c of stream) {
      const b = c as Buffer;
      pending.push(b);
      pendingLen += b.length;
      if (pendingLen >= size) {
        const all = Buffer.concat(pending, pendingLen);
        pending = [all.subarray(0, size)];
        pendingLen = size;
        const rest = all.subarray(size);
        await flush();
        let r = rest;
        while (r.length >= size) {
          pending = [r.subarray(0, size)];
          pendingLen = size;
          r = r.subarray(size);
          await flush();
        }
        pending = r.length ? [r] : [];
        pendingLen = r.length;
      }
    }
    if (pendingLen > 0) await flush();
    return upload;
  }
}

/**
 * Write `bytes` into a request body; settles once the socket is done with them (the callback
 * of the write) or the request has closed, so that the caller may reuse the buffer.
 */
function writeTo(req: Writable, bytes: Buffer): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (req.destroyed) return reject(new Error('the request closed before its body was sent'));
    const closed = (): void => reject(new Error('the request closed before its body was sent'));
    req.once('close', closed);
    req.write(bytes, (err) => {
      req.off('close', closed);
      if (err) reject(err);
      else resolve();
    });
  });
}

/** Times a streamed upload is started again from a fresh stream (PushOptions.reopen). */
const STREAM_RETRIES = 2;

/** A streamed upload the registry did not take whole (it kept fewer bytes than were sent). */
class IncompleteUploadError extends UnexpectedStatusError {}

/** Failures after which a streamed upload may be tried again: the connection, a timeout, a 5xx or 429, a short upload. */
function isRetryableUpload(e: unknown): boolean {
  if (e instanceof UnreachableError || e instanceof IncompleteUploadError) return true;
  if (e instanceof UnexpectedStatusError) {
    const status = (e.details as { status?: unknown }).status;
    return typeof status === 'number' && (status >= 500 || status === 429);
  }
  return false;
}

/** Bytes an upload holds from its Range header (`0-<last>`); `0-0` counts as none. */
function heldBytes(range: string | undefined): number | undefined {
  const m = range ? /^(?:bytes=)?0-(\d+)$/.exec(range.trim()) : null;
  if (!m) return undefined;
  const last = Number(m[1]);
  return last === 0 ? 0 : last + 1;
}
