/**
 * The pure planner: from the new tree and a scan of the target, decide per entry what to do.
 * It reads nothing but file hashes, through the ContentHasher it is given (lazily, only files
 * whose size matches), so it is unit-testable with a fake hasher.
 */
import { devMajor, devMinor, implicitDir, showPath } from '../../layer/entry.ts';
import { UnsafePathError } from './errors.ts';
import { sameTime } from './fsops.ts';
import { comparePaths, isAtOrBelow, parentOf } from '../../layer/paths.ts';
import { pathsOfSize, sharePathsWith, type ContentHasher } from './scan.ts';
import { findInSources, type ContentSource } from './sources.ts';
import { DigestSet, isSha256 } from './digest-set.ts';
import { PlanActions } from './plan-actions.ts';
import { PathTable } from './path-table.ts';
import type { Action, ExistingEntry, MetaFix, OldTree, Plan, PlanSummary, TreeByPath, TreeEntry } from './types.ts';
import { emptyCounter, MTIME_ONLY } from './types.ts';

export interface PlanOptions {
  /** Relative paths never deleted (nor anything below them). */
  preserve?: readonly string[];
  /**
   * Other snapshots asked, in this order, for content the old tree lacks: a match is reflinked
   * from there (nothing fetched, extents shared) instead of written.
   */
  sources?: readonly ContentSource[];
  /**
   * Leave `Plan.fetch` empty: the caller takes each written file's content by its action (the
   * apply after its download). The list held every new file's entry through the writing: a
   * TocFile each on a first install (2 MiB on the bench's larger tree).
   */
  noFetchList?: boolean;
}

/** The xattr names to set (new or changed) and to remove; null when both sides are the same. */
function xattrChanges(
  a: Record<string, Buffer>,
  b: Record<string, Buffer>,
): { set: string[]; remove: string[] } | null {
  // Most entries have none on either side (both are NO_XATTRS): nothing to make.
  if (a === b) return null;
  const set: string[] = [];
  const remove: string[] = [];
  const names = Object.keys(a);
  for (let i = 0; i < names.length; i++) {
    const k = names[i]!;
    if (!b[k] || !b[k].equals(a[k]!)) set.push(k);
  }
  const had = Object.keys(b);
  for (let i = 0; i < had.length; i++) if (!(had[i]! in a)) remove.push(had[i]!);
  return set.length || remove.length ? { set, remove } : null;
}

/**
 * What differs between the wanted entry's metadata and what is on disk; null when nothing. The
 * fix is made only when something differs: an update asks this of every unchanged file (~45,000
 * on the bench's larger tree), where an object, arrays and iterators each time were ~15 MiB of
 * garbage in its planning (sampled). A fix of the mtime alone, the most common (a rebuilt package's
 * unchanged files), is one shared object (MTIME_ONLY).
 */
export function metaDiff(e: TreeEntry, x: ExistingEntry): MetaFix | null {
  const owner = e.uid !== x.uid || e.gid !== x.gid;
  // chown clears setuid/setgid: the mode must be set again after it.
  const mode = e.type !== 'symlink' && (e.mode !== x.mode || (owner && (e.mode & 0o6000) !== 0));
  // utimes takes float seconds: what the executor set is within 1 µs of what it was asked (sameTime).
  const mtime = !sameTime(e.mtimeNs, x.mtimeNs);
  const xa = xattrChanges(e.xattrs, x.xattrs);
  let set = xa?.set;
  // chown drops security.capability: set it again after an owner change.
  if (owner && e.xattrs['security.capability'] && !set?.includes('security.capability'))
    (set ??= []).push('security.capability');
  if (!owner && !mode && !set?.length && !xa?.remove.length) return mtime ? MTIME_ONLY : null;
  let fix: MetaFix | null = null;
  if (owner) (fix ??= {}).owner = true;
  if (mode) (fix ??= {}).mode = true;
  if (mtime) (fix ??= {}).mtime = true;
  if (set?.length) (fix ??= {}).xattrSet = set;
  if (xa?.remove.length) (fix ??= {}).xattrRemove = xa.remove;
  return fix;
}

