/**
 * The executor: carries out a Plan in the target directory.
 *
 * Phases: (1) everything with content is first materialised in a staging directory inside the
 * root: clones from other snapshots (from-snapshot.ts; one that vanished or changed is fetched
 * from the provider instead), new content from the provider (verified by sha256 and size, holes
 * kept), reflinks of old files (taken before anything is deleted or overwritten, so moved and
 * swapped files work);
 * (2) deletions; (3) the tree in path order, parents first: directories, files renamed from
 * staging, symlinks, devices, fifos; (4) hardlinks; (5) xattrs through setfattr, after every
 * chown (chown drops security.capability); (6) directory mtimes last.
 *
 * Memory (issue 19): what is kept per file while the plan is carried out is a byte of
 * StagedContent, and for the files to fetch their action's index (the provider is given their
 * entries as a list made when read, an EntryList, and names each by its path); staged content is named by its
 * action's index, xattrs are read from the plan again in phase (5) and set in batches bounded
 * by bytes (src/host/xattr.ts), not gathered into a list of every labelled file.
 */
import { constants, createReadStream, lstatSync, renameSync } from 'node:fs';
import { copyFile, lstat, mkdir, rename, rm, rmdir, unlink } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { removeXattr, setXattrs } from '../../host/xattr.ts';
import { isVerifiedFile, type ContentProvider, type EntryList } from './content.ts';
import { takeFromSnapshot } from './from-snapshot.ts';
import { ContentUnavailableError, UnsafePathError, mapFsError } from './errors.ts';
import {
  SafeRoot,
  createSpecial,
  ensureDir,
  makeLink,
  reflinkFile,
  removeTree,
  sameTime,
  setMetaAt,
  writeNewFile,
} from './fsops.ts';
import { comparePaths, parentOf } from '../../layer/paths.ts';
import { showPath } from '../../layer/entry.ts';
import type { SpaceGuard } from './space.ts';
import type { ContentIndex } from './scan.ts';
import type { IndexKeyParts } from './index-table.ts';
import type { Action, ActionKind, ActionList, ApplyReport, Counter, Plan, TreeEntry } from './types.ts';
import { emptyReport } from './types.ts';

export interface ExecuteOptions {
  /** Where reflinks are impossible (not btrfs/xfs), copy instead of failing. Default false. */
  allowCopyFallback?: boolean;
  /** Updated with the digest of every regular file of the new tree, keyed by (ino, size, mtime, ctime). */
  index?: ContentIndex;
  /** The free-space reserve: content written counts against it (DISK_FULL before the filesystem is full). */
  space?: SpaceGuard;
  /** Called once per phase, for progress reporting. */
  onPhase?: (phase: 'fetch' | 'reflink' | 'delete' | 'tree' | 'links' | 'xattrs' | 'mtimes' | 'index') => void;
}

function add(c: Counter, bytes: number): void {
  c.count++;
  c.bytes += bytes;
}

/** Where an action's content is in the staging directory. */
const NOT_STAGED = 0;
const FETCHING = 1;
/** New content from the content provider (counted as written). */
const FETCHED = 2;
/** A reflink of a file already on disk (this or another snapshot, counted as reflinked). */
const CLONED = 3;

/**
 * Content staged for the tree phase, by action index: the staging name is the index, so a byte
 * per action is all that is kept (a map of paths to staging names was ~70 bytes a file).
 */
class StagedContent {
  readonly dir: string;
  readonly #state: Uint8Array;

  constructor(dir: string, actions: number) {
    this.dir = dir;
    this.#state = new Uint8Array(actions);
  }

  /** The staging name of action `i` (relative to the root). */
  nameOf(i: number): string {
    return `${this.dir}/${i}`;
  }

  state(i: number): number {
    return this.#state[i]!;
  }

  set(i: number, state: number): void {
    this.#state[i] = state;
  }
}

