/**
 * Writing one layer blob to a file, streaming: tar bytes are produced entry by entry, file
 * content is read from its source in bounded pieces, and both the uncompressed digest
 * (diff_id) and the blob digest are computed on the way.
 *
 * zstd (zstd:chunked): the tar headers between two files form one zstd frame, each regular
 * file's content its own frame, then the TOC, the tar-split data and the footer as skippable
 * frames (see toc.ts, tar-split.ts).
 * gzip: one plain gzip stream of the tar, no TOC.
 */
import { createHash, type Hash } from 'node:crypto';
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { once } from 'node:events';
import { constants as zc, createGzip, createZstdCompress, zstdCompress } from 'node:zlib';
import { promisify } from 'node:util';
import { sha256 } from '../oci/digest.ts';
import { BufferPool } from '../util/buffer-pool.ts';
import { Semaphore } from '../util/semaphore.ts';
import { MediaType } from '../oci/mediatypes.ts';
import { DeltaAnnotation } from '../patch/media.ts';
import type { Descriptor, Digest } from '../oci/types.ts';
import { BuildError } from './errors.ts';
import { contentFile, showPath, type TreeEntry } from '../layer/entry.ts';
import { encodeHeader, END_OF_ARCHIVE, paddingFor } from '../layer/tar.ts';
import { Crc64, TarSplitWriter } from '../layer/tar-split.ts';
import {
  encodeFooter,
  encodeToc,
  MANIFEST_TYPE_CRFS,
  SKIPPABLE_HEADER,
  skippableFrame,
  tocEntryOf,
  ZstdChunkedAnnotation,
  type Toc,
} from '../layer/toc.ts';

export type LayerCompression = 'zstd' | 'gzip';

export interface LayerResult {
  descriptor: Descriptor;
  diffId: Digest;
  /** Entries written and regular file bytes. */
  entries: number;
  contentBytes: number;
}

export interface LayerWriteOptions {
  compression: LayerCompression;
  /** zstd level (default 3) or gzip level (default 6). */
  level?: number;
  signal?: AbortSignal;
}

/** Files up to this size are read and compressed in one piece; larger ones stream. */
const WHOLE_FILE_LIMIT = 4 * 1024 * 1024;
/** Header frames are cut at this size (directories full of empty files). */
const HEADER_FRAME_LIMIT = 1024 * 1024;

/** A read error: gone (changed under us) or not readable (permissions: run as root). */
function readError(e: TreeEntry, err: unknown): BuildError {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOENT' || code === 'ENOTDIR') return changed(e, 'it disappeared');
  return new BuildError('BUILD_SOURCE_UNREADABLE', `cannot read /${showPath(e.path)}: ${(err as Error).message}`, {
    path: showPath(e.path),
    errno: code,
  });
}

function changed(e: TreeEntry, why: string): BuildError {
  return new BuildError('BUILD_SOURCE_CHANGED', `/${showPath(e.path)} changed while tiu was reading it (${why})`, {
    path: showPath(e.path),
  });
}

/** Read size of a file larger than WHOLE_FILE_LIMIT. */
const STREAM_PIECE = 1024 * 1024;

/**
 * The content of a large file in pieces read into the `buffers` in turn (each piece valid until
 * `buffers.length` more are asked for): exactly e.size bytes, or an error.
 */
function* filePieces(e: TreeEntry, buffers: readonly Buffer[]): Generator<Buffer> {
  if (e.content && 'data' in e.content) {
    if (e.content.data.length !== e.size) throw changed(e, 'size');
    yield e.content.data;
    return;
  }
  const { c, fd } = openContent(e);
  try {
    let got = 0;
    for (let k = 0; got < e.size; k++) {
      const piece = buffers[k % buffers.length]!;
      let n: number;
      try {
        n = readSync(fd, piece, 0, Math.min(piece.length, e.size - got), c.offset + got);
      } catch (err) {
        throw readError(e, err);
      }
      if (n === 0) throw changed(e, `expected ${e.size} bytes, read ${got}`);
      got += n;
      yield piece.subarray(0, n);
    }
    // One byte more would mean the file grew (a spool slice ends where the next begins).
    if (c.whole && readSync(fd, oneByte, 0, 1, c.offset + e.size) !== 0) throw changed(e, 'it grew');
  } finally {
    closeSync(fd);
  }
}

