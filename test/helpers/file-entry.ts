/**
 * Test helper: a regular file of a layer as the planner and the download see it (root-owned,
 * 0644, no xattrs), its content at [offset, endOffset) of layer `layer`.
 */
import type { TreeEntry } from '../../src/layer/entry.ts';

export function layerFile(
  path: string,
  size: number,
  digest: string,
  offset: number,
  endOffset: number,
  layer = 0,
): TreeEntry {
  const e: TreeEntry = { path, type: 'reg', mode: 0o644, uid: 0, gid: 0, mtimeNs: 0n, xattrs: {}, size, digest };
  e.source = { layer, offset, endOffset };
  return e;
}