/** What phase (5) sets and removes: the plan read again, one entry at a time. */
function* xattrsToSet(sr: SafeRoot, actions: ActionList): Generator<{ path: Buffer; set: Record<string, Buffer> }> {
  for (let i = 0; i < actions.length; i++) {
    const a = actions.at(i)!;
    const e = a.entry;
    // As phase (3) goes through the plan: a hardlink shares its target's inode.
    if (a.kind === 'keep' || a.kind === 'link') continue;
    if (a.kind === 'meta') {
      const names = a.fix?.xattrSet;
      if (names?.length) yield { path: sr.path(e.path), set: Object.fromEntries(names.map((k) => [k, e.xattrs[k]!])) };
      continue;
    }
    if (e.type !== 'hardlink' && Object.keys(e.xattrs).length) yield { path: sr.path(e.path), set: e.xattrs };
  }
}

/**
 * Rename staged content to its place. The staging directory lives in the snapshot's top
 * subvolume, and rename() cannot cross into a nested one (MicroOS's /etc is a subvolume inside
 * each snapshot): there the content is reflinked beside its place first, which shares the extents.
 */
async function moveIntoPlace(
  sr: SafeRoot,
  staged: string,
  rel: string,
  e: TreeEntry,
  allowCopy: boolean,
): Promise<void> {
  try {
    renameSync(sr.path(staged), sr.path(rel));
    return;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
  }
  const tmp = await sr.tmpBeside(rel);
  await reflinkFile(sr.path(staged), sr.path(tmp), allowCopy);
  await setMetaAt(sr, tmp, e);
  await rename(sr.path(tmp), sr.path(rel));
  await unlink(sr.path(staged));
}

/**
 * Reflink a verified file into the staging directory; false where the filesystem can't (then
 * the caller copies the bytes, verifying them). The size is checked again on the clone.
 */
async function cloneVerified(from: string, to: Buffer, size: number, what: string): Promise<boolean> {
  try {
    await copyFile(from, to, constants.COPYFILE_EXCL | constants.COPYFILE_FICLONE_FORCE);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOTSUP' || code === 'EOPNOTSUPP' || code === 'EXDEV' || code === 'EINVAL' || code === 'ENOSYS') {
      await rm(to, { force: true });
      return false;
    }
    throw e;
  }
  const st = await lstat(to);
  if (!st.isFile() || st.size !== size)
    throw new ContentUnavailableError(what, `the verified content has ${st.size} bytes instead of ${size}`);
  return true;
}

export async function executePlan(
  root: string,
  plan: Plan,
  provider: ContentProvider,
  opts: ExecuteOptions = {},
): Promise<ApplyReport> {
  try {
    return await executePlanInner(root, plan, provider, opts);
  } catch (e) {
    throw mapFsError(e, root);
  }
}

async function executePlanInner(
  root: string,
  plan: Plan,
  provider: ContentProvider,
  opts: ExecuteOptions,
): Promise<ApplyReport> {
  const sr = await SafeRoot.open(root, 'binary');
  await opts.space?.check();
  const report = emptyReport();
  const stagingRel = `.tiu-staging-${randomBytes(6).toString('hex')}`;
  await mkdir(sr.path(stagingRel), 0o700);
  sr.markDir(stagingRel);
  const run: Run = { sr, plan, staged: new StagedContent(stagingRel, plan.actions.length), report, opts };

  try {
    await stageContent(run, provider);
    await deleteOld(run);
    const links = await writeTree(run);
    await makeLinks(run, links);
    await setAllXattrs(run);
  } finally {
    await removeTree(sr, stagingRel, report.warnings).catch(() => undefined);
    await rmdir(sr.path(stagingRel)).catch(() => undefined);
  }
  await fixDirMtimes(run);

  if (opts.index) {
    opts.onPhase?.('index');
    // Every regular file of a plan has its sha256 (planApply refuses one without): no digest text made to count them.
    let files = 0;
    for (let i = 0; i < plan.actions.length; i++) if (plan.actions.at(i)!.entry.type === 'reg') files++;
    opts.index.replaceRows(files, writtenFiles(sr, plan.actions));
  }
  return report;
}

/**
 * What each phase of one plan's execution works on. The phases are functions of their own, not
 * one: V8 compiles a hot loop's function whole (on-stack replacement), and a compile of the
 * single function every phase was in took up to 11 MiB of the optimizing compiler's memory
 * (`--turbo-stats`, its largest compile in a first install of the bench's larger tree), on top of
 * the plan while it runs.
 */
