/**
 * Content providers: where the executor gets the bytes of new-content entries. The plan lists
 * exactly those entries (digest, size, layer, compressed offsets), so a provider can be a
 * whole-layer stream (ordinary pull) or ranged fetches of single files (zstd:chunked).
 * The executor verifies every byte against the entry's sha256 and size.
 */
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { zstdDecompressFrames } from '../../bundle/zstd-frames.ts';
import { ContentUnavailableError } from './errors.ts';
import { normalizeEntryPath } from './paths.ts';
import { readTar } from './tar.ts';
import type { TreeEntry } from './types.ts';

/**
 * A file on the same filesystem whose content this process has already verified against the
 * entry's sha256 and size (the delta download's content store): the executor reflinks it
 * instead of reading and writing the bytes again, and streams it (verifying) where it can't.
 */
export interface VerifiedFile {
  verifiedFile: string;
}

export type ContentSink = (entry: TreeEntry, content: AsyncIterable<Buffer | Uint8Array> | VerifiedFile) => Promise<void>;

export function isVerifiedFile(c: unknown): c is VerifiedFile {
  return typeof c === 'object' && c !== null && typeof (c as VerifiedFile).verifiedFile === 'string';
}

export interface ContentProvider {
  /**
   * Give each entry's content to `take` once (any order, possibly several at a time);
   * `take` consumes it fully before returning. Every `take` has finished when this settles.
   */
  deliver(entries: readonly TreeEntry[], take: ContentSink): Promise<void>;
}

/** Order in which a sequential source has the entries: by layer, then by offset. */
export function byLayerOrder(entries: readonly TreeEntry[]): TreeEntry[] {
  return [...entries].sort((a, b) => (a.source?.layer ?? 0) - (b.source?.layer ?? 0) || (a.source?.offset ?? 0) - (b.source?.offset ?? 0));
}

/** The simplest provider: a function that opens one entry's content. Called in layer/offset order. */
export function openerProvider(openEntry: (entry: TreeEntry) => Promise<Readable> | Readable): ContentProvider {
  return {
    async deliver(entries, take) {
      for (const e of byLayerOrder(entries)) await take(e, await openEntry(e));
    },
  };
}

/**
 * Whole layers as uncompressed tar streams (`openLayer(i)`): each needed layer is read once
 * from start to end and the wanted regular files are handed over as they pass.
 */
export function tarLayerProvider(openLayer: (layer: number) => Promise<Readable>): ContentProvider {
  return {
    async deliver(entries, take) {
      const byLayer = new Map<number, Map<string, TreeEntry>>();
      for (const e of entries) {
        const l = e.source?.layer ?? 0;
        let m = byLayer.get(l);
        if (!m) byLayer.set(l, (m = new Map<string, TreeEntry>()));
        m.set(e.path, e);
      }
      for (const [layer, wanted] of [...byLayer].sort((a, b) => a[0] - b[0])) {
        const stream = await openLayer(layer);
        try {
          for await (const t of readTar(stream)) {
            if (t.type !== 'reg') continue;
            let path: string;
            try {
              path = normalizeEntryPath(t.name);
            } catch {
              continue; // never wanted: the plan only holds normalised paths
            }
            const e = wanted.get(path);
            if (!e) continue;
            wanted.delete(path);
            await take(e, t.body());
            if (wanted.size === 0) break;
          }
        } finally {
          stream.destroy();
        }
        const missing = [...wanted.keys()];
        if (missing.length) throw new ContentUnavailableError(missing[0]!, `not found in layer ${layer} (${missing.length} missing)`);
      }
    },
  };
}

export interface RangeOptions {
  /** Neighbouring files whose frames are at most this far apart are fetched in one request (default 64 KiB). */
  maxGap?: number;
  /** Upper bound of one coalesced request, held in memory (default 8 MiB). */
  maxSpan?: number;
}

function once(b: Buffer): Readable {
  return Readable.from([b]);
}

/**
 * zstd:chunked single-file fetches: `fetchRange(layer, start, end)` returns the compressed
 * bytes [start, end) of the layer blob (HTTP Range on a registry, a file read on a layout);
 * each file is its own zstd frame there, so it decompresses alone. Files close together in a
 * layer are fetched with one request (the bytes between them are read and dropped).
 */
export function rangeProvider(fetchRange: (layer: number, start: number, end: number) => Promise<Readable>, opts: RangeOptions = {}): ContentProvider {
  const maxGap = opts.maxGap ?? 64 * 1024;
  const maxSpan = opts.maxSpan ?? 8 * 1024 * 1024;
  return {
    async deliver(entries, take) {
      const ranged: TreeEntry[] = [];
      for (const e of byLayerOrder(entries)) {
        const s = e.source;
        if (!s || s.offset === undefined || s.endOffset === undefined || s.endOffset <= s.offset) {
          if (e.size === 0) {
            await take(e, (async function* () {})());
            continue;
          }
          throw new ContentUnavailableError(e.path, 'the table of contents gives no byte range for it');
        }
        ranged.push(e);
      }
      let i = 0;
      while (i < ranged.length) {
        const first = ranged[i]!;
        const layer = first.source!.layer;
        const start = first.source!.offset!;
        let end = first.source!.endOffset!;
        let j = i + 1;
        while (j < ranged.length) {
          const n = ranged[j]!.source!;
          if (n.layer !== layer || n.offset! < end || n.offset! - end > maxGap || n.endOffset! - start > maxSpan) break;
          end = n.endOffset!;
          j++;
        }
        if (j === i + 1) {
          // one file: stream it (it may be large)
          await take(first, zstdDecompressFrames(await fetchRange(layer, start, end)));
        } else {
          const buf = await buffer(await fetchRange(layer, start, end));
          if (buf.length !== end - start) throw new ContentUnavailableError(first.path, `range ${start}-${end} of layer ${layer} gave ${buf.length} bytes`);
          for (let k = i; k < j; k++) {
            const e = ranged[k]!;
            await take(e, zstdDecompressFrames(once(buf.subarray(e.source!.offset! - start, e.source!.endOffset! - start))));
          }
        }
        i = j;
      }
    },
  };
}
