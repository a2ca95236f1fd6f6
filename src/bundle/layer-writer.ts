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
import { createHash } from 'node:crypto';
import { closeSync, openSync, readFileSync, readSync, rmSync } from 'node:fs';
import { once } from 'node:events';
import { constants as zc, createGzip, zstdCompress } from 'node:zlib';
import { promisify } from 'node:util';
import { BufferPool, freeNow } from '../util/buffer-pool.ts';
import { Semaphore } from '../util/semaphore.ts';
import { GrowingBytes } from '../util/growing-bytes.ts';
import { MediaType } from '../oci/mediatypes.ts';
import { DeltaAnnotation } from '../patch/media.ts';
import type { Descriptor, Digest } from '../oci/types.ts';
import { BuildError } from './errors.ts';
import { TiuError } from '../errors.ts';
import { BlobFile } from './blob-file.ts';
import { OrderedFrames, ZstdFramer } from './ordered-frames.ts';
import { contentFile, showPath, type TreeEntry } from '../layer/entry.ts';
import { encodeHeader, END_OF_ARCHIVE, headerLength, headerOf, paddingFor, writeHeader } from '../layer/tar.ts';
import { Crc64, TarSplitWriter } from '../layer/tar-split.ts';
import {
  encodeFooter,
  MANIFEST_TYPE_CRFS,
  SKIPPABLE_HEADER,
  skippableFrame,
  tocEntryOf,
  ZstdChunkedAnnotation,
} from '../layer/toc.ts';
import { TocJsonWriter } from '../layer/toc-writer.ts';

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
/** A file's padding to the next tar block: views of one zero block, only ever read. */
const ZEROS = Buffer.alloc(512);

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

/** Write the layer holding `entries` (sorted) to `file` (its TOC JSON to `file.toc` until it is compressed). */
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
  contentWriters++;
  try {
    if (opts.compression === 'zstd') return await writeZstdChunked(entries, file, opts);
    const done = await writeGzip(entries, file, opts);
    return { finish: () => Promise.resolve(done) };
  } finally {
    // No layer's content is being written any more: what the pools keep would sit beside the
    // large TOCs' level-19 tables (the build's other peak of memory), so it goes now.
    if (--contentWriters === 0) {
      readBuffers.release();
      frameBuffers.release();
    }
  }
}

/** Layers whose content is being written (writeLayerContent). */
let contentWriters = 0;

/** zstd level of the TOC frame (the file frames keep `LayerWriteOptions.level`). */
const TOC_LEVEL = 19;
/**
 * The bound on a large TOC's level-19 tables (log2 of the window, of the hash table's and of
 * the binary tree's entries): a 2 MiB window, 4 MiB of hash table and 8 MiB of tree, whatever the
 * TOC's size. Level 19's own choice grows with the TOC up to an 8 MiB window and ~80 MiB of
 * tables (the larger bench tree's 4.2 MiB TOC: +87 MiB RSS, 1.95 s) where these take +16 MiB and
 * 1.42 s for 0.27% more bytes (bench/README.md). A TOC up to LARGE_TOC keeps level 19's own
 * parameters: zstd sizes them to the source, and up to 512 KiB they already lie within these, so
 * its bytes are those of the builds before the bound.
 */
const LARGE_TOC_TABLES = { [zc.ZSTD_c_windowLog]: 21, [zc.ZSTD_c_hashLog]: 20, [zc.ZSTD_c_chainLog]: 21 };
const zstdCompressAsync = promisify(zstdCompress);

/**
 * zstd contexts for a layer's small frames (its large frames have one more): a build writes one
 * layer per core at a time (build.ts), so one each keeps the pool's threads busy. Three each, with
 * a window of six frames, held more contexts and pending frames and were slower on 2 cores:
 * alternated builds of the larger bench tree, 12.9-17.3 s and 113-142 MiB with one against
 * 14.6-18.6 s and 119-150 MiB with three (bench/README.md).
 */
const FRAME_CONTEXTS = 1;
/** Input bytes of a layer's pending frames (above it, the next file is read when one is written). */
const PENDING_BYTES = 4 * 1024 * 1024;
/**
 * Read buffers for small files, shared by the layers being written. What it keeps should cover
 * the pending frames' buffers (sizes rounded up to a power of two), but it is resident all build
 * long: with 4 MiB the bench's base tree allocates ~140 buffers in all, with 8 MiB ~95, for ~2 MiB
 * more peak RSS. What it cannot keep is freed as it is given back (detachExcess: no view of a
 * buffer outlives its frame's write), not left to the collector: V8 counts such external memory
 * against its old-generation limit, and with the zlib output buffers (ZstdFramer's sinkCopies)
 * it started a full collection every ~9 MiB, 54 in a build of the bench's base tree (16 after;
 * peak RSS 118-130 -> 114-121 MiB in alternated builds).
 */
