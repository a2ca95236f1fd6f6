/**
 * copy(): one copy between any two Targets (DESIGN.md §2).
 *
 *  1. resolve the source reference to its root descriptor;
 *  2. opts.verify(src, root) (the signature policy) before anything reaches the destination;
 *  3. walk the graph children before parents (layers and config, then the manifest, then the
 *     index), skipping whatever the destination has already (the children of a manifest it
 *     has are still checked), at most `concurrency` blob
 *     transfers at a time, every byte checked by digest and size on the way;
 *  4. with `referrers`, the referrers of the root (and of their own referrers, recursively),
 *     plus cosign's tag-scheme attachments (sha256-<hex>.sig/.att/.sbom);
 *  5. only then the tag at the destination: a tag never points at incomplete content.
 * With `toOci` (an `oci:`/`oci-archive:` destination) a Docker manifest or list is written as
 * its OCI conversion (to-oci.ts) after its children: the returned root is the converted one.
 *
 * Failures are CopyError { code: COPY_FAILED (or the cause's DIGEST_MISMATCH, SIZE_MISMATCH,
 * REGISTRY_TOO_SLOW, DISK_FULL), op, origin: 'source' | 'destination' } with the
 * underlying error as `cause` and its code in details.causeCode.
 */
import { Readable } from 'node:stream';
import { TiuError, asError, isNoSpaceErrno, isTiuError, type ErrorCode } from '../errors.ts';
import { fetchManifest, fetchVerified, childrenOf } from '../content/graph.ts';
import { verifiedReader, type BlobReader } from '../content/blob-reader.ts';
import type { Target } from '../content/interfaces.ts';
import { Semaphore } from '../util/semaphore.ts';
import { isDigest, parseDigest, sha256, verifiedStream } from '../oci/digest.ts';
import { isManifestLike, MediaType } from '../oci/mediatypes.ts';
import type { Descriptor } from '../oci/types.ts';
import { MAX_CONFIG_BYTES, parseConfigBytes, type ParsedManifest } from '../oci/validate.ts';
import { dockerConfigToOci, dockerListToOci, dockerManifestToOci, needsOciConversion } from './to-oci.ts';
import { releaseRingBuffers } from '../util/ring-writer.ts';

export type CopyOp = 'resolve' | 'fetch' | 'exists' | 'push' | 'tag' | 'referrers';
export type CopyOrigin = 'source' | 'destination';

/**
 * Causes whose code the copy error keeps as its own (the README promises them at the top): a
 * blob that fails its digest or size, a registry below the minimum speed, a full disk. Otherwise
 * COPY_FAILED; `causeCode` (details.causeCode, error.cause.code in the CLI's --json) and
 * `op`/`origin` say the rest.
 */
const KEEP_CODE: ReadonlySet<ErrorCode> = new Set([
  'DIGEST_MISMATCH',
  'SIZE_MISMATCH',
  'REGISTRY_TOO_SLOW',
  'DISK_FULL',
]);

/** The code a copy error over `err` takes: a kept cause's, DISK_FULL for Node's ENOSPC, else COPY_FAILED. */
function copyCode(err: Error): ErrorCode {
  if (isTiuError(err)) return KEEP_CODE.has(err.code) ? err.code : 'COPY_FAILED';
  return isNoSpaceErrno(err) ? 'DISK_FULL' : 'COPY_FAILED';
}

export class CopyError extends TiuError {
  readonly op: CopyOp;
  readonly origin: CopyOrigin;
  constructor(op: CopyOp, origin: CopyOrigin, where: string, cause: unknown, digest?: string) {
    const err = asError(cause);
    const causeCode = isTiuError(err) ? err.code : ((err as NodeJS.ErrnoException).code ?? 'INTERNAL');
    const what = digest ? ` ${digest}` : '';
    const prep = origin === 'source' ? 'from' : 'to';
    const verb: Record<CopyOp, string> = {
      resolve: 'resolving',
      fetch: 'fetching',
      exists: 'checking',
      push: 'writing',
      tag: 'tagging',
      referrers: 'listing referrers of',
    };
    const side = op === 'resolve' || op === 'tag' || op === 'referrers' ? ` in ${where}` : ` ${prep} ${where}`;
    super(
      copyCode(err),
      `copy failed ${verb[op]}${what}${side}: ${err.message}`,
      {
        op,
        origin,
        target: where,
        ...(digest ? { digest } : {}),
        causeCode,
        ...(isTiuError(err) ? { cause: err.details } : {}),
      },
      { cause: err },
    );
    this.op = op;
    this.origin = origin;
  }
}

