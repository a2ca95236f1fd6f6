/**
 * BlobReader: a blob read by its consumer into buffers the consumer owns, for sources that can
 * fill them without allocating: files (an `oci:` layout) and registry bodies (copied from one
 * read buffer per connection, transport/registry/streamed-get.ts). A stream allocates a new
 * Buffer for every chunk it reads; a reader fills the consumer's buffers, which it reuses
 * (RingWriter.fill), so a blob of any size goes from disk or socket to socket or disk through
 * the same few buffers.
 *
 * verifiedReader() checks the bytes by digest and size as they are read, in place in the
 * consumer's buffers: the read that finds the end fails with DIGEST_MISMATCH/SIZE_MISMATCH
 * instead of reporting it, so a consumer never finishes (commits) content that failed.
 */
import { Readable } from 'node:stream';
import type { Hash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { DigestMismatchError, digestHasher, parseDigest, SizeMismatchError, TrailingDataError } from '../oci/digest.ts';
import type { Descriptor } from '../oci/types.ts';

export interface BlobReader {
  /** The next bytes into `into`: how many were put there, 0 at the end of the blob. */
  read(into: Buffer): Promise<number>;
  close(): Promise<void>;
}

class VerifiedReader implements BlobReader {
  readonly #inner: BlobReader;
  readonly #desc: Pick<Descriptor, 'digest' | 'size'>;
  readonly #hash: Hash;
  readonly #what: string;
  readonly #onFailure: ((e: unknown) => void) | undefined;
  #seen = 0;

  constructor(
    inner: BlobReader,
    desc: Pick<Descriptor, 'digest' | 'size'>,
    what: string,
    onFailure: ((e: unknown) => void) | undefined,
  ) {
    this.#inner = inner;
    this.#desc = desc;
    this.#hash = digestHasher(desc.digest);
    this.#what = what;
    this.#onFailure = onFailure;
  }

  verifies(desc: Pick<Descriptor, 'digest' | 'size'>): boolean {
    return this.#desc.digest === desc.digest && this.#desc.size === desc.size;
  }

  async read(into: Buffer): Promise<number> {
    try {
      return await this.#read(into);
    } catch (e) {
      this.#onFailure?.(e);
      throw e;
    }
  }

  async #read(into: Buffer): Promise<number> {
    // One byte more than is left is asked for, so that a longer file shows at once.
    const room = Math.min(into.length, this.#desc.size - this.#seen + 1);
    const n = await this.#inner.read(into.subarray(0, room));
    if (this.#seen + n > this.#desc.size) throw new TrailingDataError(this.#desc.digest, this.#desc.size);
    this.#hash.update(into.subarray(0, n));
    this.#seen += n;
    if (n === 0) this.#check();
    return n;
  }

  #check(): void {
    const { digest, size } = this.#desc;
    if (this.#seen !== size) throw new SizeMismatchError(digest, size, this.#seen, this.#what);
    const actual = `${parseDigest(digest).algorithm}:${this.#hash.digest('hex')}`;
    if (actual !== digest) throw new DigestMismatchError(digest, actual, this.#what);
  }

  close(): Promise<void> {
    return this.#inner.close();
  }
}

/**
 * `reader` checked against `desc` as it is read (itself when it already is). `onFailure` hears
 * of every failed read (the reader's own or the check's) before it is thrown: a copy tells the
 * source's failures from the destination's by it.
 */
export function verifiedReader(
  reader: BlobReader,
  desc: Pick<Descriptor, 'digest' | 'size'>,
  what: string,
  onFailure?: (e: unknown) => void,
): BlobReader {
  if (reader instanceof VerifiedReader && reader.verifies(desc)) return reader;
  return new VerifiedReader(reader, desc, what, onFailure);
}

/** The reader as a stream (a fallback for consumers that take streams; one Buffer per chunk). */
export function readerStream(reader: BlobReader, chunkSize = 64 * 1024): Readable {
  async function* chunks(): AsyncGenerator<Buffer> {
    try {
      for (;;) {
        const buf = Buffer.allocUnsafe(chunkSize);
        const n = await reader.read(buf);
        if (n === 0) return;
        yield buf.subarray(0, n);
      }
    } finally {
      await reader.close();
    }
  }
  return Readable.from(chunks(), { objectMode: false });
}

/**
 * A stream as a reader (for a source whose ranges come as streams): each read copies from the
 * chunk at hand, so at most one chunk is held beside the caller's buffer.
 */
export function streamReader(stream: Readable): BlobReader {
  const chunks = stream[Symbol.asyncIterator]() as AsyncIterator<Buffer | Uint8Array>;
  let held: Buffer | undefined;
  return {
    async read(into: Buffer): Promise<number> {
      while (!held?.length) {
        const next = await chunks.next();
        if (next.done) return 0;
        held = Buffer.isBuffer(next.value) ? next.value : Buffer.from(next.value);
      }
      const n = held.copy(into, 0, 0, Math.min(held.length, into.length));
      held = held.subarray(n);
      return n;
    },
    async close(): Promise<void> {
      held = undefined;
      // Ending the iteration destroys the stream; its error, if any, was read()'s to report.
      await chunks.return?.().catch(() => undefined);
    },
  };
}

/**
 * Bytes [start, end) of an open file, read at their offsets straight into the caller's buffers
 * (never past `end`); closes `fh`. A file's range as a stream (createReadStream) allocates a new
 * 64 KiB Buffer per chunk, all garbage once copied: the whole-layer path reads every layer of the
 * cache by range, hundreds of MiB of them left to the collector.
 */
export function fileRangeReader(fh: FileHandle, start: number, end: number): BlobReader {
  let at = start;
  return {
    async read(into: Buffer): Promise<number> {
      const want = Math.min(into.length, end - at);
      if (want <= 0) return 0;
      const { bytesRead } = await fh.read(into, 0, want, at);
      at += bytesRead;
      return bytesRead;
    },
    close: () => fh.close(),
  };
}