/** Add the parent directories an image did not list (tar archives may omit them). */
export function addImplicitParents(tree: PathTable): void {
  const root = tree.get('');
  if (root && root.type !== 'dir')
    throw new UnsafePathError('.', `the root of the image is a ${root.type}, not a directory`);
  // By path, not by entry (the TOC's files would each be made for nothing). It visits the paths
  // added while it runs, here the implicit parents, whose own parents are then there.
  tree.forEachPath((p) => {
    let d = parentOf(p);
    for (;;) {
      const have = tree.typeAt(d);
      if (have !== undefined) {
        if (have !== 'dir')
          throw new UnsafePathError(
            p,
            `its parent ${JSON.stringify(showPath(d))} is a ${have} in the image, not a directory`,
          );
        break;
      }
      tree.set(d, implicitDir(d));
      if (d === '') break;
      d = parentOf(d);
    }
  });
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  const s = new Set(a);
  return b.every((x) => s.has(x));
}

/**
 * `newTree` is the plan's now: the parents the image did not list are added to it. The plan's
 * actions read their entries from its rows (a PathTable; a Map is copied into one): it must not
 * change while the plan is used.
 */
export async function planApply(
  newTree: TreeByPath,
  old: OldTree,
  hasher: ContentHasher,
  opts: PlanOptions = {},
): Promise<Plan> {
  // flattenLayers' table, in place (a copy would be ~10-20 bytes a file); a Map (tests) is
  // planned through a table of its entries and gains the implicit parents as a table would.
  const tree = newTree instanceof PathTable ? newTree : PathTable.copyOf(newTree);
  addImplicitParents(tree);
  if (tree !== newTree) tree.forEachPath((p, r) => newTree.has(p) || newTree.set(p, tree.entryAtRow(r)));
  sharePathsWith(old, tree);
  const order = tree.sortedRows();

  // Hardlink groups of the new tree: primary path -> all paths sharing its inode.
  const groups = new Map<string, string[]>();
  let files = 0;
  for (let k = 0; k < order.length; k++) {
    const r = order[k]!;
    const type = tree.typeAtRow(r);
    if (type === 'reg') files++;
    if (type !== 'hardlink') continue;
    const e = tree.entryAtRow(r);
    const t = e.linkname!;
    const te = tree.get(t);
    if (!te || te.type === 'dir' || te.type === 'hardlink')
      throw new UnsafePathError(e.path, `hardlink target ${JSON.stringify(showPath(t))} is not a file of the image`);
    let g = groups.get(t);
    if (!g) groups.set(t, (g = [t]));
    g.push(e.path);
  }

  // In path order, a reserved slot for each hardlink until its target's action is known; only
  // the targets' actions are also kept by path (a map of every action was ~40 bytes a file).
  // The lists are made at the size they can reach (a slot per path, per file): grown as they
  // filled, each of their copies was large-object garbage until a full collection (the
  // large-object space went 1.0 -> 5.3 MiB planning a first install of the bench's larger tree,
  // --trace-gc-verbose, at the writing's first peak). The actions refer to the table's rows: they
  // hold no entry (a TOC's file is made again when an action is read).
  const actions = new PlanActions(order.length, tree);
  const targetActions = new Map<string, Action>();
  const summary: PlanSummary = {
    keep: emptyCounter(),
    meta: emptyCounter(),
    reflink: emptyCounter(),
    fromSnapshots: emptyCounter(),
    write: emptyCounter(),
    create: emptyCounter(),
    link: emptyCounter(),
    delete: emptyCounter(),
  };
  // The path written first for each content, by the digest's member number (digest-set.ts:
  // ~40 bytes a digest where a Map of digest strings took ~110; a first install writes them all).
  const written = new DigestSet();
  // A first install (or a tree that shares little with the old one) writes nearly every file:
  // its lists are made at that size (grown, their copies were large-object garbage). An update
  // writes a few hundred: lists made at every file's size held 16 bytes a file of the tree
  // through its plan (0.56 MiB on the bench's larger tree), so they grow from empty instead.
  const writes = old.entries.size * 2 < tree.size ? files : 0;
  const ctx: PathPlanning = {
    old,
    hasher,
    groups,
    sources: opts.sources ?? [],
    written,
    firstWriteOf: new Array<string>(writes),
    fetch: new Array<TreeEntry>(opts.noFetchList ? 0 : writes),
    fetched: 0,
    listFetch: !opts.noFetchList,
  };

  // Indexed loops over the paths and actions: planApply runs once per plan, mostly unoptimized,
  // where each step of a for-of made an iterator result (and `entries()` a pair): ~24 MiB of
  // garbage planning a first install of the bench's larger tree. Each path's decision is a
  // function of its own (planNode, planFile): the optimizing compiler compiles a hot loop's
  // function whole, and planApply with every case inside took 5.7 MB of its memory (--turbo-stats).
  for (let k = 0; k < order.length; k++) {
    const r = order[k]!;
    const e = tree.entryAtRow(r);
    const p = e.path;
    if (e.type === 'hardlink') {
      actions.reserve(); // after all primaries are decided
      continue;
    }
    // Reused for the next path (peek): the decision keeps nothing of `x`, and the loop awaits it first.
    const x = old.entries.peek ? old.entries.peek(p) : old.entries.get(p);
    let a = e.type === 'reg' ? planFile(ctx, e, x, p) : planNode(ctx, e, x, p);
    if (a instanceof Promise) a = await a;
    actions.pushAtRow(a, r);
    if (groups.has(p)) targetActions.set(p, a);
  }

  for (let i = 0; i < order.length; i++) {
    const r = order[i]!;
    if (tree.typeAtRow(r) !== 'hardlink') continue;
    const e = tree.entryAtRow(r);
    const p = e.path;
    const x = old.entries.get(p);
    const t = e.linkname!;
    const ta = targetActions.get(t)!;
    const tx = old.entries.get(t);
    const inodeStays = ta.kind === 'keep' || ta.kind === 'meta';
    if (x && tx && inodeStays && x.ino === tx.ino && x.type === tx.type) actions.set(i, { kind: 'keep', entry: e }, r);
    else actions.set(i, { kind: 'link', entry: e, replace: !!x }, r);
  }

  countActions(actions, summary);
  const deletes = planDeletes(tree, old, opts.preserve ?? [], summary);
  const fetch = ctx.fetch;
  fetch.length = ctx.fetched; // the slots of files not fetched go (V8 trims the list in place)
  return { actions, deletes, fetch, summary };
}