/**
 * The content of a small file, read into `into` (at least e.size bytes), or the entry's own
 * data when it has it in memory.
 */
function readWhole(e: TreeEntry, into: Buffer): Buffer {
  if (e.content && 'data' in e.content) {
    if (e.content.data.length !== e.size) throw changed(e, 'size');
    return e.content.data;
  }
  const buf = into.subarray(0, e.size);
  const { c, fd } = openContent(e);
  try {
    let got = 0;
    while (got < e.size) {
      const n = readSync(fd, buf, got, e.size - got, c.offset + got);
      if (n === 0) break;
      got += n;
    }
    if (got !== e.size) throw changed(e, `expected ${e.size} bytes, read ${got}`);
    // One byte more would mean the file grew.
    if (!c.whole || readSync(fd, oneByte, 0, 1, c.offset + e.size) === 0) return buf;
    throw changed(e, 'it grew');
  } finally {
    closeSync(fd);
  }
}

const oneByte = Buffer.alloc(1);

/** The file (or spool slice) holding an entry's content, opened for reading; the caller closes it. */
function openContent(e: TreeEntry): { c: NonNullable<ReturnType<typeof contentFile>>; fd: number } {
  const c = contentFile(e);
  if (!c) throw changed(e, 'no content');
  try {
    return { c, fd: openSync(c.file, 'r') };
  } catch (err) {
    throw readError(e, err);
  }
}

/** The member name as the tar header spells it (directories end in '/'). */
function tarName(e: TreeEntry): string {
  return e.type === 'dir' ? e.path + '/' : e.path;
}

class BlobFile {
  readonly fd: number;
  readonly hash: Hash = createHash('sha256');
  size = 0;
  constructor(path: string) {
    this.fd = openSync(path, 'w', 0o600);
  }
  write(b: Uint8Array): void {
    let off = 0;
    while (off < b.length) off += writeSync(this.fd, b, off, b.length - off);
    this.hash.update(b);
    this.size += b.length;
  }
  close(): Digest {
    closeSync(this.fd);
    return `sha256:${this.hash.digest('hex')}`;
  }
}

/**
 * A layer whose content is written; finish() adds what only the whole layer gives (the TOC,
 * tar-split and footer of zstd:chunked) and closes the file (also when it fails).
 */
export interface UnfinishedLayer {
  /**
   * `othersWritten`: resolves once the other layers' content is written. A large TOC is not
   * compressed before (see LARGE_TOC), so its level-19 tables never sit beside their contexts.
   */
  finish(othersWritten?: Promise<unknown>): Promise<LayerResult>;
}

/** Write the layer holding `entries` (sorted) to `file`. */
export async function writeLayer(
  entries: readonly TreeEntry[],
  file: string,
  opts: LayerWriteOptions,
): Promise<LayerResult> {
  return (await writeLayerContent(entries, file, opts)).finish();
}

/**
 * The first part of writeLayer: every entry written. A build finishes each layer once its
 * content is written, while other layers' content is still being written: the TOCs are
 * compressed at level 19, one at a time, the large ones only once no other layer's content is
 * being written (UnfinishedLayer.finish).
 */
export async function writeLayerContent(
  entries: readonly TreeEntry[],
  file: string,
  opts: LayerWriteOptions,
): Promise<UnfinishedLayer> {
  if (opts.compression === 'zstd') return writeZstdChunked(entries, file, opts);
  const done = await writeGzip(entries, file, opts);
  return { finish: () => Promise.resolve(done) };
}