export type CopyEvent =
  | { type: 'blob-start'; desc: Descriptor }
  /** `bytes`: how many of the blob's bytes have passed so far; `total`: its size. */
  | { type: 'blob-bytes'; desc: Descriptor; bytes: number; total: number }
  | { type: 'blob-done'; desc: Descriptor }
  | { type: 'blob-skipped'; desc: Descriptor };

export interface CopyOptions {
  /** Copy referrers (signatures, SBOMs) of the image, and theirs, recursively. */
  referrers?: boolean;
  /** Blob transfers at a time (default 3). */
  concurrency?: number;
  onProgress?: (event: CopyEvent) => void;
  /**
   * Called with the resolved root before anything is written to the destination; throw to stop
   * the copy (the signature policy plugs in here). Its errors propagate unchanged.
   */
  verify?: (src: Target, root: Descriptor) => Promise<void>;
  /**
   * The destination takes only OCI manifests (an `oci:` layout, an `oci-archive:`): Docker
   * manifests and lists are written converted to OCI (src/copy/to-oci.ts), so their digests change.
   */
  toOci?: boolean;
  /** With `toOci`: refuse (CONVERSION_REFUSED) instead of converting, before anything is written. */
  preserveDigests?: boolean;
  signal?: AbortSignal;
}

export class ConversionRefusedError extends TiuError {
  constructor(desc: Descriptor, why: string) {
    super('CONVERSION_REFUSED', `${desc.digest} is a ${desc.mediaType}: ${why}`, {
      digest: desc.digest,
      mediaType: desc.mediaType,
    });
  }
}

function isAbortError(e: Error): boolean {
  return e.name === 'AbortError' || (e as NodeJS.ErrnoException).code === 'ABORT_ERR';
}

/** Cosign's tag-scheme attachments of a manifest: sha256-<hex>.sig and friends. */
export function cosignTags(digest: string): string[] {
  const { algorithm, hex } = parseDigest(digest);
  return ['sig', 'att', 'sbom'].map((s) => `${algorithm}-${hex}.${s}`);
}

async function step<T>(op: CopyOp, origin: CopyOrigin, t: Target, fn: () => Promise<T>, digest?: string): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof CopyError) throw e;
    throw new CopyError(op, origin, t.name, e, digest);
  }
}

class GraphCopier {
  readonly #src: Target;
  readonly #dst: Target;
  readonly #opts: CopyOptions;
  readonly #sem: Semaphore;
  /** Each node's copy, resolving to the descriptor written (another one where it was converted). */
  readonly #nodes = new Map<string, Promise<Descriptor>>();
  /** Source digests of manifests written converted: their referrers would name a digest the destination lacks. */
  readonly converted = new Set<string>();
  readonly #abort = new AbortController();
  readonly signal: AbortSignal;
  /** Every manifest/index reached, for referrers. */
  readonly manifests: Descriptor[] = [];
  #firstError: unknown;

  constructor(src: Target, dst: Target, opts: CopyOptions) {
    this.#src = src;
    this.#dst = dst;
    this.#opts = opts;
    this.#sem = new Semaphore(opts.concurrency ?? 3);
    this.signal = opts.signal ? AbortSignal.any([opts.signal, this.#abort.signal]) : this.#abort.signal;
  }

  #fail(e: unknown): never {
    if (this.#firstError === undefined) {
      this.#firstError = e;
      this.#abort.abort(e);
    }
    throw this.#firstError;
  }

  #emit(e: CopyEvent): void {
    this.#opts.onProgress?.(e);
  }

  copyNode(desc: Descriptor): Promise<Descriptor> {
    let p = this.#nodes.get(desc.digest);
    if (!p) {
      p = this.#copyNode(desc).catch((e: unknown) => this.#fail(e));
      this.#nodes.set(desc.digest, p);
    }
    return p;
  }