/** What deciding one path needs: the old tree, the new tree's hardlink groups and the content written so far. */
interface PathPlanning {
  old: OldTree;
  hasher: ContentHasher;
  /** Hardlink groups of the new tree: primary path -> all paths sharing its inode. */
  groups: ReadonlyMap<string, string[]>;
  sources: readonly ContentSource[];
  /** The digests of the content written so far, and the path each was first written at (by member number). */
  written: DigestSet;
  firstWriteOf: string[];
  /** The new-content entries, in path order: the first `fetched` of this list (made at its largest size). */
  fetch: TreeEntry[];
  fetched: number;
  /** Whether `fetch` is kept (PlanOptions.noFetchList). */
  listFetch: boolean;
}

/** The old path `p` keeps its inode: its hardlinks in the old tree are the new tree's. */
function keepsInode(ctx: PathPlanning, x: ExistingEntry, p: string): boolean {
  const want = ctx.groups.get(p) ?? [p];
  if (x.nlink === 1) return want.length === 1;
  const have = ctx.old.byIno.get(x.ino) ?? [p];
  return x.nlink === have.length && sameSet(have, want);
}

/** The entry is there already (same type, content and inode): keep it, or fix its metadata. */
function unchanged(e: TreeEntry, x: ExistingEntry): Action {
  const fix = metaDiff(e, x);
  return fix ? { kind: 'meta', entry: e, fix } : { kind: 'keep', entry: e };
}

/** A directory, symlink, device or fifo: kept when the old tree has the same, else created. */
function planNode(ctx: PathPlanning, e: TreeEntry, x: ExistingEntry | undefined, p: string): Action {
  switch (e.type) {
    case 'dir':
      if (x?.type === 'dir') return e.implicit ? { kind: 'keep', entry: e } : unchanged(e, x);
      break;
    case 'symlink':
      if (x?.type === 'symlink' && x.linkname === e.linkname && keepsInode(ctx, x, p)) return unchanged(e, x);
      break;
    default: {
      const same =
        x?.type === e.type &&
        (e.type === 'fifo' || (devMajor(x.rdev) === e.devmajor && devMinor(x.rdev) === e.devminor));
      if (x && same && keepsInode(ctx, x, p)) return unchanged(e, x);
    }
  }
  return { kind: 'create', entry: e, replace: !!x };
}

const NO_PATHS: readonly string[] = [];