const readBuffers = new BufferPool(64 * 1024, 4 * 1024 * 1024, { detachExcess: true });
/**
 * The pending frames' compressed bytes (ordered-frames.ts), shared by the layers being written:
 * about a third of their input, in smaller size classes than the reads (one pool for both made
 * the small output classes evict the read buffers: 821 allocations instead of ~150).
 */
const frameBuffers = new BufferPool(16 * 1024, 4 * 1024 * 1024, { detachExcess: true });
/**
 * A TOC JSON above this size waits for the other layers' content (UnfinishedLayer.finish) and
 * is compressed within LARGE_TOC_TABLES (~16 MiB of tables), while the smaller TOCs' tables
 * (level 19's own, sized to the TOC: a few MiB) may sit beside the contexts of layers still
 * being written.
 */
const LARGE_TOC = 512 * 1024;
/** The small TOCs are compressed one at a time (see writeLayerContent), beside the layers still being written. */
const tocTurn = new Semaphore(1);
/**
 * The large TOCs, once no layer's content is being written any more, are compressed two at a
 * time: they are the end of a build, where one after the other leaves a core idle (the larger
 * bench tree's six: 3.6 s one by one), and LARGE_TOC_TABLES bounds each one's tables (~16 MiB).
 */
const largeTocs = new Semaphore(2);

