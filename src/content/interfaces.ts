/**
 * The capability interfaces every transport implements (DESIGN.md §2). copy() is written once
 * against these; a registry, an OCI layout directory, an oci-archive, memory and the snapshot
 * sink are all Targets.
 */
import type { Readable } from 'node:stream';
import type { Descriptor } from '../oci/types.ts';
import type { BlobReader } from './blob-reader.ts';

export interface FetchOptions {
  signal?: AbortSignal;
}

export interface Fetcher {
  /**
   * A stream of exactly the described content. Implementations that can't check as they go
   * may return unverified bytes: callers that trust content wrap it in a VerifyingStream.
   */
  fetch(desc: Descriptor, opts?: FetchOptions): Promise<Readable>;
}

/** Byte ranges of a blob, for the table-of-contents delta path (HTTP Range on a registry). */
export interface RangeFetcher {
  /** Bytes [start, end) of the blob. Throws RANGE_UNSUPPORTED where the source can't. */
  fetchRange(desc: Descriptor, start: number, end: number, opts?: FetchOptions): Promise<Readable>;
  /**
   * The same bytes read into the consumer's buffers (blob-reader.ts), where the source can do
   * that without a Buffer per chunk (a registry's body).
   */
  openRange?(desc: Descriptor, start: number, end: number, opts?: FetchOptions): Promise<BlobReader>;
}

export interface PushOptions {
  signal?: AbortSignal;
  /** Progress of this blob's bytes as they are written. */
  onBytes?: (n: number) => void;
  /**
   * A fresh stream of the same content from its start. A destination whose transfer broke off
   * (a registry upload cut by the network) may call it to try again; content it gives is
   * verified like the first stream.
   */
  reopen?: () => Promise<Readable>;
}

export interface Pusher {
  /**
   * Store content under `desc`. The implementation verifies digest and size before the content
   * becomes visible: a mismatch leaves nothing behind and throws DIGEST_MISMATCH/SIZE_MISMATCH.
   */
  push(desc: Descriptor, content: Readable, opts?: PushOptions): Promise<void>;
}

export interface Storage extends Fetcher, Pusher {
  exists(desc: Descriptor, opts?: FetchOptions): Promise<boolean>;
}

export interface Resolver {
  /** A tag or digest (as this target spells references) to the descriptor of its manifest/index. */
  resolve(reference: string, opts?: FetchOptions): Promise<Descriptor>;
}

export interface Tagger {
  /** Point `reference` at `desc`, which must already be stored. */
  tag(desc: Descriptor, reference: string, opts?: FetchOptions): Promise<void>;
}

export interface ReferrerLister {
  /** Manifests whose `subject` is `desc`, optionally only those of one artifactType. */
  referrers(desc: Descriptor, artifactType?: string, opts?: FetchOptions): Promise<Descriptor[]>;
}

export interface TagLister {
  tags(opts?: FetchOptions): Promise<string[]>;
}

/** Storage + resolver + tagger: what copy() reads from and writes to. */
export interface Target extends Storage, Resolver, Tagger {
  /** Human-readable name for messages, e.g. `oci:/media/usb/layout` or `docker://host/repo`. */
  readonly name: string;
  referrers?: ReferrerLister['referrers'];
  tags?: TagLister['tags'];
  fetchRange?: RangeFetcher['fetchRange'];
  openRange?: RangeFetcher['openRange'];
  /**
   * Store a finished local file as the blob `desc`, moving it where it can (a build's layer files):
   * no second copy of the bytes through a stream. The file is no longer the caller's afterwards.
   * The caller vouches for the digest (it hashed the bytes as it wrote them); the size is checked.
   */
  pushFile?(desc: Descriptor, file: string, opts?: PushOptions): Promise<void>;
  /**
   * A blob read by the consumer into buffers of its own (blob-reader.ts); unverified, like
   * fetch(). Sources that can fill a consumer's buffer without allocating have it: files (an
   * `oci:` layout) and registries (a body read from one buffer per connection).
   */
  openBlob?(desc: Descriptor, opts?: FetchOptions): Promise<BlobReader>;
  /**
   * Store a blob by reading it from `open()`'s reader into the destination's own buffers (no
   * allocation per chunk); `open` is called again when a cut transfer starts over. The bytes
   * are verified like push()'s. copy() uses it where the source has openBlob().
   */
  pushFrom?(desc: Descriptor, open: () => Promise<BlobReader>, opts?: PushOptions): Promise<void>;
  /**
   * The image meant when a reference names none (an `oci:` layout holding exactly one image).
   * Targets without such a notion leave it out; copy() then needs a reference.
   */
  resolveDefault?(opts?: FetchOptions): Promise<Descriptor>;
  /** Flush and release (oci-archive writes its tar here). */
  close?(): Promise<void>;
}
