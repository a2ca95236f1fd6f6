/**
 * Blob GET bodies as BlobReaders (the consumer's buffers, no Buffer per read): a whole blob
 * that resumes after cut connections, and one byte range checked against what was asked.
 * The HTTP exchange itself is the client's (client.ts); these only read bodies.
 */
import { TiuError } from '../../errors.ts';
import type { BlobReader } from '../../content/blob-reader.ts';
import { AbortedError, UnreachableError } from './errors.ts';
import { isConnectionFailure } from './http.ts';
import type { StreamedBody } from './streamed-get.ts';

export interface ResumeSource {
  registry: string;
  /** "blob sha256:… in os/microos", for messages. */
  what: string;
  size: number;
  maxResumes: number;
  signal: AbortSignal | undefined;
  /** A new GET from `offset`: its body, and how many leading bytes to drop (a 200 to a Range). */
  reopen(offset: number): Promise<{ body: StreamedBody; skip: number }>;
  /** Body bytes received, resumes' overhead included. */
  received(n: number): void;
}

/**
 * A whole blob's body; a connection cut mid-body (or a body that ends short) is resumed from the
 * byte it stopped at, up to maxResumes times. Unverified: the caller wraps it (verifiedReader).
 */
export class ResumingBlobReader implements BlobReader {
  readonly #s: ResumeSource;
  #body: StreamedBody | undefined;
  #offset = 0;
  #skip = 0;
  #resumes = 0;

  constructor(first: StreamedBody, s: ResumeSource) {
    this.#body = first;
    this.#s = s;
  }

  async read(into: Buffer): Promise<number> {
    const s = this.#s;
    for (;;) {
      if (!this.#body) ({ body: this.#body, skip: this.#skip } = await s.reopen(this.#offset));
      let n: number;
      try {
        n = await this.#body.read(into);
      } catch (e) {
        this.#body = undefined;
        if (s.signal?.aborted) throw new AbortedError(`download of ${s.what}`);
        if (!isConnectionFailure(e) || this.#offset >= s.size) throw e;
        if (this.#resumes >= s.maxResumes) {
          throw new UnreachableError(s.registry, `download of ${s.what} cut ${this.#resumes + 1} times, last at byte ${this.#offset} of ${s.size}`);
        }
        this.#resumes++;
        continue;
      }
      s.received(n);
      if (n === 0) {
        this.#body = undefined;
        // The body ended early without an error: treat it like a cut connection.
        if (this.#offset < s.size && this.#resumes < s.maxResumes) {
          this.#resumes++;
          continue;
        }
        return 0;
      }
      if (this.#skip > 0) {
        const k = Math.min(this.#skip, n);
        this.#skip -= k;
        if (k === n) continue;
        into.copyWithin(0, k, n);
        n -= k;
      }
      this.#offset += n;
      return n;
    }
  }

  close(): Promise<void> {
    this.#body?.destroy();
    this.#body = undefined;
    return Promise.resolve();
  }
}

/**
 * Bytes [start, end) of a blob from a 206 body (its Content-Range already checked): exactly
 * that many, else SIZE_MISMATCH; a cut connection is the network's fault, said as such
 * (REGISTRY_UNREACHABLE naming the byte), not a bare reset.
 */
export class RangeReader implements BlobReader {
  readonly #body: StreamedBody;
  readonly #want: number;
  readonly #registry: string;
  readonly #what: string;
  readonly #signal: AbortSignal | undefined;
  #seen = 0;

  constructor(body: StreamedBody, want: number, registry: string, what: string, signal: AbortSignal | undefined) {
    this.#body = body;
    this.#want = want;
    this.#registry = registry;
    this.#what = what;
    this.#signal = signal;
  }

  async read(into: Buffer): Promise<number> {
    let n: number;
    try {
      // One byte more than is left, so that a longer body shows at once.
      n = await this.#body.read(into.subarray(0, Math.min(into.length, this.#want - this.#seen + 1)));
    } catch (e) {
      if (this.#signal?.aborted) throw new AbortedError(this.#what);
      if (isConnectionFailure(e)) {
        const why = e instanceof Error ? e.message : String(e);
        throw new UnreachableError(this.#registry, `${this.#what} cut at byte ${this.#seen} of ${this.#want}: ${why}`);
      }
      throw e;
    }
    this.#seen += n;
    if (this.#seen > this.#want) {
      this.#body.destroy();
      throw new TiuError('SIZE_MISMATCH', `${this.#what}: more than ${this.#want} bytes`);
    }
    if (n === 0 && this.#seen !== this.#want) throw new TiuError('SIZE_MISMATCH', `${this.#what}: ${this.#seen} of ${this.#want} bytes`);
    return n;
  }

  close(): Promise<void> {
    this.#body.destroy();
    return Promise.resolve();
  }
}
