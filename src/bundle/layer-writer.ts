/**
 * Writing one layer blob to a file, streaming: tar bytes are produced entry by entry, file
 * content is read from its source in bounded pieces, and both the uncompressed digest
 * (diff_id) and the blob digest are computed on the way.
 *
 * zstd (zstd:chunked): the tar headers between two files form one zstd frame, each regular
 * file's content its own frame, then the TOC and the footer as skippable frames (see toc.ts).
 * gzip: one plain gzip stream of the tar, no TOC.
 */
import { createHash, type Hash } from 'node:crypto';
import { closeSync, createReadStream, openSync, readSync, writeSync } from 'node:fs';
import { once } from 'node:events';
import { Readable } from 'node:stream';
import { constants as zc, createGzip, createZstdCompress, zstdCompressSync } from 'node:zlib';
import { MediaType } from '../oci/mediatypes.ts';
import type { Descriptor, Digest } from '../oci/types.ts';
import { BuildError } from './errors.ts';
import { bbuf, isUtf8, showPath, type TreeEntry } from './entry.ts';
import { encodeHeader, END_OF_ARCHIVE, paddingFor } from './tar-format.ts';
import {
  encodeFooter,
  formatModtime,
  MANIFEST_TYPE_CRFS,
  SKIPPABLE_HEADER,
  skippableFrame,
  ZstdChunkedAnnotation,
  type Toc,
  type TocEntry,
} from './toc.ts';

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

function changed(e: TreeEntry, why: string): BuildError {
  return new BuildError('BUILD_SOURCE_CHANGED', `/${showPath(e.path)} changed while tiu was reading it (${why})`, { path: showPath(e.path) });
}

/** The content of a regular file in pieces, exactly e.size bytes or an error. */
async function* contentPieces(e: TreeEntry): AsyncGenerator<Buffer> {
  const c = e.content;
  if (e.size === 0) return;
  if (!c) throw changed(e, 'no content');
  if ('data' in c) {
    if (c.data.length !== e.size) throw changed(e, 'size');
    yield c.data;
    return;
  }
  let got = 0;
  const rs = createReadStream(c.file, { start: c.offset, end: c.offset + e.size - 1, highWaterMark: 1024 * 1024 });
  for await (const chunk of rs as AsyncIterable<Buffer>) {
    got += chunk.length;
    yield chunk;
  }
  if (got !== e.size) throw changed(e, `expected ${e.size} bytes, read ${got}`);
}

function readWhole(e: TreeEntry): Buffer {
  const c = e.content;
  if (!c) throw changed(e, 'no content');
  if ('data' in c) {
    if (c.data.length !== e.size) throw changed(e, 'size');
    return c.data;
  }
  const buf = Buffer.alloc(e.size);
  let fd: number;
  try {
    fd = openSync(c.file, 'r');
  } catch (err) {
    throw changed(e, (err as Error).message);
  }
  try {
    let got = 0;
    while (got < e.size) {
      const n = readSync(fd, buf, got, e.size - got, c.offset + got);
      if (n === 0) break;
      got += n;
    }
    if (got !== e.size) throw changed(e, `expected ${e.size} bytes, read ${got}`);
    // One byte more would mean the file grew.
    if (!c.whole || readSync(fd, Buffer.alloc(1), 0, 1, c.offset + e.size) === 0) return buf;
    throw changed(e, 'it grew');
  } finally {
    closeSync(fd);
  }
}

