/**
 * Content providers: where the executor gets the bytes of new-content entries. The plan lists
 * exactly those entries (digest, size, layer, compressed offsets), so a provider can be a
 * whole-layer stream or a store of verified files. The ranged provider of the product is
 * delta/download.ts's storeProvider (it fetches what its store lacks the same way the delta
 * download does: one coalescer, one verify loop). The executor verifies every byte against the
 * entry's sha256 and size, whichever provider delivered it.
 */
import type { Readable } from 'node:stream';
import { ContentUnavailableError } from './errors.ts';
import { normalizeEntryPath } from '../../layer/paths.ts';
import { readTar } from '../../layer/tar.ts';
import type { TreeEntry } from './types.ts';

/**
 * A file on the same filesystem whose content this process has already verified against the
 * entry's sha256 and size (the delta download's content store): the executor reflinks it
 * instead of reading and writing the bytes again, and streams it (verifying) where it can't.
 */
export interface VerifiedFile {
  verifiedFile: string;
}

export type ContentSink = (
  entry: TreeEntry,
  content: AsyncIterable<Buffer | Uint8Array> | VerifiedFile,
) => Promise<void>;

export function isVerifiedFile(c: unknown): c is VerifiedFile {
  return typeof c === 'object' && c !== null && typeof (c as VerifiedFile).verifiedFile === 'string';
}

/**
 * The entries a provider is asked for, by position; an array is one. The executor's reads them
 * from the plan's actions when asked (a TOC file is made again each time: keep none of them),
 * so that a first install does not hold an entry object per file while it is delivered.
 */
export interface EntryList extends Iterable<TreeEntry> {
  readonly length: number;
  at(i: number): TreeEntry | undefined;
}

export interface ContentProvider {
  /**
   * Give each entry's content to `take` once (any order, possibly several at a time);
   * `take` consumes it fully before returning. Every `take` has finished when this settles.
   */
  deliver(entries: EntryList, take: ContentSink): Promise<void>;
}

/** Order in which a sequential source has the entries: by layer, then by offset. */
export function byLayerOrder(entries: Iterable<TreeEntry>): TreeEntry[] {
  return [...entries].sort(
    (a, b) => (a.source?.layer ?? 0) - (b.source?.layer ?? 0) || (a.source?.offset ?? 0) - (b.source?.offset ?? 0),
  );
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
        if (missing.length)
          throw new ContentUnavailableError(missing[0]!, `not found in layer ${layer} (${missing.length} missing)`);
      }
    },
  };
}