  /** Settle all, then throw the first failure: no transfer is still running when copy() returns. */
  async #all(descs: Descriptor[]): Promise<Descriptor[]> {
    const results = await Promise.allSettled(descs.map((d) => this.copyNode(d)));
    const written: Descriptor[] = [];
    for (const r of results) {
      if (r.status === 'rejected') throw this.#firstError ?? r.reason;
      written.push(r.value);
    }
    return written;
  }

  async #copyNode(desc: Descriptor): Promise<Descriptor> {
    const signal = this.signal;
    signal.throwIfAborted();
    const manifestLike = isManifestLike(desc.mediaType);
    if (manifestLike) this.manifests.push(desc);
    if (this.#opts.toOci && needsOciConversion(desc.mediaType)) return this.#convertNode(desc);
    // Lookups take a transfer slot too, so a wide index does not fire hundreds of requests at once.
    const has = await this.#sem.run(() =>
      step('exists', 'destination', this.#dst, () => this.#dst.exists(desc, { signal }), desc.digest),
    );
    if (has && !manifestLike) {
      this.#emit({ type: 'blob-skipped', desc });
      return desc;
    }
    if (manifestLike) {
      const { bytes, parsed } = await this.#sem.run(() =>
        step('fetch', 'source', this.#src, () => fetchManifest(this.#src, desc, { signal }), desc.digest),
      );
      // Children are checked even under a manifest the destination has: a layout someone
      // pruned, or an interrupted foreign tool, may hold a manifest without all its blobs,
      // and the tag set at the end must not point at incomplete content.
      await this.#all(childrenOf(parsed));
      if (has) {
        this.#emit({ type: 'blob-skipped', desc });
        return desc;
      }
      await this.#pushSmall(desc, bytes);
      return desc;
    }
    await this.#sem.run(() => this.#copyBlob(desc));
    return desc;
  }

  /** A manifest, index or config the copier holds whole, unless the destination has it. */
  async #pushSmall(desc: Descriptor, bytes: Buffer, skipIfPresent = false): Promise<void> {
    const signal = this.signal;
    await this.#sem.run(async () => {
      if (
        skipIfPresent &&
        (await step('exists', 'destination', this.#dst, () => this.#dst.exists(desc, { signal }), desc.digest))
      ) {
        this.#emit({ type: 'blob-skipped', desc });
        return;
      }
      this.#emit({ type: 'blob-start', desc });
      await step(
        'push',
        'destination',
        this.#dst,
        () => this.#dst.push(desc, Readable.from([bytes]), { signal }),
        desc.digest,
      );
      this.#emit({ type: 'blob-bytes', desc, bytes: bytes.length, total: desc.size });
      this.#emit({ type: 'blob-done', desc });
    });
  }

  /**
   * A Docker manifest or list written as OCI: its layers (or manifests) first, as always, then
   * the converted config, then the converted document. Returns the converted descriptor.
   */
  async #convertNode(desc: Descriptor): Promise<Descriptor> {
    const signal = this.signal;
    if (this.#opts.preserveDigests)
      throw new ConversionRefusedError(
        desc,
        'the destination takes only OCI, and converting it would change its digest (--preserve-digests)',
      );
    this.converted.add(desc.digest);
    const { parsed } = await this.#sem.run(() =>
      step('fetch', 'source', this.#src, () => fetchManifest(this.#src, desc, { signal }), desc.digest),
    );
    const out = await this.#convertParsed(desc, parsed);
    if (desc.platform) out.desc.platform = desc.platform;
    await this.#pushSmall(out.desc, out.bytes, true);
    return out.desc;
  }

  async #convertParsed(desc: Descriptor, parsed: ParsedManifest): Promise<{ desc: Descriptor; bytes: Buffer }> {
    const signal = this.signal;
    if (parsed.kind === 'index') {
      const written = await this.#all(parsed.index.manifests);
      const byDigest = new Map(parsed.index.manifests.map((m, i) => [m.digest, written[i]!]));
      return this.#converting(desc, () => dockerListToOci(parsed.index, byDigest));
    }
    const { manifest } = parsed;
    await this.#all(manifest.layers);
    const configBytes = await this.#sem.run(() =>
      step(
        'fetch',
        'source',
        this.#src,
        async () => {
          const b = await fetchVerified(this.#src, manifest.config, MAX_CONFIG_BYTES, { signal });
          parseConfigBytes(b);
          return b;
        },
        manifest.config.digest,
      ),
    );
    const ociConfig = await this.#converting(manifest.config, () => dockerConfigToOci(configBytes));
    const config: Descriptor = { mediaType: MediaType.OciConfig, digest: sha256(ociConfig), size: ociConfig.length };
    await this.#pushSmall(config, ociConfig, true);
    return this.#converting(desc, () => dockerManifestToOci(manifest, config));
  }

  /** A conversion step; its failure is a copy failure naming the document (COPY_FAILED <- CONVERSION_UNSUPPORTED). */
  #converting<T>(desc: Descriptor, convert: () => T): Promise<T> {
    return step('push', 'destination', this.#dst, () => Promise.resolve(convert()), desc.digest);
  }

  async #copyBlob(desc: Descriptor): Promise<void> {
    const signal = this.signal;
    signal.throwIfAborted();
    this.#emit({ type: 'blob-start', desc });
    if (this.#src.openBlob && this.#dst.pushFrom) return this.#copyBlobRead(desc);
    const stream = await step('fetch', 'source', this.#src, () => this.#src.fetch(desc, { signal }), desc.digest);
    let srcErr: Error | undefined;
    // One verification of the bytes on their way: a source that verifies as it streams (a
    // registry) hands out a VerifyingStream of this descriptor, which is used as it is, and
    // destinations do not hash a VerifyingStream of the descriptor they store again.
    stream.on('error', (e) => {
      srcErr ??= e;
    });
    const verifier = verifiedStream(stream, desc, 'blob');
    verifier.on('error', (e) => {
      srcErr ??= e;
    });
    let passed = 0;
    const onBytes = (n: number): void => {
      passed += n;
      this.#emit({ type: 'blob-bytes', desc, bytes: passed, total: desc.size });
    };
    try {
      // A destination that has to start over (a cut upload) reads the source again.
      const reopen = async (): Promise<Readable> => {
        passed = 0;
        const again = await this.#src.fetch(desc, { signal });
        again.on('error', (e) => {
          srcErr ??= e;
        });
        return again;
      };
      await this.#dst.push(desc, verifier, { signal, onBytes, reopen });
    } catch (e) {
      stream.destroy();
      // A destination that fails (a full disk) destroys the source stream on its way out, which
      // then reports an abort: that is not the source's fault.
      if (srcErr && !isAbortError(srcErr)) throw new CopyError('fetch', 'source', this.#src.name, srcErr, desc.digest);
      throw new CopyError('push', 'destination', this.#dst.name, e, desc.digest);
    }
    if (srcErr) throw new CopyError('fetch', 'source', this.#src.name, srcErr, desc.digest);
    this.#emit({ type: 'blob-done', desc });
  }

  /**
   * A blob read by the destination into buffers of its own (Target.openBlob/pushFrom: a
   * layout's file, a registry's body): no Buffer per chunk on its way. The reader is verified by digest
   * and size as it is read; its failures (and a failed verification) are the source's.
   */
  async #copyBlobRead(desc: Descriptor): Promise<void> {
    const signal = this.signal;
    const src = this.#src;
    let srcErr: unknown;
    const failed = (e: unknown): void => {
      srcErr ??= e;
    };
    let passed = 0;
    const onBytes = (n: number): void => {
      passed += n;
      this.#emit({ type: 'blob-bytes', desc, bytes: passed, total: desc.size });
    };
    // called again when the destination starts over
    const open = async (): Promise<BlobReader> => {
      passed = 0;
      try {
        return verifiedReader(await src.openBlob!(desc, { signal }), desc, 'blob', failed);
      } catch (e) {
        failed(e);
        throw e;
      }
    };
    try {
      await this.#dst.pushFrom!(desc, open, { signal, onBytes });
    } catch (e) {
      if (srcErr !== undefined) throw new CopyError('fetch', 'source', src.name, srcErr, desc.digest);
      throw new CopyError('push', 'destination', this.#dst.name, e, desc.digest);
    }
    this.#emit({ type: 'blob-done', desc });
  }

  /** Referrers of `subject` (and theirs), and cosign tag-scheme attachments. */
  async copyReferrers(subject: Descriptor, seen: Set<string>): Promise<void> {
    if (seen.has(subject.digest)) return;
    seen.add(subject.digest);
    const signal = this.signal;
    const found: { desc: Descriptor; tag?: string }[] = [];
    const src = this.#src;
    if (src.referrers) {
      const list = await step(
        'referrers',
        'source',
        src,
        () => src.referrers!(subject, undefined, { signal }),
        subject.digest,
      );
      for (const d of list) found.push({ desc: { mediaType: d.mediaType, digest: d.digest, size: d.size } });
    }
    for (const tag of cosignTags(subject.digest)) {
      try {
        found.push({ desc: await src.resolve(tag, { signal }), tag });
      } catch (e) {
        if (isTiuError(e, 'CONTENT_NOT_FOUND')) continue;
        throw new CopyError('resolve', 'source', src.name, e, subject.digest);
      }
    }
    if (found.length > 0 && this.converted.has(subject.digest))
      throw new ConversionRefusedError(
        subject,
        `it has ${found.length} referrer(s) (signatures, attestations) naming this digest, which the OCI conversion the destination needs would change`,
      );
    for (const f of found) {
      await this.copyNode(f.desc);
      if (f.tag !== undefined) {
        const tag = f.tag;
        await step('tag', 'destination', this.#dst, () => this.#dst.tag(f.desc, tag, { signal }), f.desc.digest);
      }
      await this.copyReferrers(f.desc, seen);
    }
  }
}

/**
 * Copy the image `srcRef` names in `src` to `dst`, tagged `dstRef` there. Without `dstRef`, a
 * source tag is reused; a source digest leaves the copy untagged. Without `srcRef`, the source's
 * only image (resolveDefault). Returns the root descriptor as written (converted with `toOci`).
 */
export async function copy(
  src: Target,
  srcRef: string | undefined,
  dst: Target,
  dstRef: string | undefined,
  opts: CopyOptions = {},
): Promise<Descriptor> {
  const root = await step('resolve', 'source', src, async () => {
    if (srcRef !== undefined) return src.resolve(srcRef, { signal: opts.signal });
    if (!src.resolveDefault)
      throw new TiuError('REFERENCE_MISSING', `${src.name} needs a tag or digest to name the image`);
    return src.resolveDefault({ signal: opts.signal });
  });
  if (opts.toOci && opts.preserveDigests && needsOciConversion(root.mediaType))
    throw new ConversionRefusedError(
      root,
      'the destination takes only OCI, and converting it would change its digest (--preserve-digests)',
    );
  if (opts.verify) await opts.verify(src, root);
  const g = new GraphCopier(src, dst, opts);
  let written: Descriptor;
  try {
    written = await g.copyNode(root);
    if (opts.referrers) {
      const seen = new Set<string>();
      for (const m of [...g.manifests]) await g.copyReferrers(m, seen);
    }
  } catch (e) {
    if (opts.signal?.aborted && !(e instanceof CopyError))
      throw new TiuError(
        'ABORTED',
        `copy of ${root.digest} to ${dst.name} was aborted`,
        { digest: root.digest },
        { cause: e },
      );
    throw e;
  } finally {
    // Every blob of this copy is written: the ring buffers it kept for a next blob go now.
    releaseRingBuffers();
  }
  if (opts.signal?.aborted)
    throw new TiuError('ABORTED', `copy of ${root.digest} to ${dst.name} was aborted before tagging`, {
      digest: root.digest,
    });
  const name = dstRef ?? (srcRef !== undefined && !isDigest(srcRef) ? srcRef : undefined);
  if (name !== undefined) {
    if (isDigest(name)) {
      if (name !== written.digest) {
        throw new CopyError(
          'tag',
          'destination',
          dst.name,
          new TiuError('DIGEST_MISMATCH', `the destination names ${name} but the image is ${written.digest}`),
          written.digest,
        );
      }
    } else {
      await step('tag', 'destination', dst, () => dst.tag(written, name, { signal: opts.signal }), written.digest);
    }
  }
  return written;
}