async function writeZstdChunked(
  entries: readonly TreeEntry[],
  file: string,
  opts: LayerWriteOptions,
): Promise<UnfinishedLayer> {
  const level = opts.level ?? 3;
  const params = { [zc.ZSTD_c_compressionLevel]: level, [zc.ZSTD_c_checksumFlag]: 1 };
  const out = new BlobFile(file);
  const frames = new OrderedFrames(params, out, FRAME_CONTEXTS, PENDING_BYTES, frameBuffers);
  // tar-split lines, compressed as they come (kept until the end: ~1/10 of the TOC), on this
  // thread: a 64 KiB batch is ~0.13 ms of zstd (46,000 members' lines, 42.6 MiB: 86 ms in all),
  // and its buffer is reused at once. (Handed to the thread pool, batches queued behind the file
  // frames: up to ~5 MiB of them in a larger bench build.)
  const splitOut = new GrowingBytes(64 * 1024);
  const zs = new ZstdFramer(params, (b) => splitOut.append(b));
  const split = new TarSplitWriter((lines) => zs.writeSync(lines));
  const tar = createHash('sha256');
  // The TOC JSON goes to a file beside the layer's as it is made: a layer waits with it until
  // its turn to compress it (the larger bench tree's finished layers held ~9 MB of JSON through
  // the rest of the content phase, the build's peak of memory); it is read back then.
  const tocFile = `${file}.toc`;
  const tocJson = new BlobFile(tocFile);
  const toc = new TocJsonWriter((b) => tocJson.write(b));
  /** After a failure: the blob and TOC files closed, the TOC file gone (the blob goes with the build's temp dir). */
  const abandon = () => {
    out.closeQuietly();
    tocJson.closeQuietly();
    rmSync(tocFile, { force: true });
  };
  // Not `entries` itself: the tree entries need not outlive the writing (see build.ts).
  const entryCount = entries.length;
  // Tar headers (and padding) since the last frame, written straight into the pooled buffer of
  // the next header frame: no Buffer per header (46,000 in the larger bench tree, each garbage
  // at once), and one frame is one write (each is a round trip to the thread pool).
  let pending: Buffer | undefined;
  let pendingLen = 0;
  let contentBytes = 0;
  /** The pending frame's buffer, with room for `n` more bytes. */
  const room = (n: number): Buffer => (pending = readBuffers.grow(pending, pendingLen, pendingLen + n));
  /** The `n` bytes just written at the pending frame's end are part of the tar. */
  const wrote = (n: number) => {
    const written = pending!.subarray(pendingLen, pendingLen + n);
    tar.update(written);
    split.raw(written);
    pendingLen += n;
  };
  /** Padding, the end marker. */
  const meta = (b: Uint8Array) => {
    room(b.length).set(b, pendingLen);
    wrote(b.length);
  };
  const metaHeader = (e: TreeEntry) => {
    const h = headerOf(e);
    wrote(writeHeader(h, room(headerLength(h)), pendingLen) - pendingLen);
  };
  const endHeaderFrame = async () => {
    if (!pendingLen) return;
    const into = pending!;
    const length = pendingLen;
    pending = undefined;
    pendingLen = 0;
    await frames.add(into.subarray(0, length), () => readBuffers.give(into));
  };
  try {
    for (const e of entries) {
      opts.signal?.throwIfAborted();
      metaHeader(e);
      const t = tocEntryOf(e);
      if (e.type === 'reg' && e.size > 0) {
        await endHeaderFrame();
        const fileHash = createHash('sha256');
        const crc = new Crc64();
        const setOffsets = (start: number, end: number) => {
          t.offset = start;
          t.endOffset = end;
          toc.encodeReady();
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
        meta(ZEROS.subarray(0, paddingFor(e.size)));
      } else {
        split.file(tarName(e), 0, null);
      }
      toc.add(t);
      if (pendingLen > HEADER_FRAME_LIMIT) await endHeaderFrame();
    }
    meta(END_OF_ARCHIVE);
    await endHeaderFrame();
    split.end();
    zs.closeSync();
    await frames.close();
  } catch (err) {
    frames.destroy();
    zs.destroy();
    abandon();
    throw err;
  }
  const splitData = splitOut.bytes;
  let jsonLength: number;
  let jsonDigest: Digest;
  try {
    jsonLength = toc.finish(`sha256:${createHash('sha256').update(splitData).digest('hex')}`);
    jsonDigest = tocJson.close();
  } catch (err) {
    abandon();
    throw err;
  }
  const finish = async (othersWritten?: Promise<unknown>): Promise<LayerResult> => {
    // Every device that updates by file fetches the TOCs: level 19 makes them ~16% smaller for ~2 s of CPU per
    // build of the bench trees (bench/README.md).
    const large = jsonLength > LARGE_TOC;
    // The JSON is in memory only while it is compressed, whole: the same call on the same bytes as
    // before it went to a file, so the same frame.
    const compress = async () => {
      const json = readFileSync(tocFile);
      try {
        if (json.length !== jsonLength) throw new TiuError('INTERNAL', `the TOC file ${tocFile} changed size`);
        return await zstdCompressAsync(json, {
          params: { ...params, [zc.ZSTD_c_compressionLevel]: TOC_LEVEL, ...(large ? LARGE_TOC_TABLES : {}) },
          // A known size lets zstd size its tables to the TOC, not to level 19's defaults (~100 MiB).
          pledgedSrcSize: json.length,
        });
      } finally {
        freeNow(json);
        rmSync(tocFile, { force: true });
      }
    };
    let compressed: Buffer;
    if (large) {
      await othersWritten;
      compressed = await largeTocs.run(compress);
    } else {
      compressed = await tocTurn.run(compress);
    }
    const tocOffset = out.size + SKIPPABLE_HEADER;
    out.write(skippableFrame(compressed));
    const splitOffset = out.size + SKIPPABLE_HEADER;
    out.write(skippableFrame(splitData));
    out.write(
      skippableFrame(
        encodeFooter({
          offset: tocOffset,
          lengthCompressed: compressed.length,
          lengthUncompressed: jsonLength,
          manifestType: MANIFEST_TYPE_CRFS,
          offsetTarSplit: splitOffset,
          lengthCompressedTarSplit: splitData.length,
          lengthUncompressedTarSplit: split.uncompressedSize,
        }),
      ),
    );
    const descriptor = {
      mediaType: MediaType.OciLayerZstd,
      digest: out.close(),
      size: out.size,
      annotations: {
        [ZstdChunkedAnnotation.ManifestChecksum]: `sha256:${createHash('sha256').update(compressed).digest('hex')}`,
        [ZstdChunkedAnnotation.ManifestPosition]: `${tocOffset}:${compressed.length}:${jsonLength}:${MANIFEST_TYPE_CRFS}`,
        [ZstdChunkedAnnotation.TarSplitPosition]: `${splitOffset}:${splitData.length}:${split.uncompressedSize}`,
        // Pins the uncompressed TOC too, so a TOC rebuilt from a delta patch is verified like a fetched one.
        [DeltaAnnotation.TocJsonDigest]: jsonDigest,
      },
    };
    // Written and hashed: freed now, not when the build ends (the UnfinishedLayer, and so these
    // buffers, live as long as the build), so that the largest TOC, compressed last, does not
    // have the other layers' TOCs and tar-splits beside its level-19 tables.
    freeNow(compressed);
    splitOut.free();
    return {
      descriptor,
      diffId: `sha256:${tar.digest('hex')}`,
      entries: entryCount,
      contentBytes,
    };
  };
  return {
    finish: async (othersWritten) => {
      try {
        return await finish(othersWritten);
      } catch (err) {
        abandon();
        throw err;
      }
    },
  };
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
        await put(ZEROS.subarray(0, paddingFor(e.size)));
        contentBytes += e.size;
      }
    }
    await put(END_OF_ARCHIVE);
    gz.end();
    await drained;
  } catch (err) {
    gz.destroy();
    await drained.catch(() => undefined);
    out.closeQuietly();
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