/**
 * Output buffer of a zstd context. Each one that fills is a round trip between the thread pool
 * and this thread (node:zlib's default is 16 KiB: ~13,000 of them for the bench's base tree);
 * the output bytes do not depend on it.
 */
const OUTPUT_CHUNK = 128 * 1024;

/**
 * One zstd compression context, cut into independent frames with ZSTD_e_end flushes. (A fresh
 * context per file, as zstdCompressSync makes, leaves native memory for the garbage collector
 * to find: ~100 MB more on a 50k-file layer.) Output goes to whatever `sink` is at the time.
 */
class ZstdFramer {
  readonly #z: ReturnType<typeof createZstdCompress>;
  #error: Error | undefined;
  #open = false;
  sink: (b: Buffer) => void;
  constructor(params: Record<number, number>, sink: (b: Buffer) => void = () => undefined) {
    this.sink = sink;
    this.#z = createZstdCompress({ params, chunkSize: OUTPUT_CHUNK });
    this.#z.on('data', (b: Buffer) => this.sink(b));
    this.#z.on('error', (e) => (this.#error = e));
  }
  #check(): void {
    if (this.#error) throw this.#error;
  }
  /** Resolves once the compressor has taken all of `b` in: the caller may then reuse it. */
  async write(b: Buffer): Promise<void> {
    this.#check();
    if (b.length === 0) return;
    this.#open = true;
    await new Promise<void>((res, rej) => this.#z.write(b, (err) => (err ? rej(err) : res())));
    this.#check();
  }
  /** Write without waiting for the compressor (small side streams; their errors show in close()). */
  push(b: Buffer): void {
    if (b.length === 0) return;
    this.#open = true;
    this.#z.write(b);
  }
  /** End the current frame: everything written so far has reached the sink when this resolves. */
  async endFrame(): Promise<void> {
    if (!this.#open) return;
    await new Promise<void>((res) => this.#z.flush(zc.ZSTD_e_end, () => res()));
    this.#open = false;
    this.#check();
  }
  async close(): Promise<void> {
    await this.endFrame();
    this.#z.end();
    await once(this.#z, 'end').catch(() => undefined);
  }
  destroy(): void {
    this.#z.destroy();
  }
}

/**
 * Frames compressed in parallel and written in order. Every frame of a zstd:chunked layer is
 * independent (a file's content, or the tar headers between two files), so a few contexts in
 * the thread pool can work on consecutive frames at once while this thread reads and hashes the
 * next files; a layer that holds most of the tree (kernel modules) no longer compresses on one
 * core. At most `window` frames and `budget` bytes of input are pending (one frame at least):
 * they bound the memory, whatever the sizes of the files.
 */
class OrderedFrames {
  readonly #contexts: ZstdFramer[];
  /** Per context, the end of the work queued on it. */
  readonly #tails: Promise<unknown>[];
  #next = 0;
  readonly #pending: { out: Promise<Buffer[]>; size: number; written?: (start: number, end: number) => void }[] = [];
  #pendingBytes = 0;
  readonly #out: BlobFile;
  readonly window: number;
  readonly #budget: number;
  constructor(params: Record<number, number>, out: BlobFile, contexts: number, budget: number) {
    this.#contexts = Array.from({ length: contexts }, () => new ZstdFramer(params));
    this.#tails = this.#contexts.map(() => Promise.resolve());
    this.#out = out;
    this.window = contexts * 2;
    this.#budget = budget;
  }
  /**
   * Run `job` on the next context in turn. Frames go round the contexts in a fixed order, not
   * to whichever is free: zstd's output for a frame can depend on what its context compressed
   * before, and the layer must come out the same on every build.
   */
  #onNextContext<T>(job: (f: ZstdFramer) => Promise<T>): Promise<T> {
    const k = this.#next++ % this.#contexts.length;
    const run = this.#tails[k]!.then(() => job(this.#contexts[k]!));
    this.#tails[k] = run.catch(() => undefined);
    return run;
  }
  /**
   * Queue `data` as one frame (not reused by the caller until `written` has run); `written`
   * gets the frame's offsets in the blob. Waits while the window is full.
   */
  async add(data: Buffer, written?: (start: number, end: number) => void): Promise<void> {
    const out = this.#onNextContext(async (f) => {
      const chunks: Buffer[] = [];
      f.sink = (b) => chunks.push(b);
      await f.write(data);
      await f.endFrame();
      return chunks;
    });
    out.catch(() => undefined); // thrown where it is awaited, in order
    this.#pending.push({ out, size: data.length, ...(written ? { written } : {}) });
    this.#pendingBytes += data.length;
    await this.drain(this.window - 1);
  }
  /** Wait until `bytes` more input fit the budget (or nothing is pending): call before reading them. */
  async makeRoom(bytes: number): Promise<void> {
    while (this.#pending.length > 0 && this.#pendingBytes + bytes > this.#budget) await this.#writeFirst();
  }
  /** Write finished frames, in order, until at most `keep` are pending. */
  async drain(keep = 0): Promise<void> {
    while (this.#pending.length > keep) await this.#writeFirst();
  }
  async #writeFirst(): Promise<void> {
    const first = this.#pending[0]!;
    const chunks = await first.out;
    this.#pending.shift();
    this.#pendingBytes -= first.size;
    const start = this.#out.size;
    for (const c of chunks) this.#out.write(c);
    first.written?.(start, this.#out.size);
  }
  /**
   * One large frame streamed straight into the blob, after everything queued before it; `written`
   * as for add(). A piece must stay unchanged until the one after it has been taken.
   */
  async stream(
    pieces: Iterable<Buffer> | AsyncIterable<Buffer>,
    written: (start: number, end: number) => void,
  ): Promise<void> {
    await this.drain();
    await this.#onNextContext(async (f) => {
      const start = this.#out.size;
      f.sink = (b) => this.#out.write(b);
      // One piece in the compressor while the next is read and hashed (two read buffers).
      let taking: Promise<void> | undefined;
      for await (const p of pieces) {
        const next = f.write(p);
        next.catch(() => undefined); // thrown where it is awaited
        await taking;
        taking = next;
      }
      await taking;
      await f.endFrame();
      written(start, this.#out.size);
    });
  }
  async close(): Promise<void> {
    await this.drain();
    // Ending a zstd stream emits one more (empty) frame: not part of the layer.
    for (const f of this.#contexts) {
      f.sink = () => undefined;
      await f.close();
    }
  }
  destroy(): void {
    for (const f of this.#contexts) f.destroy();
  }
}

/** zstd level of the TOC frame (the file frames keep `LayerWriteOptions.level`). */
const TOC_LEVEL = 19;
const zstdCompressAsync = promisify(zstdCompress);

/** zstd contexts per layer: layers are written a few at a time too (build.ts), so a few suffice. */
const FRAME_CONTEXTS = 3;
/** Input bytes of a layer's pending frames (above it, the next file is read when one is written). */
const PENDING_BYTES = 4 * 1024 * 1024;
/**
 * Read buffers for small files, shared by the layers being written. What it keeps must cover the
 * pending frames' buffers (sizes rounded up to a power of two): with 4 MiB, the bench's base tree
 * allocated 174 MiB of new buffers for the collector to find, with 8 MiB 97 MiB.
 */
const readBuffers = new BufferPool(64 * 1024, 8 * 1024 * 1024);
/**
 * A TOC JSON above this size waits for the other layers' content (UnfinishedLayer.finish): its
 * level-19 tables grow with it (a 1.2 MiB TOC: ~35 MiB), while those of the smaller TOCs (a few
 * MiB) may sit beside the contexts of layers still being written.
 */
const LARGE_TOC = 512 * 1024;
/** One TOC is compressed at a time (see writeLayerContent), also when layers are finished at once. */
const tocTurn = new Semaphore(1);

async function writeZstdChunked(
  entries: readonly TreeEntry[],
  file: string,
  opts: LayerWriteOptions,
): Promise<UnfinishedLayer> {
  const level = opts.level ?? 3;
  const params = { [zc.ZSTD_c_compressionLevel]: level, [zc.ZSTD_c_checksumFlag]: 1 };
  const out = new BlobFile(file);
  const frames = new OrderedFrames(params, out, FRAME_CONTEXTS, PENDING_BYTES);
  // tar-split lines, compressed as they come (they are kept until the end: ~1/10 of the TOC).
  const splitChunks: Buffer[] = [];
  const zs = new ZstdFramer(params, (b) => splitChunks.push(b));
  const split = new TarSplitWriter((line) => zs.push(line));
  const tar = createHash('sha256');
  const toc: Toc = { version: 1, entries: [] };
  // Tar headers (and padding) since the last frame: they become the next header frame.
  let headers: Buffer[] = [];
  let pendingLen = 0;
  let contentBytes = 0;
  const meta = (b: Buffer) => {
    tar.update(b);
    split.raw(b);
    headers.push(b);
    pendingLen += b.length;
  };
  const endHeaderFrame = async () => {
    if (!pendingLen) return;
    // One buffer: each write is a round trip to the thread pool.
    const frame = headers.length === 1 ? headers[0]! : Buffer.concat(headers, pendingLen);
    headers = [];
    pendingLen = 0;
    await frames.add(frame);
  };
  try {
    for (const e of entries) {
      opts.signal?.throwIfAborted();
      meta(encodeHeader(e));
      const t = tocEntryOf(e);
      if (e.type === 'reg' && e.size > 0) {
        await endHeaderFrame();
        const fileHash = createHash('sha256');
        const crc = new Crc64();
        const setOffsets = (start: number, end: number) => {
          t.offset = start;
          t.endOffset = end;
        };
        if (e.size <= WHOLE_FILE_LIMIT) {
          await frames.makeRoom(e.size);
          const into = readBuffers.take(e.size);
          let data: Buffer;
          try {
            data = readWhole(e, into);
          } catch (err) {
            readBuffers.give(into);
            throw err;
          }
          fileHash.update(data);
          crc.update(data);
          tar.update(data);
          // The buffer goes back to the pool once the frame is compressed and written.
          await frames.add(data, (start, end) => {
            setOffsets(start, end);
            readBuffers.give(into);
          });
        } else {
          // Two read buffers for the whole file: one piece is read and hashed while the
          // compressor takes the other in (OrderedFrames.stream), and a large file leaves no
          // garbage behind.
          const buffers = [readBuffers.take(STREAM_PIECE), readBuffers.take(STREAM_PIECE)];
          const hashed = (function* () {
            for (const p of filePieces(e, buffers)) {
              fileHash.update(p);
              crc.update(p);
              tar.update(p);
              yield p;
            }
          })();
          try {
            await frames.stream(hashed, setOffsets);
          } finally {
            for (const b of buffers) readBuffers.give(b);
          }
        }
        split.file(tarName(e), e.size, crc.digest());
        t.digest = `sha256:${fileHash.digest('hex')}`;
        contentBytes += e.size;
        meta(Buffer.alloc(paddingFor(e.size)));
      } else {
        split.file(tarName(e), 0, null);
      }
      toc.entries.push(t);
      if (pendingLen > HEADER_FRAME_LIMIT) await endHeaderFrame();
    }
    meta(END_OF_ARCHIVE);
    await endHeaderFrame();
    split.end();
    await frames.close();
    await zs.close();
  } catch (err) {
    frames.destroy();
    zs.destroy();
    closeQuietly(out.fd);
    throw err;
  }
  const splitData = Buffer.concat(splitChunks);
  toc.tarSplitDigest = `sha256:${createHash('sha256').update(splitData).digest('hex')}`;
  const finish = async (othersWritten?: Promise<unknown>): Promise<LayerResult> => {
    // Every device that updates by file fetches the TOCs: level 19 makes them ~16% smaller for ~2 s of CPU per
    // build of the bench trees (bench/README.md).
    const json = encodeToc(toc);
    if (json.length > LARGE_TOC) await othersWritten;
    const compressed = await tocTurn.run(() =>
      zstdCompressAsync(json, {
        params: { ...params, [zc.ZSTD_c_compressionLevel]: TOC_LEVEL },
        // A known size lets zstd size its tables to the TOC, not to level 19's defaults (~100 MiB).
        pledgedSrcSize: json.length,
      }),
    );
    const tocOffset = out.size + SKIPPABLE_HEADER;
    out.write(skippableFrame(compressed));
    const splitOffset = out.size + SKIPPABLE_HEADER;
    out.write(skippableFrame(splitData));
    out.write(
      skippableFrame(
        encodeFooter({
          offset: tocOffset,
          lengthCompressed: compressed.length,
          lengthUncompressed: json.length,
          manifestType: MANIFEST_TYPE_CRFS,
          offsetTarSplit: splitOffset,
          lengthCompressedTarSplit: splitData.length,
          lengthUncompressedTarSplit: split.uncompressedSize,
        }),
      ),
    );
    const digest = out.close();
    return {
      descriptor: {
        mediaType: MediaType.OciLayerZstd,
        digest,
        size: out.size,
        annotations: {
          [ZstdChunkedAnnotation.ManifestChecksum]: `sha256:${createHash('sha256').update(compressed).digest('hex')}`,
          [ZstdChunkedAnnotation.ManifestPosition]: `${tocOffset}:${compressed.length}:${json.length}:${MANIFEST_TYPE_CRFS}`,
          [ZstdChunkedAnnotation.TarSplitPosition]: `${splitOffset}:${splitData.length}:${split.uncompressedSize}`,
          // Pins the uncompressed TOC too, so a TOC rebuilt from a delta patch is verified like a fetched one.
          [DeltaAnnotation.TocJsonDigest]: sha256(json),
        },
      },
      diffId: `sha256:${tar.digest('hex')}`,
      entries: entries.length,
      contentBytes,
    };
  };
  return {
    finish: async (othersWritten) => {
      try {
        return await finish(othersWritten);
      } catch (err) {
        closeQuietly(out.fd);
        throw err;
      }
    },
  };
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    /* already closed */
  }
}

async function writeGzip(entries: readonly TreeEntry[], file: string, opts: LayerWriteOptions): Promise<LayerResult> {
  const out = new BlobFile(file);
  const tar = createHash('sha256');
  let contentBytes = 0;
  const gz = createGzip({ level: opts.level ?? 6 });
  const drained = (async () => {
    for await (const chunk of gz as AsyncIterable<Buffer>) out.write(chunk);
  })();
  const put = async (b: Buffer) => {
    tar.update(b);
    if (!gz.write(b)) await once(gz, 'drain');
  };
  // A piece of a file is read into one pooled buffer, taken back once gzip has consumed it.
  const putPiece = (b: Buffer) => {
    tar.update(b);
    return new Promise<void>((res, rej) => gz.write(b, (err) => (err ? rej(err) : res())));
  };
  try {
    for (const e of entries) {
      opts.signal?.throwIfAborted();
      await put(encodeHeader(e));
      if (e.type === 'reg' && e.size > 0) {
        const piece = readBuffers.take(STREAM_PIECE);
        try {
          for (const p of filePieces(e, [piece])) await putPiece(p);
        } finally {
          readBuffers.give(piece);
        }
        await put(Buffer.alloc(paddingFor(e.size)));
        contentBytes += e.size;
      }
    }
    await put(END_OF_ARCHIVE);
    gz.end();
    await drained;
  } catch (err) {
    gz.destroy();
    await drained.catch(() => undefined);
    closeQuietly(out.fd);
    throw err;
  }
  const digest = out.close();
  return {
    descriptor: { mediaType: MediaType.OciLayerGzip, digest, size: out.size },
    diffId: `sha256:${tar.digest('hex')}`,
    entries: entries.length,
    contentBytes,
  };
}
