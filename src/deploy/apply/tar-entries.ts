/**
 * Describe a plain tar layer as TreeEntries (hashing each file's content as it streams), so
 * an image without a table of contents can still go through the planner: one pass to learn
 * the tree, a second (tarLayerProvider) to fetch only the new content.
 */
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { BadTarError } from './errors.ts';
import { normalizeEntryPath, normalizeLinkTarget } from './paths.ts';
import { readTar } from './tar.ts';
import type { TreeEntry } from './types.ts';

/** `hash: false`: the content is read (skipped) but not hashed; regular files get no digest (validation only). */
export async function entriesFromTar(
  stream: Readable | AsyncIterable<Buffer | Uint8Array>,
  layer: number,
  opts: { hash?: boolean } = {},
): Promise<TreeEntry[]> {
  const out: TreeEntry[] = [];
  for await (const t of readTar(stream)) {
    if (t.type === 'other') throw new BadTarError(`unsupported entry type '${t.flag}' for ${JSON.stringify(t.name)}`);
    const path = normalizeEntryPath(t.name);
    const e: TreeEntry = {
      path,
      type: t.type,
      mode: t.mode,
      uid: t.uid,
      gid: t.gid,
      mtimeNs: t.mtimeNs,
      xattrs: t.xattrs,
      size: t.size,
      source: { layer },
    };
    if (t.type === 'reg' && opts.hash !== false) {
      const h = createHash('sha256');
      for await (const c of t.body()) h.update(c);
      e.digest = `sha256:${h.digest('hex')}`;
    }
    if (t.type === 'symlink') e.linkname = t.linkname;
    if (t.type === 'hardlink') e.linkname = normalizeLinkTarget(path, t.linkname);
    if (t.type === 'char' || t.type === 'block') {
      e.devmajor = t.devmajor;
      e.devminor = t.devminor;
    }
    out.push(e);
  }
  return out;
}
