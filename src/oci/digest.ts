/**
 * Digests: parsing, computing, and streams that verify content by digest and size as it flows.
 * Every byte tiu takes from outside passes one of these before it is trusted.
 */
import { createHash, type Hash } from 'node:crypto';
import { Transform, type Readable, type TransformCallback } from 'node:stream';
import { TiuError } from '../errors.ts';
import type { Descriptor, Digest } from './types.ts';

export class InvalidDigestError extends TiuError {
  constructor(value: string) {
    super('DIGEST_INVALID', `invalid digest ${JSON.stringify(value.slice(0, 100))}`, { value: value.slice(0, 100) });
  }
}
export class DigestMismatchError extends TiuError {
  constructor(expected: string, actual: string, what = 'content') {
    super('DIGEST_MISMATCH', `${what} ${expected} does not match its digest (got ${actual})`, {
      expected,
      actual,
      what,
    });
  }
}
export class SizeMismatchError extends TiuError {
  constructor(digest: string, expected: number, actual: number, what = 'content') {
    super('SIZE_MISMATCH', `${what} ${digest}: expected ${expected} bytes, got ${actual}`, {
      digest,
      expected,
      actual,
      what,
    });
  }
}
/** More bytes arrived than the descriptor's size: never trust them. */
export class TrailingDataError extends TiuError {
  constructor(digest: string, expected: number) {
    super('SIZE_MISMATCH', `content ${digest}: more than the expected ${expected} bytes`, { digest, expected });
  }
}

const ALGORITHMS: Record<string, { hash: string; hexLength: number }> = {
  sha256: { hash: 'sha256', hexLength: 64 },
  sha512: { hash: 'sha512', hexLength: 128 },
};

export interface ParsedDigest {
  algorithm: string;
  hex: string;
}

/** Parse and validate `algorithm:hex`; only algorithms we can verify are accepted. */
export function parseDigest(value: string): ParsedDigest {
  const m = /^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-f0-9]+)$/.exec(value);
  if (!m) throw new InvalidDigestError(value);
  const algorithm = m[1]!;
  const hex = m[2]!;
  const alg = ALGORITHMS[algorithm];
  if (!alg || hex.length !== alg.hexLength) throw new InvalidDigestError(value);
  return { algorithm, hex };
}

export function isDigest(value: string): value is Digest {
  try {
    parseDigest(value);
    return true;
  } catch {
    return false;
  }
}

export function digestHasher(digest: string): Hash {
  return createHash(ALGORITHMS[parseDigest(digest).algorithm]!.hash);
}

export function sha256(data: Uint8Array | string): Digest {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/** Check a whole buffer against a descriptor. Throws a typed error on any difference. */
export function verifyBuffer(desc: Pick<Descriptor, 'digest' | 'size'>, data: Uint8Array, what = 'content'): void {
  if (data.length !== desc.size) {
    throw new SizeMismatchError(desc.digest, desc.size, data.length, what);
  }
  const h = digestHasher(desc.digest).update(data).digest('hex');
  const actual = `${parseDigest(desc.digest).algorithm}:${h}`;
  if (actual !== desc.digest) throw new DigestMismatchError(desc.digest, actual, what);
}

/**
 * A pass-through stream that fails if the bytes do not hash to `desc.digest` or their count
 * differs from `desc.size`. Excess bytes fail at once (before they pass on); a short or wrong
 * stream fails at its end, before the final callback, so a consumer that commits on 'finish'
 * never commits unverified content.
 *
 * `offset`: the stream starts this many bytes into the content (a resumed transfer); the
 * hash must then be primed with the earlier bytes through `prime`.
 */
export class VerifyingStream extends Transform {
  readonly #digest: string;
  readonly #size: number;
  readonly #hash: Hash;
  readonly #what: string;
  #seen = 0;

  constructor(desc: Pick<Descriptor, 'digest' | 'size'>, what = 'content') {
    super();
    this.#digest = desc.digest;
    this.#size = desc.size;
    this.#hash = digestHasher(desc.digest);
    this.#what = what;
  }

  /** Whether this stream checks exactly `desc` (same digest and size). */
  verifies(desc: Pick<Descriptor, 'digest' | 'size'>): boolean {
    return this.#digest === desc.digest && this.#size === desc.size;
  }

  /** Feed bytes that were already received (and kept) before this stream started. */
  prime(data: Uint8Array): void {
    this.#hash.update(data);
    this.#seen += data.length;
  }

  get bytesSeen(): number {
    return this.#seen;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (this.#seen + chunk.length > this.#size) {
      cb(new TrailingDataError(this.#digest, this.#size));
      return;
    }
    this.#seen += chunk.length;
    this.#hash.update(chunk);
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    if (this.#seen !== this.#size) {
      cb(new SizeMismatchError(this.#digest, this.#size, this.#seen, this.#what));
      return;
    }
    const actual = `${parseDigest(this.#digest).algorithm}:${this.#hash.digest('hex')}`;
    if (actual !== this.#digest) {
      cb(new DigestMismatchError(this.#digest, actual, this.#what));
      return;
    }
    cb();
  }
}

/**
 * `content` as a stream that is verified against `desc`: the stream itself when it is already
 * a VerifyingStream of that digest and size (hashing it twice would only cost CPU), otherwise
 * `content` piped through a new one (errors of `content` are passed on).
 */
export function verifiedStream(
  content: Readable,
  desc: Pick<Descriptor, 'digest' | 'size'>,
  what = 'content',
): VerifyingStream {
  if (content instanceof VerifyingStream && content.verifies(desc)) return content;
  const v = new VerifyingStream(desc, what);
  content.on('error', (e) => v.destroy(e));
  v.on('close', () => {
    if (!content.readableEnded) content.destroy();
  });
  return content.pipe(v);
}
