/**
 * Fetching files' frames by range into a content store, verified before they are stored.
 *
 * Requests run a bounded number at a time. A request of several files (coalesced, at most
 * `maxSpan` bytes) is read through a window (span-window.ts), each file's frame(s) decompressed
 * and checked against the TOC's sha256 and size, and only then written to the store (named by
 * digest). A single file larger than `maxSpan` is decoded as it comes (through the window where
 * the source reads into the caller's buffers, else as a stream) into a temporary file of the
 * store that is renamed to its digest only when the hash matched. The store is a plain
 * directory (under the tiu cache, on /var): nothing reaches a snapshot from here until the
 * apply takes it.
 */
import { createHash } from 'node:crypto';
import { closeSync, constants, openSync, rmSync } from 'node:fs';
import { mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises';
import { removeAll } from '../../util/remove-all.ts';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type { Target } from '../../content/interfaces.ts';
import { streamReader } from '../../content/blob-reader.ts';
import type { Descriptor } from '../../oci/types.ts';
import { showPath } from '../../layer/entry.ts';
import { zstdDecompressBufferSync, zstdDecompressFrames, zstdFrameSpans } from '../../layer/zstd-frames.ts';
import { createZstdDecompress, zstdDecompressSync, type ZstdDecompress } from 'node:zlib';
import { isTiuError } from '../../errors.ts';
import { hashFile } from '../apply/scan.ts';
import { DigestSet } from '../apply/digest-set.ts';
import type { ContentProvider } from '../apply/content.ts';
import type { TreeEntry } from '../../layer/entry.ts';
import { writeSparse, writeSparseSync } from '../apply/fsops.ts';
import { DeltaError } from './errors.ts';
import { forEachBounded } from '../../util/semaphore.ts';
import { BufferPool, freeNow } from '../../util/buffer-pool.ts';
import { ByteBudget } from '../../util/byte-budget.ts';
import { coalesce, DEFAULT_MAX_SPAN, type CoalesceOptions, type FetchRange } from './ranges.ts';
import { SpanWindow, WINDOW_MIN, windowSize } from './span-window.ts';

export const DEFAULT_CONCURRENCY = 4;
/**
 * Bytes the requests in flight may hold at once: their responses and the files decompressed
 * from them (downloadCost). Bounded by bytes, not only by count: four coalesced 4 MiB spans
 * with a large file each held over 50 MiB of Buffers in a first install of the bench's Debian
 * tree; small requests still run four at a time.
 */
export const DEFAULT_MEMORY_BUDGET = 12 * 1024 * 1024;
/** What one streamed file holds at a time (a response piece, the decompressor's window and output). */
const STREAM_COST = 1024 * 1024;
/** Files handed to the apply at once. */
const TAKE_CONCURRENCY = 4;

/**
 * Verified file contents by sha256, in a directory. Everything the store answers `has` for was
 * verified by this process, so the apply can reflink the files into the snapshot without
 * reading them again: `open` empties what an earlier run left, or, resuming, keeps only the
 * files whose content hashes to their name (a download the network cut off goes on from there).
 */
export class ContentStore {
  readonly dir: string;
  #n = 0;
  /** Digests stored (by this process, or verified by it when resuming): as bytes, one per file of an image. */
  readonly #stored = new DigestSet();
  /** What `open` kept from an earlier run (resume). */
  readonly resumed = { files: 0, bytes: 0 };
  private constructor(dir: string) {
    this.dir = dir;
  }

  static async open(dir: string, opts: { resume?: boolean } = {}): Promise<ContentStore> {
    if (!opts.resume) await removeAll(dir);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const store = new ContentStore(dir);
    if (opts.resume) await store.#verifyLeftovers();
    return store;
  }

  /** Keep the files of an earlier run that hash to their names; remove everything else. */
  async #verifyLeftovers(): Promise<void> {
    for (const d of await readdir(this.dir, { withFileTypes: true })) {
      const path = join(this.dir, d.name);
      if (d.isFile() && /^[0-9a-f]{64}$/.test(d.name) && (await hashFile(path)) === `sha256:${d.name}`) {
        this.#stored.add(`sha256:${d.name}`);
        this.resumed.files++;
        this.resumed.bytes += (await stat(path)).size;
        continue;
      }
      await removeAll(path);
    }
  }

  /** Digests in the store. */
  get size(): number {
    return this.#stored.size;
  }

  path(digest: string): string {
    return join(this.dir, digest.replace(/^sha256:/, ''));
  }

  has(digest: string): boolean {
    return this.#stored.has(digest);
  }

  /**
   * Store verified content (zero blocks become holes, as the apply would write them). Not an
   * async function on purpose: that would keep `data` alive in its frame across the turn it
   * yields, long enough for V8 to move it to the old generation, where dead file contents
   * piled up by the tens of MiB before a full collection.
   */
  put(digest: string, data: Buffer): Promise<void> {
    // The same content may come in two requests at once: the write below is synchronous, so
    // the second put finds it stored.
    if (this.#stored.has(digest)) return Promise.resolve();
    // Synchronous calls: the files are mostly small, and a thread-pool round trip for each of
    // open, write and close cost more than the writes into the page cache.
    const path = this.path(digest);
    const fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    let ok = false;
    try {
      writeSparseSync(fd, data);
      ok = true;
    } finally {
      closeSync(fd);
      if (!ok) rmSync(path, { force: true });
    }
    this.#stored.add(digest);
    // let the downloads in flight make progress between files
    return new Promise((r) => setImmediate(r));
  }

  /** Take a verified temporary file (tmpPath) in as `digest`. */
  async adopt(tmp: string, digest: string): Promise<void> {
    await rename(tmp, this.path(digest));
    this.#stored.add(digest);
  }

  tmpPath(): string {
    return join(this.dir, `.tmp-${process.pid}-${++this.#n}`);
  }

  async remove(): Promise<void> {
    await removeAll(this.dir);
  }
}

export interface DownloadOptions {
  /** Requests in flight at once (default 4). */
  concurrency?: number;
  /** Bytes the requests in flight hold at most (default DEFAULT_MEMORY_BUDGET; one larger request runs alone). */
  memoryBudget?: number;
  maxSpan?: number;
  signal?: AbortSignal;
  /** Called with the compressed bytes of every response piece as it arrives. */
  onBytes?: (n: number) => void;
}

export interface DownloadStats {
  /** Compressed bytes received for file content. */
  bytes: number;
  requests: number;
  /** Files verified and stored. */
  files: number;
}

function mismatch(e: TreeEntry, why: string, actual?: string): DeltaError {
  return new DeltaError(
    'DELTA_FILE_MISMATCH',
    `content of /${showPath(e.path)} from layer ${(e.source?.layer ?? 0) + 1} does not match its table-of-contents digest ${e.digest}: ${why}`,
    {
      path: showPath(e.path),
      expected: e.digest,
      ...(actual ? { actual } : {}),
    },
  );
}

/**
 * Output buffers asked for at least this size are allocations of their own: Node hands out
 * smaller ones as slices of a shared slab (Buffer.poolSize), which must never be detached.
 */
const OWN_ALLOCATION = (Buffer.poolSize >>> 1) + 1;

/** The output buffer a file of `size` bytes is decoded into: its own allocation, one byte of room. */
function outputSize(size: number): number {
  const n = Math.max(size + 1, OWN_ALLOCATION);
  return n === Buffer.poolSize ? n + 1 : n; // never the slab's size: releaseOwned tells them apart by it
}

/** Decompress a file's frame(s) and check size and sha256; the verified content. */
function decodeVerified(e: TreeEntry, frames: Buffer): Buffer {
  let data: Buffer;
  try {
    // e.size is at most DECODE_WHOLE_MAX here and counted in the request's downloadCost. A
    // file of one frame (every file tiu builds) is decoded into one buffer of its own, which
    // storeDecoded gives back at once; frames of several chunks are joined as before.
    const spans = zstdFrameSpans(frames);
    data =
      spans.length === 1
        ? zstdDecompressSync(frames.subarray(spans[0]![0], spans[0]![1]), {
            maxOutputLength: e.size + 1,
            chunkSize: outputSize(e.size),
          })
        : zstdDecompressBufferSync(frames, e.size, e.size + 1);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (isTiuError(err, 'ZSTD_OUTPUT_TOO_LARGE') || code === 'ERR_BUFFER_TOO_LARGE')
      throw mismatch(e, `more than ${e.size} bytes`);
    throw mismatch(e, `its frame does not decompress (${(err as Error).message})`);
  }
  if (data.length !== e.size) throw mismatch(e, `${data.length} bytes instead of ${e.size}`);
  const actual = `sha256:${createHash('sha256').update(data).digest('hex')}`;
  if (actual !== e.digest) throw mismatch(e, 'the content differs', actual);
  return data;
}

/**
 * The windows requests read their bytes through are used again by the next request (a
 * BufferPool per download). A window lives while its response streams in (many event-loop
 * turns), so a fresh buffer per request ends up in V8's old generation, and garbage there is
 * only collected once tens of MiB of it have accumulated: a first install of the bench's Debian
 * tree (211 MiB in 4 MiB spans, then read whole) held over 50 MiB of dead spans.
 */
const WINDOW_POOL_MIN = 64 * 1024;

/**
 * Files declared larger than this are never decompressed into memory: they stream into a
 * temporary file of the store, whatever their compressed size. Below it, the in-memory path
 * grows with what actually comes out, up to the declared size (see zstdDecompressBufferSync).
 */
export const IN_MEMORY_FILE_MAX = 4 * 1024 * 1024;

/**
 * Files declared larger than this are decoded as their frame comes through the window, in
 * pieces of DECODE_CHUNK hashed and written to the store, instead of reading the frame whole
 * (the window grown to it) and decoding it into one buffer of the file's size: on the bench's
 * base tree, requests holding such windows were 10-15 MiB of ArrayBuffers at the download's
 * peak. The 64 files above it there cost a stream each; the thousands below keep one call.
 */
export const DECODE_WHOLE_MAX = 1024 * 1024;
/** Output piece of a file decoded in pieces (and so its share of a request's memory, doubled). */
const DECODE_CHUNK = 128 * 1024;

/**
 * The memory a request of `r` holds while it runs: the window its bytes are read through
 * (span-window.ts: its largest frame, at least WINDOW_MIN, at most the span) and the largest
 * file decompressed from it (one at a time); a single file larger than `maxSpan` streams.
 */
export function downloadCost(r: FetchRange, maxSpan: number = DEFAULT_MAX_SPAN): number {
  if (isLoneLargeFile(r, maxSpan)) return STREAM_COST;
  let file = 0;
  for (const e of r.entries) file = Math.max(file, e.size > DECODE_WHOLE_MAX ? STREAM_COST : e.size);
  return requestWindow(r) + file;
}

/**
 * A request of one file larger than `maxSpan`: never read into a window of its size. Where the
 * source reads into the caller's buffers (openRange) it goes through a window of WINDOW_MIN
 * like the files decoded in pieces (its frame's bytes are more than DECODE_WHOLE_MAX, so
 * requestWindow does not grow it); otherwise it streams. Counted as a stream either way. The
 * stream allocates a Buffer per chunk: 96 MiB of them, left to the collector, in a first install
 * of the bench's larger tree.
 */
function isLoneLargeFile(r: FetchRange, maxSpan: number): boolean {
  return r.entries.length === 1 && r.end - r.start > maxSpan;
}

/**
 * The window request `r` is read through: large enough for the frames decoded whole (files of
 * at most DECODE_WHOLE_MAX); larger files' frames stream through it in pieces.
 */
function requestWindow(r: FetchRange): number {
  let frame = 0;
  for (const e of r.entries)
    if (e.size <= DECODE_WHOLE_MAX) frame = Math.max(frame, e.source!.endOffset! - e.source!.offset!);
  return windowSize(r.start, r.end, frame);
}

/**
 * Stream one file's frame(s) through the decompressor into a temporary file of the store,
 * hashing; adopted under its digest only when size and sha256 match. Output past the declared
 * size stops the decompression at once (DELTA_FILE_MISMATCH): memory stays bounded by a block.
 */
async function streamIntoStore(
  e: TreeEntry,
  frames: AsyncIterable<Buffer> | Readable,
  store: ContentStore,
  signal: AbortSignal,
  decode: (frames: AsyncIterable<Buffer> | Readable) => AsyncIterable<Buffer> = zstdDecompressFrames,
  shortIsFrames = false,
): Promise<'stored' | 'short'> {
  const tmp = store.tmpPath();
  const fh = await open(tmp, 'wx', 0o600);
  const h = createHash('sha256');
  let got = 0;
  let ok = false;
  try {
    try {
      for await (const c of decode(frames)) {
        got += c.length;
        if (got > e.size) throw mismatch(e, `more than ${e.size} bytes`);
        h.update(c);
        try {
          await writeSparse(fh, c, got - c.length);
        } catch (err) {
          // The store's disk, not the content: not a mismatch (a full disk becomes DISK_FULL).
          throw new DeltaError(
            'DELTA_STORE_WRITE_FAILED',
            `cannot write /${showPath(e.path)} into the content store ${store.dir}: ${(err as Error).message}`,
            { path: showPath(e.path) },
            { cause: err },
          );
        }
      }
    } catch (err) {
      if (err instanceof DeltaError || signal.aborted || isTiuError(err)) throw err;
      throw mismatch(e, `its frame does not decompress (${(err as Error).message})`);
    }
    // decodeInPieces decodes one frame: less than declared may be a file in several frames.
    if (got < e.size && shortIsFrames) return 'short';
    if (got !== e.size) throw mismatch(e, `${got} bytes instead of ${e.size}`);
    const actual = `sha256:${h.digest('hex')}`;
    if (actual !== e.digest) throw mismatch(e, 'the content differs', actual);
    await fh.truncate(got);
    ok = true;
  } finally {
    await fh.close();
    if (!ok) await rm(tmp, { force: true });
  }
  await store.adopt(tmp, e.digest);
  return 'stored';
}

/** A range's chunks as Buffers, each counted as it arrives (the download's byte tally). */
async function* counted(raw: AsyncIterable<unknown>, count: (n: number) => void): AsyncGenerator<Buffer> {
  for await (const c of raw) {
    const b = Buffer.isBuffer(c) ? c : Buffer.from(c as Uint8Array);
    count(b.length);
    yield b;
  }
}

/** One file's frames fetched on their own and streamed frame by frame into the store. */
async function refetchFile(
  source: Target,
  desc: Descriptor,
  e: TreeEntry,
  store: ContentStore,
  signal: AbortSignal,
  count: (n: number) => void,
): Promise<void> {
  const raw = await source.fetchRange!(desc, e.source!.offset!, e.source!.endOffset!, { signal });
  await streamIntoStore(e, counted(raw, count), store, signal);
}

async function fetchOne(
  source: Target,
  layers: readonly Descriptor[],
  r: FetchRange,
  store: ContentStore,
  maxSpan: number,
  signal: AbortSignal,
  count: (n: number) => void,
  windows: BufferPool,
): Promise<number> {
  const desc = layers[r.layer];
  if (!desc) throw new DeltaError('DELTA_CONTENT_MISSING', `layer ${r.layer + 1} is not in the manifest`);
  // A frame that declares at most DECODE_WHOLE_MAX bytes of content would be read whole into
  // the window, however large it is (hostile TOC): such a request streams whatever the source.
  if (isLoneLargeFile(r, maxSpan) && !(source.openRange && r.entries[0]!.size > DECODE_WHOLE_MAX)) {
    const raw = await source.fetchRange!(desc, r.start, r.end, { signal });
    // One large file: stream it through the decompressor into a temporary file, hashing.
    await streamIntoStore(r.entries[0]!, counted(raw, count), store, signal);
    return 1;
  }
  const reader = source.openRange
    ? await source.openRange(desc, r.start, r.end, { signal })
    : streamReader(await source.fetchRange!(desc, r.start, r.end, { signal }));
  const window = new SpanWindow(reader, r, requestWindow(r), windows, count);
  try {
    const again = (e: TreeEntry): Promise<void> => refetchFile(source, desc, e, store, signal, count);
    return await storeFrames(desc, r, window, store, signal, again);
  } finally {
    window.dispose();
    await reader.close();
  }
}

/**
 * A small file decoded, verified and written to the store, its content's memory returned at
 * once. Garbage to the collector otherwise: a young Buffer costs the heap a few bytes, so
 * thousands of decoded files passed before a scavenge found them, 10-20 MiB of dead content at
 * a time through a first install's download.
 */
function storeDecoded(store: ContentStore, e: TreeEntry, frames: Buffer): Promise<void> {
  const data = decodeVerified(e, frames);
  const done = store.put(e.digest!, data);
  releaseOwned(data, outputSize(e.size));
  return done;
}

/**
 * Detach `buf`'s memory when it is the start of an ArrayBuffer of exactly `allocated` bytes, the
 * output buffer decodeVerified had zstd allocate for this file alone (larger than Node's slab
 * slices, and never the slab's size): nothing else views it. Anything else (a joined copy of
 * several frames) is left to the collector.
 */
function releaseOwned(buf: Buffer, allocated: number): void {
  const ab = buf.buffer;
  if (ab instanceof ArrayBuffer && buf.byteOffset === 0 && ab.byteLength === allocated && allocated !== Buffer.poolSize)
    ab.transfer(0);
}

/**
 * Free a decoder's output piece when it covers its whole ArrayBuffer: the decoder filled that
 * buffer and took a new one for what follows, so nothing else views it. A shorter piece shares
 * its buffer with the decoder's next output and is left to the collector.
 */
function releaseFullPiece(piece: Buffer): void {
  if (piece.length === piece.buffer.byteLength) freeNow(piece);
}

/**
 * One frame's content from pieces (views a window reuses), DECODE_CHUNK at a time. A piece is
 * written to the decompressor only once the previous one was consumed, so the window may take
 * the next bytes in its place. Exported for its tests.
 */
export async function* decodeInPieces(
  pieces: AsyncIterable<Buffer> | Readable,
  decoder: (chunkSize: number) => ZstdDecompress = (chunkSize) => createZstdDecompress({ chunkSize }),
): AsyncGenerator<Buffer> {
  const d = decoder(DECODE_CHUNK);
  const it = (pieces as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  // The read of the window in progress: awaited before the window is handed on.
  let reading: Promise<unknown> = Promise.resolve();
  let fed = 0;
  const feeding = (async () => {
    // Checked before every read: once the decoding stopped, the window is not read into again.
    while (!d.destroyed) {
      const next = it.next();
      reading = next;
      const n = await next;
      if (n.done) return void d.end();
      if (d.destroyed) return;
      await new Promise<void>((res, rej) => d.write(n.value, (err) => (err ? rej(err) : res())));
      // Input left unconsumed: the frame ended inside this piece and Node's decoder ended its
      // output. What follows is the middle of the next frame (the rest of this piece was
      // dropped): written on, it failed the decode ("Unknown frame descriptor") whenever it
      // came before the consumer had read the output to its end.
      fed += n.value.length;
      if (d.bytesWritten < fed) return;
    }
  })();
  feeding.catch((err: unknown) => d.destroy(err as Error));
  try {
    for await (const chunk of d as AsyncIterable<Buffer>) {
      yield chunk;
      // The consumer has hashed and written it (it asks for the next one only then). Left to the
      // collector, these 128 KiB outputs were the download's largest garbage: a first install of
      // the bench's larger tree decodes 636 MiB of large files (192 over 1 MiB) this way.
      releaseFullPiece(chunk);
    }
  } finally {
    // Node's decoder ends with the first frame and may leave the last write unanswered: the
    // feeder is not waited for, only its read of the window (a destroyed decoder is written no more).
    d.destroy();
    await reading.catch(() => undefined);
  }
}

/**
 * A file's one frame, held in `frame`, decoded by `decoder` (made for DECODE_CHUNK pieces) as it
 * is hashed and written into the store: the content is never held whole. For a delta artifact's
 * patch of a file over DECODE_WHOLE_MAX (its decoder has the old file as dictionary). A content
 * that differs from `e` is DELTA_CONTENT_MISMATCH; a failed write DELTA_STORE_WRITE_FAILED.
 */
export async function storeInPieces(
  e: TreeEntry,
  frame: Buffer,
  store: ContentStore,
  signal: AbortSignal,
  decoder: (chunkSize: number) => ZstdDecompress,
): Promise<void> {
  await streamIntoStore(e, Readable.from([frame], { objectMode: false }), store, signal, (pieces) =>
    decodeInPieces(pieces, decoder),
  );
}

function short(desc: Descriptor, r: FetchRange, got: number): DeltaError {
  return new DeltaError(
    'DELTA_RANGE_SHORT',
    `bytes ${r.start}-${r.end - 1} of layer ${desc.digest}: got ${got} of ${r.end - r.start}`,
    { digest: desc.digest, start: r.start, end: r.end, got },
  );
}

/**
 * The files of request `r`, frame by frame as its bytes come through `window`, each verified
 * and stored; how many were stored. A file is stored only once its own sha256 matched, so
 * the ones before a short or overlong answer are kept (the answer is refused all the same).
 */
async function storeFrames(
  desc: Descriptor,
  r: FetchRange,
  window: SpanWindow,
  store: ContentStore,
  signal: AbortSignal,
  refetch: (e: TreeEntry) => Promise<void>,
): Promise<number> {
  let stored = 0;
  for (const e of r.entries) {
    if (store.has(e.digest!)) continue;
    const [s, end] = [e.source!.offset!, e.source!.endOffset!];
    if (e.size > DECODE_WHOLE_MAX) {
      // Decoded as its bytes come through the window, DECODE_CHUNK at a time into the store: a
      // large file is never in memory whole, neither its frame nor its content.
      let got: 'stored' | 'short';
      try {
        got = await streamIntoStore(e, window.pieces(s, end), store, signal, decodeInPieces, true);
      } catch (err) {
        if (window.short) throw short(desc, r, window.got);
        throw err;
      }
      if (window.short) throw short(desc, r, window.got);
      // Its first frame held less than the file: several frames (containers/storage's chunks),
      // which Node's decoder does not run on through. Fetched again alone, frame by frame.
      if (got === 'short') await refetch(e);
    } else {
      const frames = await window.bytes(s, end);
      if (!frames) throw short(desc, r, window.got);
      await storeDecoded(store, e, frames);
    }
    stored++;
  }
  const got = await window.finish();
  if (got !== r.end - r.start) throw short(desc, r, got);
  return stored;
}

/** Fetch `ranges` of the image's layers into `store`, a bounded number at a time. */
export async function downloadRanges(
  source: Target,
  layers: readonly Descriptor[],
  ranges: readonly FetchRange[],
  store: ContentStore,
  opts: DownloadOptions = {},
): Promise<DownloadStats> {
  if (ranges.length && !source.fetchRange)
    throw new DeltaError('DELTA_NOT_POSSIBLE', `${source.name} does not serve byte ranges`);
  const stats: DownloadStats = { bytes: 0, requests: 0, files: 0 };
  const stop = new AbortController();
  const signal = opts.signal ? AbortSignal.any([opts.signal, stop.signal]) : stop.signal;
  const maxSpan = opts.maxSpan ?? DEFAULT_MAX_SPAN;
  const count = (n: number): void => {
    stats.bytes += n;
    opts.onBytes?.(n);
  };
  const budgetBytes = opts.memoryBudget ?? DEFAULT_MEMORY_BUDGET;
  const budget = new ByteBudget(budgetBytes);
  const concurrency = opts.concurrency ?? DEFAULT_CONCURRENCY;
  // The windows in flight are what the budget counts; a few small ones are kept for the next
  // requests, larger ones (a large frame's) are given back to the system as soon as their
  // request is done, and the rest when the download ends: left to the collector, they outlived
  // it (~17 MiB at a first install's apply) and piled up beside the windows in flight.
  const windows = new BufferPool(WINDOW_POOL_MIN, concurrency * WINDOW_MIN, { detachExcess: true });
  try {
    await forEachBounded(
      ranges,
      concurrency,
      (r) =>
        budget.run(downloadCost(r, maxSpan), async () => {
          stats.requests++;
          const stored = await fetchOne(source, layers, r, store, maxSpan, signal, count, windows);
          stats.files += stored; // not `+= await`: that reads stats.files before the await
        }),
      (e) => stop.abort(e),
    );
  } finally {
    windows.release();
  }
  return stats;
}

/**
 * The content provider of the apply: files come from the store; what the store lacks (the
 * apply's plan may differ a little from the one the download was made for) is fetched first,
 * the same way, and counted in `extra`.
 */
export function storeProvider(
  source: Target,
  layers: readonly Descriptor[],
  store: ContentStore,
  opts: DownloadOptions & { coalesce?: CoalesceOptions } = {},
): ContentProvider & { extra: DownloadStats } {
  const extra: DownloadStats = { bytes: 0, requests: 0, files: 0 };
  return {
    extra,
    async deliver(entries, take) {
      // Only the digests the store lacks are remembered (a set of every digest asked for held
      // ~50 bytes a file of a first install through its delivery; the store lacks none then).
      const missing: TreeEntry[] = [];
      const lacking = new DigestSet();
      for (const e of entries) {
        if (e.size === 0 || !e.digest || store.has(e.digest) || lacking.has(e.digest)) continue;
        lacking.add(e.digest);
        missing.push(e);
      }
      if (missing.length) {
        const s = await downloadRanges(source, layers, coalesce(missing, opts.coalesce), store, opts);
        extra.bytes += s.bytes;
        extra.requests += s.requests;
        extra.files += s.files;
      }
      for (const e of entries) {
        if (e.size > 0 && (!e.digest || !store.has(e.digest)))
          throw new DeltaError(
            'DELTA_CONTENT_MISSING',
            `no verified content for /${showPath(e.path)} (${e.digest ?? 'no digest'})`,
            { path: showPath(e.path) },
          );
      }
      // A few at a time: each is a reflink, whose cost is mostly waiting on the filesystem.
      // The first failure stops the others, and all have finished before it is thrown.
      await forEachBounded(entries, TAKE_CONCURRENCY, (e) =>
        take(e, e.size === 0 ? Readable.from([]) : { verifiedFile: store.path(e.digest!) }),
      );
    },
  };
}
