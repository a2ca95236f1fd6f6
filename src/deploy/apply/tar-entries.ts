/**
 * Describe a plain tar layer as TreeEntries (hashing each file's content as it streams), so
 * an image without a table of contents can still go through the planner: one pass to learn
 * the tree, a second (tarLayerProvider) to fetch only the new content. The tar is read by
 * src/layer's reader; this adds the engine's checks of what it would write (xattr names).
 */
import { createHash } from 'node:crypto';
import { bbuf } from '../../layer/entry.ts';
import { normalizeEntryPath } from '../../layer/paths.ts';
import { memberEntry, readTar, type ByteReader, type TarMember } from '../../layer/tar.ts';
import { checkXattrs } from '../../host/xattr-names.ts';
import type { TreeEntry } from './types.ts';

/**
 * The entry of a member of an image's tar at layer `layer`: path normalised (the caller's, when
 * it normalised the name already), xattr names checked (XATTR_INVALID).
 */
export function imageEntry(m: TarMember, layer: number, path = normalizeEntryPath(m.name)): TreeEntry {
  // Names from image data: refused here, before anything is written.
  checkXattrs(bbuf(path), m.xattrs);
  return { ...memberEntry(m, path), source: { layer } };
}

/** `hash: false`: the content is read (skipped) but not hashed; regular files get no digest (validation only). */
export async function entriesFromTar(
  source: ByteReader | AsyncIterable<Buffer | Uint8Array>,
  layer: number,
  opts: { hash?: boolean } = {},
): Promise<TreeEntry[]> {
  const out: TreeEntry[] = [];
  for await (const m of readTar(source)) {
    const e = imageEntry(m, layer);
    if (e.type === 'reg' && opts.hash !== false) {
      const h = createHash('sha256');
      for await (const c of m.body()) h.update(c);
      e.digest = `sha256:${h.digest('hex')}`;
    }
    out.push(e);
  }
  return out;
}
