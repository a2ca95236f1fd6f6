/**
 * Test helper: a TreeEntry as a plain object with its own fields, to change one of them. A
 * spread (`{ ...e, digest }`) of a TocFile (src/deploy/apply/toc-files.ts) copies only its path:
 * its other fields are read from its row.
 */
import type { TreeEntry } from '../../src/layer/entry.ts';
export function plainEntry(e: TreeEntry): TreeEntry {
  const out: TreeEntry = {
    path: e.path,
    type: e.type,
    mode: e.mode,
    uid: e.uid,
    gid: e.gid,
    mtimeNs: e.mtimeNs,
    xattrs: e.xattrs,
    size: e.size,
  };
  if (e.linkname !== undefined) out.linkname = e.linkname;
  if (e.devmajor !== undefined) out.devmajor = e.devmajor;
  if (e.devminor !== undefined) out.devminor = e.devminor;
  if (e.digest !== undefined) out.digest = e.digest;
  if (e.source !== undefined) out.source = e.source;
  if (e.content !== undefined) out.content = e.content;
  if (e.implicit !== undefined) out.implicit = e.implicit;
  return out;
}