/**
 * A regular file. Its old files (own path, same size) are compared by the digests the hasher
 * knows without reading, and only hashed (asynchronously) when one is unknown; other snapshots
 * are asked (asynchronously) only when the old tree and this plan's earlier writes lack the
 * content. A first install, where no file has an old one, and an update, whose booted tree's
 * digests are in its saved index, decide nearly every file without a promise (one per file was
 * ~7 MiB more peak RSS planning a file-level update of the bench's larger tree).
 */
function planFile(ctx: PathPlanning, e: TreeEntry, x: ExistingEntry | undefined, p: string): Action | Promise<Action> {
  const digest = e.digest;
  if (!digest || !isSha256(digest))
    throw new UnsafePathError(p, 'regular file without a content digest in the table of contents');
  return planFileByKnownDigests(ctx, e, x, p, digest) ?? planFileByContent(ctx, e, x, p, digest);
}

/** The old files of the entry's size, where its content may already be (an empty file is always written). */
function candidatesFor(ctx: PathPlanning, e: TreeEntry): readonly string[] {
  return e.size > 0 ? pathsOfSize(ctx.old, e.size) : NO_PATHS;
}

/**
 * planFile's decision from known digests alone (own path, then old files of its size); undefined
 * when one of them must be hashed, and planFileByContent decides it all again by reading.
 */
function planFileByKnownDigests(
  ctx: PathPlanning,
  e: TreeEntry,
  x: ExistingEntry | undefined,
  p: string,
  digest: string,
): Action | Promise<Action> | undefined {
  if (x?.type === 'reg' && x.size === e.size) {
    const same = ctx.hasher.knownMatch?.(x, digest);
    if (same === undefined) return undefined;
    if (same) return sameFile(ctx, e, x, p);
  }
  const replace = !!x;
  const candidates = candidatesFor(ctx, e);
  for (let i = 0; i < candidates.length; i++) {
    const c = candidates[i]!;
    const same = ctx.hasher.knownMatch?.(ctx.old.entries.get(c)!, digest);
    if (same === undefined) return undefined;
    if (same) return { kind: 'reflink', entry: e, from: c, replace };
  }
  return notOnThisTree(ctx, e, p, digest, replace);
}

/** planFile's decision by hashing old files (the same order of preference). */
async function planFileByContent(
  ctx: PathPlanning,
  e: TreeEntry,
  x: ExistingEntry | undefined,
  p: string,
  digest: string,
): Promise<Action> {
  if (x?.type === 'reg' && x.size === e.size && (await ctx.hasher.digestOf(x)) === digest)
    return sameFile(ctx, e, x, p);
  const replace = !!x;
  for (const c of candidatesFor(ctx, e))
    if ((await ctx.hasher.digestOf(ctx.old.entries.get(c)!)) === digest)
      return { kind: 'reflink', entry: e, from: c, replace };
  return notOnThisTree(ctx, e, p, digest, replace);
}

/** The old file at the entry's own path has its content: kept (or fixed), or cloned when its inode must change. */
function sameFile(ctx: PathPlanning, e: TreeEntry, x: ExistingEntry, p: string): Action {
  return keepsInode(ctx, x, p) ? unchanged(e, x) : { kind: 'clone', entry: e, from: p };
}

/**
 * Content the old tree does not have: a file this plan writes earlier, else another snapshot's
 * (asked asynchronously, only when there are snapshots), else written.
 */
function notOnThisTree(
  ctx: PathPlanning,
  e: TreeEntry,
  p: string,
  digest: string,
  replace: boolean,
): Action | Promise<Action> {
  const dup = writtenBefore(ctx, e, digest, replace);
  if (dup) return dup;
  if (e.size > 0 && ctx.sources.length) return fromSources(ctx, e, p, digest, replace);
  return firstWrite(ctx, e, p, digest, replace);
}

async function fromSources(
  ctx: PathPlanning,
  e: TreeEntry,
  p: string,
  digest: string,
  replace: boolean,
): Promise<Action> {
  const other = await findInSources(ctx.sources, e.size, digest);
  if (other) return { kind: 'reflink', entry: e, from: other.seen.path, fromSnapshot: other, replace };
  return firstWrite(ctx, e, p, digest, replace);
}

/** A reflink of the file this plan writes earlier with the same content, if any (empty files are always written). */
function writtenBefore(ctx: PathPlanning, e: TreeEntry, digest: string, replace: boolean): Action | undefined {
  if (e.size === 0) return undefined;
  const seen = ctx.written.indexOf(digest);
  const from = seen === -1 ? undefined : ctx.firstWriteOf[seen];
  return from === undefined ? undefined : { kind: 'reflink', entry: e, from, fromNew: true, replace };
}

