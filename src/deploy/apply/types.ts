/**
 * The data the diff-apply engine works on: entries of the new tree (from a table of contents
 * or a tar header), what a scan found in the target directory, and the plan between them.
 */

import type { EntryType } from '../../bundle/entry.ts';
export type { EntryType };

/** Where an entry's content sits in its layer, so a later fetch can take just that range. */
export interface ContentSource {
  /** Index of the layer in the image (0 = lowest). */
  layer: number;
  /** Compressed byte range [offset, endOffset) of the entry's zstd frame in the layer blob (TOC layers). */
  offset?: number;
  endOffset?: number;
}

/** One entry of the new tree, as a TOC or a tar header describes it. Paths are normalised: no leading `/` or `./`, no `..`, `''` is the root. */
export interface TreeEntry {
  path: string;
  type: EntryType;
  /** Permission bits incl. setuid/setgid/sticky (0o7777), no file-type bits. */
  mode: number;
  uid: number;
  gid: number;
  /** Modification time in nanoseconds since the epoch. */
  mtimeNs: bigint;
  /** Extended attributes, values as raw bytes. */
  xattrs: Record<string, Buffer>;
  /** Content size for `reg`. */
  size: number;
  /** `sha256:<hex>` of the content for `reg` (required when planning from a TOC). */
  digest?: string;
  /** Symlink target (as stored) or, for `hardlink`, the normalised path of the linked entry. */
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  source?: ContentSource;
  /** A parent directory the image did not list: created 0755 root:root when missing, left alone when present. */
  implicit?: boolean;
}

/** What the scan found at a path of the target directory (lstat + xattrs). */
export interface ExistingEntry {
  path: string;
  type: EntryType | 'other';
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtimeNs: bigint;
  ctimeNs: bigint;
  ino: bigint;
  dev: bigint;
  nlink: number;
  rdev: bigint;
  linkname?: string;
  xattrs: Record<string, Buffer>;
}

export interface OldTree {
  root: string;
  entries: Map<string, ExistingEntry>;
  /** Regular files by size: the only candidates for a content match. */
  bySize: Map<number, string[]>;
  /** Paths by inode, for hardlink groups. */
  byIno: Map<bigint, string[]>;
}

/**
 * What to do with one entry of the new tree.
 * - keep: content and metadata match, nothing is touched (extents stay shared)
 * - meta: content matches, only owner/mode/mtime/xattrs are fixed
 * - clone: content matches but the inode is shared with paths that are no longer its hardlinks:
 *          a reflink of itself gives it its own inode (no data written)
 * - reflink: the content exists at `from` in the old tree: cloned (no data written)
 * - write: new content, taken from the content provider (`entry.digest`, `entry.source` say what to fetch)
 * - create: a directory, symlink, device or fifo to create (no content)
 * - link: a hardlink to `entry.linkname` to create
 */
export type ActionKind = 'keep' | 'meta' | 'clone' | 'reflink' | 'write' | 'create' | 'link';

export interface Action {
  kind: ActionKind;
  entry: TreeEntry;
  /** The path currently there must first be removed (type differs); for directories recursively. */
  replace?: boolean;
  /** For reflink/clone: the old tree's path with the same content. */
  from?: string;
  /** For reflink: `from` is a path of the *new* tree written earlier in this apply (same content twice). */
  fromNew?: boolean;
  /** For meta: which attributes differ. */
  fix?: MetaFix;
}

export interface MetaFix {
  owner?: boolean;
  mode?: boolean;
  mtime?: boolean;
  /** Names to set (new or changed) and to remove. */
  xattrSet?: string[];
  xattrRemove?: string[];
}

export interface Plan {
  /** Every entry of the new tree, parents before children. */
  actions: Action[];
  /** Old paths absent from the new tree, top-most only (a removed directory takes its content). */
  deletes: string[];
  /** The new-content entries: what a ranged fetcher must get (digest, size, layer, offsets). */
  fetch: TreeEntry[];
  summary: PlanSummary;
}

export interface Counter {
  count: number;
  bytes: number;
}

export interface PlanSummary {
  keep: Counter;
  meta: Counter;
  reflink: Counter;
  write: Counter;
  create: Counter;
  link: Counter;
  delete: Counter;
}

export interface ApplyReport {
  kept: Counter;
  metadataFixed: Counter;
  reflinked: Counter;
  written: Counter;
  created: Counter;
  linked: Counter;
  deleted: Counter;
  /** Reflinks that fell back to a plain copy (filesystem without reflinks). */
  copiedInsteadOfReflink: Counter;
  /** Of `written`: new content reflinked from already verified files (the delta store) instead of copied. */
  clonedFromStore: Counter;
  /** Image entries (and whiteouts) at or below reserved paths, dropped from the new tree (reserved.ts). */
  skipped: Counter;
  /** The reserved paths they were under, top-most first, at most 20. */
  skippedPaths: string[];
  warnings: string[];
}

export function emptyCounter(): Counter {
  return { count: 0, bytes: 0 };
}

export function emptyReport(): ApplyReport {
  return {
    kept: emptyCounter(),
    metadataFixed: emptyCounter(),
    reflinked: emptyCounter(),
    written: emptyCounter(),
    created: emptyCounter(),
    linked: emptyCounter(),
    deleted: emptyCounter(),
    copiedInsteadOfReflink: emptyCounter(),
    clonedFromStore: emptyCounter(),
    skipped: emptyCounter(),
    skippedPaths: [],
    warnings: [],
  };
}