interface Run {
  readonly sr: SafeRoot;
  readonly plan: Plan;
  readonly staged: StagedContent;
  readonly report: ApplyReport;
  readonly opts: ExecuteOptions;
}

/**
 * The entries of some of a plan's actions (indices in path order: a planner's actions are), made
 * when asked: what the executor gives its content provider (an EntryList).
 */
class ActionEntries implements EntryList {
  readonly #actions: ActionList;
  readonly #indices: Int32Array;

  /** `indices`: in action order; put in path order here where the actions are not (a plan made by hand). */
  constructor(actions: ActionList, indices: Int32Array) {
    this.#actions = actions;
    const path = (i: number) => pathOfAction(actions, i);
    for (let k = 1; k < indices.length; k++)
      if (comparePaths(path(indices[k - 1]!), path(indices[k]!)) > 0) {
        indices.sort((a, b) => comparePaths(path(a), path(b)));
        break;
      }
    this.#indices = indices;
  }

  get length(): number {
    return this.#indices.length;
  }

  at(k: number): TreeEntry | undefined {
    if (k < 0) k += this.#indices.length;
    return k >= 0 && k < this.#indices.length ? entryOfAction(this.#actions, this.#indices[k]!) : undefined;
  }

  actionAt(k: number): number {
    return this.#indices[k]!;
  }