/** New content: fetched, and remembered as written at `p`. */
function firstWrite(ctx: PathPlanning, e: TreeEntry, p: string, digest: string, replace: boolean): Action {
  if (e.size > 0) ctx.firstWriteOf[ctx.written.add(digest)] = p;
  if (ctx.listFetch) ctx.fetch[ctx.fetched++] = e;
  return { kind: 'write', entry: e, replace };
}

/**
 * The summary's counts of the actions, read without making an action object each (4.2 MiB of
 * them in a first install's plan of the bench's larger tree, sampled). This and planDeletes are
 * functions of their own so that the optimizing compiler, which compiles a hot loop's function
 * whole, does not take them in with planApply's main loop (its largest compile was planApply,
 * 6 MiB of compiler memory).
 */
function countActions(actions: PlanActions, summary: PlanSummary): void {
  for (let i = 0; i < actions.length; i++) {
    const kind = actions.kindAt(i);
    const entry = actions.entryAt(i);
    const bytes = entry.type === 'reg' ? entry.size : 0;
    const c =
      kind === 'keep'
        ? summary.keep
        : kind === 'meta'
          ? summary.meta
          : kind === 'clone' || kind === 'reflink'
            ? summary.reflink
            : kind === 'write'
              ? summary.write
              : kind === 'link'
                ? summary.link
                : summary.create;
    c.count++;
    c.bytes += bytes;
    if (actions.objectAt(i)?.fromSnapshot) {
      summary.fromSnapshots.count++;
      summary.fromSnapshots.bytes += bytes;
    }
  }
}

/** The old paths to delete (top-most only), counted into the summary. */
function planDeletes(
  tree: ReadonlyMap<string, TreeEntry>,
  old: OldTree,
  preserve: readonly string[],
  summary: PlanSummary,
): string[] {
  // Deletions: old paths not in the new tree, top-most only; below a path the new tree turns
  // into a non-directory, the replace takes them.
  // Ancestors of preserved paths (boot/grub2 holding boot/grub2/x86_64-efi) are never deleted:
  // when the new tree lacks one, its other children go one by one.
  for (const d of preserve) {
    // The product drops such entries first (reserved.ts); the planner refuses rather than replace the host's directory.
    for (let a = d; a !== ''; a = parentOf(a)) {
      const e = tree.get(a);
      if (e && e.type !== 'dir')
        throw new UnsafePathError(
          a,
          `the image has a ${e.type} where the preserved directory ${JSON.stringify(showPath(d))}${a === d ? '' : ' and its parents'} must stay`,
        );
    }
  }
  const holdsPreserved = (p: string): boolean => preserve.some((d) => d.startsWith(p + '/'));
  const deletes: string[] = [];
  const deleted = new Set<string>();
  const keptAncestors = new Set<string>();
  // Only the old paths the new tree lacks, in path order (a parent before its children): a sorted
  // copy of every old path was made at the end of the plan, its peak (0.4 MiB on the bench's
  // larger tree; spreading and sorting it were ~3 MiB of a file-level plan's sampled
  // allocations); an update deletes a few hundred.
  const gone: string[] = [];
  for (const p of old.entries.keys()) if (p !== '' && !tree.has(p)) gone.push(p);
  gone.sort(comparePaths);
  for (let i = 0; i < gone.length; i++) {
    const p = gone[i]!;
    if (preserve.some((d) => isAtOrBelow(p, d))) continue;
    const x = old.entries.get(p)!;
    const parent = parentOf(p);
    if (x.type === 'dir' && !deleted.has(parent) && holdsPreserved(p)) {
      keptAncestors.add(p);
      continue;
    }
    summary.delete.count++;
    if (x.type === 'reg') summary.delete.bytes += x.size;
    if (deleted.has(parent)) {
      deleted.add(p);
      continue;
    }
    const pa = tree.get(parent);
    if (pa && pa.type !== 'dir') continue; // cannot happen after addImplicitParents; defensive
    if (!tree.has(parent) && parent !== '' && !keptAncestors.has(parent)) {
      // parent replaced by a non-directory of the new tree, or itself deleted
      deleted.add(p);
      continue;
    }
    deleted.add(p);
    deletes.push(p);
  }
  return deletes;
}
