/**
 * The data the diff-apply engine works on: what a scan found in the target directory, and the
 * plan between it and the new tree (src/layer's TreeEntry, from a table of contents or a tar).
 * Paths are binary strings (src/layer/entry.ts), also in the scan and the report.
 */

import type { EntryType, TreeEntry } from '../../layer/entry.ts';
import type { SizeIndex } from './size-index.ts';
/** The tree model is src/layer's, shared with the build: paths, link targets and xattr values are bytes. */
export type { EntryType, TreeEntry, ContentSource } from '../../layer/entry.ts';

/** What the scan found at a path of the target directory (lstat + xattrs). */
export interface ExistingEntry {
  /** Binary string. */
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

/**
 * The scan's entries by path: a Map in tests, compact rows from a real scan (scan-entries.ts),
 * whose `get` makes a new object each time (don't keep it as the scan's identity).
 */
export interface ScannedEntries {
  readonly size: number;
  has(path: string): boolean;
  get(path: string): ExistingEntry | undefined;
  /** As `get`, but the object may be reused by the next `peek` (scan-entries.ts): nothing of it is kept. */
  peek?(path: string): ExistingEntry | undefined;
  keys(): IterableIterator<string>;
  values(): IterableIterator<ExistingEntry>;
  [Symbol.iterator](): IterableIterator<[string, ExistingEntry]>;
}

/**
 * The new tree by path, which the planner completes in place (implicit parents): flattenLayers'
 * PathTable (path-table.ts), or a Map (tests).
 */
export interface TreeByPath extends ReadonlyMap<string, TreeEntry> {
  set(path: string, e: TreeEntry): unknown;
  delete(path: string): boolean;
}

export interface OldTree {
  root: string;
  entries: ScannedEntries;
  /** Regular files by size: the only candidates for a content match (read with `pathsOfSize`, scan.ts). */
  bySize: SizeIndex;
  /** Paths by inode of the files with more than one link (hardlink groups); a file with one link is in no group. */
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
  /** For reflink: `from` is a path of another snapshot (a content source), not of the old tree. */
  fromSnapshot?: SnapshotFile;
  /** For meta: which attributes differ. */
  fix?: MetaFix;
}

/**
 * A file of another snapshot that holds a new entry's content (apply/sources.ts found it by size
 * and sha256). What the executor needs to take it safely: where, what it looked like when it was
 * matched, and whether its digest was read from the file by this process.
 */
export interface SnapshotFile {
  snapshot: number;
  /** The snapshot's root directory. */
  root: string;
  /** The file as the match saw it: inode, size, mtime and ctime must still be these when it is opened. */
  seen: ExistingEntry;
  /** This process hashed the file itself (true), or the digest came from a saved content index (false: verify). */
  hashedHere: boolean;
}

export interface MetaFix {
  owner?: boolean;
  mode?: boolean;
  mtime?: boolean;
  /** Names to set (new or changed) and to remove. */
  xattrSet?: string[];
  xattrRemove?: string[];
}

/** The fix of an entry whose mtime alone differs: one shared (frozen) object for all of them. */
export const MTIME_ONLY: MetaFix = Object.freeze({ mtime: true });

/**
 * The actions of a plan, by index, in path order. A plain Action[] is one (tests build plans
 * so); the planner's is a PlanActions (plan-actions.ts), which stores an action that is a kind
 * and an entry (and `replace`) as the entry alone and makes the object when it is read.
 */
export interface ActionList extends Iterable<Action> {
  readonly length: number;
  at(i: number): Action | undefined;
  entries(): IterableIterator<[number, Action]>;
  /** Action `i`'s entry's path, without making the action or the entry (PlanActions). */
  pathAt?(i: number): string;
  /** Action `i`'s kind, without making the action or its entry (PlanActions). */
  kindAt?(i: number): ActionKind;
  /** Action `i`'s entry, without making the action (PlanActions). */
  entryAt?(i: number): TreeEntry;
}

export interface Plan {
  /** Every entry of the new tree, parents before children. */
  actions: ActionList;
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
  /** Content already on the disk, cloned: from the old tree, another snapshot or a file written before. */
  reflink: Counter;
  /** Of `reflink`: content found in other snapshots (content sources), not in the old tree. */
  fromSnapshots: Counter;
  write: Counter;
  create: Counter;
  link: Counter;
  delete: Counter;
}

export interface ApplyReport {
  kept: Counter;
  metadataFixed: Counter;
  reflinked: Counter;
  /** Of `reflinked`: content cloned from other snapshots (content sources). */
  reflinkedFromSnapshots: Counter;
  /** Planned from another snapshot, but its file had vanished or changed: fetched instead (and counted in `written`). */
  snapshotFallbacks: Counter;
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
    reflinkedFromSnapshots: emptyCounter(),
    snapshotFallbacks: emptyCounter(),
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