  *[Symbol.iterator](): Iterator<TreeEntry> {
    for (let k = 0; k < this.#indices.length; k++) yield this.at(k)!;
  }

  /** The action index of the entry at `path`, or -1 (binary search: the indices are in path order). */
  actionOf(path: string): number {
    let lo = 0;
    let hi = this.#indices.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const i = this.#indices[mid]!;
      const c = comparePaths(pathOfAction(this.#actions, i), path);
      if (c === 0) return i;
      if (c < 0) lo = mid + 1;
      else hi = mid - 1;
    }
    return -1;
  }
}

// Action `i`'s path, kind and entry without making what is not asked for, where the list can
// say them alone (plan-actions.ts: an action object, and a TOC file's entry, is made per read;
// the executor's loops that only filter by kind read every action of the plan).
function pathOfAction(actions: ActionList, i: number): string {
  return actions.pathAt ? actions.pathAt(i) : actions.at(i)!.entry.path;
}
function kindOfAction(actions: ActionList, i: number): ActionKind {
  return actions.kindAt ? actions.kindAt(i) : actions.at(i)!.kind;
}
function entryOfAction(actions: ActionList, i: number): TreeEntry {
  return actions.entryAt ? actions.entryAt(i) : actions.at(i)!.entry;
}

/** (1) Content into staging: from other snapshots first, then what is still missing from the provider. */
async function stageContent(run: Run, provider: ContentProvider): Promise<void> {
  const { sr, plan, staged, report, opts } = run;
  opts.onPhase?.('fetch');
  // The actions whose content is fetched: their indices, in action (path) order. The provider
  // names an entry by its path, found among them by binary search. A Map of path to index and a
  // list of the entries held ~110 bytes a file through the delivery (a first install's every file).
  const writes: number[] = [];
  for (let i = 0; i < plan.actions.length; i++) if (kindOfAction(plan.actions, i) === 'write') writes.push(i);
  const fallbacks: number[] = [];
  const sources = new Map<string, SafeRoot | null>();
  for (let i = 0; i < plan.actions.length; i++) {
    if (kindOfAction(plan.actions, i) !== 'reflink') continue;
    const a = plan.actions.at(i)!;
    const f = a.fromSnapshot;
    if (!f) continue;
    let src = sources.get(f.root);
    if (src === undefined) sources.set(f.root, (src = await SafeRoot.open(f.root, 'binary').catch(() => null)));
    const got = src
      ? await takeFromSnapshot(src, f, a.entry, sr.path(staged.nameOf(i)), opts.allowCopyFallback ?? false)
      : { ok: false as const, why: 'the snapshot is gone' };
    if (got.ok) {
      if (!got.reflinked) add(report.copiedInsteadOfReflink, a.entry.size);
      staged.set(i, CLONED);
      continue;
    }
    report.warnings.push(
      `/${showPath(a.entry.path)}: not taken from snapshot ${f.snapshot} (/${showPath(f.seen.path)}): ${got.why}; fetched instead`,
    );
    add(report.snapshotFallbacks, a.entry.size);
    fallbacks.push(i);
  }
  const wanted = new ActionEntries(
    plan.actions,
    Int32Array.from(fallbacks.length ? [...writes, ...fallbacks].sort((a, b) => a - b) : writes),
  );
  writes.length = 0;
  if (wanted.length) {
    await provider.deliver(wanted, async (entry, content) => {
      const i = wanted.actionOf(entry.path);
      if (i === -1 || staged.state(i) !== NOT_STAGED)
        throw new ContentUnavailableError(
          entry.path,
          'the provider delivered an entry that was not asked for, or twice',
        );
      staged.set(i, FETCHING); // before any await: a provider may deliver several at once
      const want = plan.actions.at(i)!.entry;
      const to = sr.path(staged.nameOf(i));
      if (isVerifiedFile(content)) {
        // Already verified by this process (the delta store, same filesystem): share its extents.
        if (await cloneVerified(content.verifiedFile, to, want.size, want.path)) {
          add(report.clonedFromStore, want.size);
          staged.set(i, FETCHED);
          return;
        }
        content = createReadStream(content.verifiedFile);
      }
      await writeNewFile(to, content, { digest: want.digest!, size: want.size }, want.path, opts.space);
      staged.set(i, FETCHED);
    });
    for (let k = 0; k < wanted.length; k++)
      if (staged.state(wanted.actionAt(k)) !== FETCHED)
        throw new ContentUnavailableError(wanted.at(k)!.path, 'the content provider did not deliver it');
  }
  opts.onPhase?.('reflink');
  for (let i = 0; i < plan.actions.length; i++) {
    const kind = kindOfAction(plan.actions, i);
    if (kind !== 'reflink' && kind !== 'clone') continue;
    const a = plan.actions.at(i)!;
    if (!((a.kind === 'reflink' && !a.fromNew && !a.fromSnapshot) || a.kind === 'clone')) continue;
    const from = a.from!;
    const st = await lstat(sr.path(from)).catch(() => null);
    if (!st?.isFile()) throw new UnsafePathError(from, 'reflink source is no longer a regular file');
    const real = await reflinkFile(sr.path(from), sr.path(staged.nameOf(i)), opts.allowCopyFallback ?? false);
    if (!real) add(report.copiedInsteadOfReflink, a.entry.size);
    staged.set(i, CLONED);
  }
}

/** (2) The old paths the new tree does not have. */
async function deleteOld(run: Run): Promise<void> {
  const { sr, plan, report, opts } = run;
  opts.onPhase?.('delete');
  for (const d of plan.deletes) {
    const r = await removeTree(sr, d, report.warnings);
    report.deleted.count += r.count;
    report.deleted.bytes += r.bytes;
  }
}

/** (3) The tree, parents first; returns the hardlinks, made once their targets are there. */
async function writeTree(run: Run): Promise<Action[]> {
  const { sr, plan, staged, report, opts } = run;
  opts.onPhase?.('tree');
  const links: Action[] = [];
  // Indexed, as planApply's loops: `entries()` made a pair per action.
  for (let i = 0; i < plan.actions.length; i++) {
    const a = plan.actions.at(i)!;
    const e = a.entry;
    const rel = e.path;
    const bytes = e.type === 'reg' ? e.size : 0;
    if (a.kind === 'keep') {
      add(report.kept, bytes);
      continue;
    }
    if (a.kind === 'link') {
      links.push(a);
      continue;
    }
    if (rel !== '') await sr.verifyDir(parentOf(rel), rel);
    if (a.replace) await clearFor(sr, rel, e, report.warnings);
    if (a.kind === 'meta') {
      await setMetaAt(sr, rel, e, a.fix ?? {});
      if (e.type === 'dir') sr.markDir(rel);
      add(report.metadataFixed, bytes);
      continue;
    }
    switch (e.type) {
      case 'dir':
        await ensureDir(sr, rel, e);
        add(report.created, 0);
        break;
      case 'reg': {
        const state = staged.state(i);
        let src = state === FETCHED || state === CLONED ? staged.nameOf(i) : undefined;
        if (a.kind === 'reflink' && a.fromNew) {
          const tmp = await sr.tmpBeside(rel);
          const fst = await lstat(sr.path(a.from!)).catch(() => null);
          if (!fst?.isFile()) throw new UnsafePathError(a.from!, 'reflink source is not a regular file');
          const real = await reflinkFile(sr.path(a.from!), sr.path(tmp), opts.allowCopyFallback ?? false);
          if (!real) add(report.copiedInsteadOfReflink, e.size);
          src = tmp;
        }
        if (!src) throw new ContentUnavailableError(rel, 'no staged content');
        await setMetaAt(sr, src, e);
        await moveIntoPlace(sr, src, rel, e, opts.allowCopyFallback ?? false);
        if (a.kind === 'write' || state === FETCHED) add(report.written, bytes);
        else {
          add(report.reflinked, bytes);
          if (a.fromSnapshot) add(report.reflinkedFromSnapshots, bytes);
        }
        break;
      }
      case 'symlink':
      case 'char':
      case 'block':
      case 'fifo':
        await createSpecial(sr, rel, e);
        add(report.created, 0);
        break;
      case 'hardlink':
        links.push(a);
        continue;
    }
  }
  return links;
}

/** (4) Hardlinks. */
async function makeLinks(run: Run, links: readonly Action[]): Promise<void> {
  const { sr, report, opts } = run;
  opts.onPhase?.('links');
  for (const a of links) {
    const e = a.entry;
    if (a.replace) await clearFor(sr, e.path, e, report.warnings);
    await makeLink(sr, e.path, e.linkname!);
    add(report.linked, 0);
  }
}

/** (5) Xattrs, after every chown. */
async function setAllXattrs(run: Run): Promise<void> {
  const { sr, plan, opts } = run;
  opts.onPhase?.('xattrs');
  await setXattrs(xattrsToSet(sr, plan.actions));
  for (let i = 0; i < plan.actions.length; i++) {
    const a = plan.actions.at(i)!;
    if (a.kind === 'meta') for (const k of a.fix?.xattrRemove ?? []) await removeXattr(sr.path(a.entry.path), k);
  }
}

/** (6) Directory mtimes, now that nothing changes inside them any more. */
async function fixDirMtimes(run: Run): Promise<void> {
  const { sr, plan, opts } = run;
  opts.onPhase?.('mtimes');
  for (let i = 0; i < plan.actions.length; i++) {
    const e = plan.actions.at(i)!.entry;
    if (e.type !== 'dir' || e.implicit) continue;
    const st = await lstat(sr.path(e.path), { bigint: true });
    if (!sameTime(st.mtimeNs, e.mtimeNs)) await setMetaAt(sr, e.path, e, { mtime: true });
  }
}

/**
 * The key and digest of every regular file of the new tree, as it is on disk now (for the content
 * index). One lstat after the other on this thread: nothing runs beside this last phase, and an
 * awaited lstat per file (its promise, the async generator's, the loop's) went through the event
 * loop each time and made most of ~3 KiB of garbage a file (a file-level update of the bench's
 * larger tree, 45,000 files: 142 MiB allocated in this phase, sampled; its peak was here).
 */
function* writtenFiles(sr: SafeRoot, actions: ActionList): Generator<readonly [IndexKeyParts, string]> {
  for (let i = 0; i < actions.length; i++) {
    const e = actions.at(i)!.entry;
    if (e.type !== 'reg') continue;
    const digest = e.digest;
    if (!digest) continue;
    const st = lstatSync(sr.path(e.path), { bigint: true });
    yield [{ ino: st.ino, size: Number(st.size), mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs }, digest];
  }
}

/** Make room at `rel` for an entry of another type: a directory goes (recursively); a non-directory where a directory must be goes. */
async function clearFor(sr: SafeRoot, rel: string, e: TreeEntry, warnings: string[]): Promise<void> {
  const st = await lstat(sr.path(rel)).catch(() => null);
  if (!st) return;
  if (st.isDirectory() && e.type !== 'dir') await removeTree(sr, rel, warnings);
  else if (!st.isDirectory() && e.type === 'dir') await removeTree(sr, rel, warnings);
  // other cases: the rename of the new entry replaces it atomically
}