/** The TOC entry of a tar entry (offsets and digest filled in by the writer). */
export function tocEntryOf(e: TreeEntry): TocEntry {
  const name = e.type === 'dir' ? e.path + '/' : e.path;
  const t: TocEntry = { type: e.type, name: bbuf(name).toString('utf8') };
  if (!isUtf8(name)) t.nameRaw = bbuf(name).toString('base64');
  if (e.link !== undefined) {
    t.linkName = bbuf(e.link).toString('utf8');
    if (!isUtf8(e.link)) t.linkNameRaw = bbuf(e.link).toString('base64');
  }
  if (e.mode) t.mode = e.mode;
  if (e.type === 'reg' && e.size) t.size = e.size;
  if (e.uid) t.uid = e.uid;
  if (e.gid) t.gid = e.gid;
  t.modtime = formatModtime(e.mtime, e.mtimeNsec);
  if (e.type === 'char' || e.type === 'block') {
    if (e.devMajor) t.devMajor = e.devMajor;
    if (e.devMinor) t.devMinor = e.devMinor;
  }
  if (e.xattrs.length) t.xattrs = Object.fromEntries(e.xattrs.map(([k, v]) => [k, v.toString('base64')]));
  return t;
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

/** Write the layer holding `entries` (sorted) to `file`. */
export async function writeLayer(entries: readonly TreeEntry[], file: string, opts: LayerWriteOptions): Promise<LayerResult> {
  return opts.compression === 'zstd' ? writeZstdChunked(entries, file, opts) : writeGzip(entries, file, opts);
}

async function writeZstdChunked(entries: readonly TreeEntry[], file: string, opts: LayerWriteOptions): Promise<LayerResult> {
  const level = opts.level ?? 3;
  const params = { [zc.ZSTD_c_compressionLevel]: level, [zc.ZSTD_c_checksumFlag]: 1 };
  const out = new BlobFile(file);
  const tar = createHash('sha256');
  const toc: Toc = { version: 1, entries: [] };
  let pending: Buffer[] = [];
  let pendingLen = 0;
  let contentBytes = 0;
  const flush = () => {
    if (pendingLen === 0) return;
    out.write(zstdCompressSync(Buffer.concat(pending), { params }));
    pending = [];
    pendingLen = 0;
  };
  const meta = (b: Buffer) => {
    tar.update(b);
    pending.push(b);
    pendingLen += b.length;
  };
  try {
    for (const e of entries) {
      opts.signal?.throwIfAborted();
      meta(encodeHeader(e));
      const t = tocEntryOf(e);
      if (e.type === 'reg' && e.size > 0) {
        flush();
        const start = out.size;
        const fileHash = createHash('sha256');
        if (e.size <= WHOLE_FILE_LIMIT) {
          const data = readWhole(e);
          fileHash.update(data);
          tar.update(data);
          out.write(zstdCompressSync(data, { params }));
        } else {
          const z = createZstdCompress({ params, pledgedSrcSize: e.size });
          const input = Readable.from(
            (async function* () {
              for await (const piece of contentPieces(e)) {
                fileHash.update(piece);
                tar.update(piece);
                yield piece;
              }
            })(),
          );
          input.on('error', (err) => z.destroy(err));
          input.pipe(z);
          for await (const chunk of z as AsyncIterable<Buffer>) out.write(chunk);
        }
        t.digest = `sha256:${fileHash.digest('hex')}`;
        t.offset = start;
        t.endOffset = out.size;
        contentBytes += e.size;
        meta(Buffer.alloc(paddingFor(e.size)));
      }
      toc.entries.push(t);
      if (pendingLen > HEADER_FRAME_LIMIT) flush();
    }
    meta(END_OF_ARCHIVE);
    flush();
    const json = Buffer.from(JSON.stringify(toc), 'utf8');
    const compressed = zstdCompressSync(json, { params });
    const tocOffset = out.size + SKIPPABLE_HEADER;
    out.write(skippableFrame(compressed));
    out.write(
      skippableFrame(
        encodeFooter({
          offset: tocOffset,
          lengthCompressed: compressed.length,
          lengthUncompressed: json.length,
          manifestType: MANIFEST_TYPE_CRFS,
          offsetTarSplit: 0,
          lengthCompressedTarSplit: 0,
          lengthUncompressedTarSplit: 0,
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
        },
      },
      diffId: `sha256:${tar.digest('hex')}`,
      entries: entries.length,
      contentBytes,
    };
  } catch (err) {
    try {
      closeSync(out.fd);
    } catch {
      /* already closed */
    }
    throw err;
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
  try {
    for (const e of entries) {
      opts.signal?.throwIfAborted();
      await put(encodeHeader(e));
      if (e.type === 'reg' && e.size > 0) {
        for await (const piece of contentPieces(e)) await put(piece);
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
    try {
      closeSync(out.fd);
    } catch {
      /* already closed */
    }
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
