/**
 * A Target held in memory: for tests, and as a small manifest cache. Content is verified by
 * digest and size before it is stored, like every other Target.
 */
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { isDigest, verifiedStream } from '../../src/oci/digest.ts';
import { isManifestLike } from '../../src/oci/mediatypes.ts';
import type { Descriptor } from '../../src/oci/types.ts';
import { parseManifestOrIndex, validateDescriptor } from '../../src/oci/validate.ts';
import { InvalidTagError, NotFoundError } from '../../src/content/errors.ts';
import type { FetchOptions, PushOptions, Target } from '../../src/content/interfaces.ts';
import { referrerDescriptor } from '../../src/content/referrers.ts';
import { checkRange } from '../../src/content/range.ts';

interface Stored {
  desc: Descriptor;
  data: Buffer;
}

/** Tags as OCI distribution allows them. */
export const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;

export class MemoryTarget implements Target {
  readonly name: string;
  readonly #blobs = new Map<string, Stored>();
  readonly #tags = new Map<string, Descriptor>();

  constructor(name = 'memory:') {
    this.name = name;
  }

  #get(desc: Pick<Descriptor, 'digest'>): Stored {
    const s = this.#blobs.get(desc.digest);
    if (!s) throw new NotFoundError(`blob ${desc.digest}`, this.name);
    return s;
  }

  fetch(desc: Descriptor, _opts?: FetchOptions): Promise<Readable> {
    return Promise.resolve(Readable.from([this.#get(desc).data]));
  }

  fetchRange(desc: Descriptor, start: number, end: number, _opts?: FetchOptions): Promise<Readable> {
    const s = this.#get(desc);
    checkRange(s.data.length, start, end, desc.digest);
    return Promise.resolve(Readable.from([s.data.subarray(start, end)]));
  }

  async push(desc: Descriptor, content: Readable, opts?: PushOptions): Promise<void> {
    validateDescriptor(desc);
    const chunks: Buffer[] = [];
    await pipeline(
      verifiedStream(content, desc, 'blob'),
      new Writable({
        write(chunk: Buffer, _e, cb) {
          chunks.push(chunk);
          opts?.onBytes?.(chunk.length);
          cb();
        },
      }),
      { signal: opts?.signal },
    );
    const data = Buffer.concat(chunks);
    if (isManifestLike(desc.mediaType)) parseManifestOrIndex(data, desc.mediaType);
    if (!this.#blobs.has(desc.digest)) {
      this.#blobs.set(desc.digest, { desc: { mediaType: desc.mediaType, digest: desc.digest, size: desc.size }, data });
    }
  }

  exists(desc: Descriptor, _opts?: FetchOptions): Promise<boolean> {
    return Promise.resolve(this.#blobs.has(desc.digest));
  }

  resolve(reference: string, _opts?: FetchOptions): Promise<Descriptor> {
    if (isDigest(reference)) {
      const s = this.#blobs.get(reference);
      if (!s) return Promise.reject(new NotFoundError(`manifest ${reference}`, this.name));
      return Promise.resolve({ ...s.desc });
    }
    const d = this.#tags.get(reference);
    if (!d) return Promise.reject(new NotFoundError(`tag ${JSON.stringify(reference)}`, this.name));
    return Promise.resolve({ ...d });
  }

  tag(desc: Descriptor, reference: string, _opts?: FetchOptions): Promise<void> {
    if (!TAG_RE.test(reference)) return Promise.reject(new InvalidTagError(reference));
    const s = this.#get(desc);
    this.#tags.set(reference, { ...s.desc, mediaType: desc.mediaType });
    return Promise.resolve();
  }

  referrers(desc: Descriptor, artifactType?: string, _opts?: FetchOptions): Promise<Descriptor[]> {
    const out: Descriptor[] = [];
    for (const s of this.#blobs.values()) {
      if (!isManifestLike(s.desc.mediaType)) continue;
      const r = referrerDescriptor(s.desc, parseManifestOrIndex(s.data, s.desc.mediaType));
      if (r && r.subject === desc.digest && (artifactType === undefined || r.desc.artifactType === artifactType))
        out.push(r.desc);
    }
    return Promise.resolve(out);
  }

  tags(_opts?: FetchOptions): Promise<string[]> {
    return Promise.resolve([...this.#tags.keys()].sort());
  }

  /** Number of blobs held (for tests). */
  get size(): number {
    return this.#blobs.size;
  }
}
