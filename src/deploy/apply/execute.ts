/**
 * The executor: carries out a Plan in the target directory.
 *
 * Phases: (1) everything with content is first materialised in a staging directory inside the
 * root: clones from other snapshots (from-snapshot.ts; one that vanished or changed is fetched
 * from the provider instead), new content from the provider (verified by sha256 and size, holes
 * kept), reflinks of old files (taken before anything is deleted or overwritten, so moved and
 * swapped files work);
 * (2) deletions; (3) the tree in path order, parents first: directories, files renamed from
 * staging, symlinks, devices, fifos; (4) hardlinks; (5) xattrs in one setfattr run, after every
 * chown (chown drops security.capability); (6) directory mtimes last.
 */
import { constants, createReadStream, renameSync } from 'node:fs';
import { copyFile, lstat, mkdir, rename, rm, rmdir, unlink } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { removeXattr, setXattrs } from '../../host/xattr.ts';
import { isVerifiedFile, type ContentProvider } from './content.ts';
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
import { parentOf } from '../../layer/paths.ts';
import { showPath } from '../../layer/entry.ts';
import type { SpaceGuard } from './space.ts';
import type { ContentIndex, IndexKey } from './scan.ts';
import type { Action, ApplyReport, Counter, Plan, TreeEntry } from './types.ts';
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
  const staged = new Map<string, string>();
  let n = 0;
  const xattrSets: { path: Buffer; set: Record<string, Buffer> }[] = [];
  const xattrRemoves: { path: Buffer; name: string }[] = [];

  try {
    // (1) content into staging: first from other snapshots, then what is still missing from the provider
    opts.onPhase?.('fetch');
    const writes = new Map<string, TreeEntry>();
    for (const a of plan.actions) if (a.kind === 'write') writes.set(a.entry.path, a.entry);
    const sources = new Map<string, SafeRoot | null>();
    for (const a of plan.actions) {
      const f = a.fromSnapshot;
      if (a.kind !== 'reflink' || !f) continue;
      let src = sources.get(f.root);
      if (src === undefined) sources.set(f.root, (src = await SafeRoot.open(f.root, 'binary').catch(() => null)));
      const rel = `${stagingRel}/${++n}`;
      const got = src
        ? await takeFromSnapshot(src, f, a.entry, sr.path(rel), opts.allowCopyFallback ?? false)
        : { ok: false as const, why: 'the snapshot is gone' };
      if (got.ok) {
        if (!got.reflinked) add(report.copiedInsteadOfReflink, a.entry.size);
        staged.set(a.entry.path, rel);
        continue;
      }
      report.warnings.push(
        `/${showPath(a.entry.path)}: not taken from snapshot ${f.snapshot} (/${showPath(f.seen.path)}): ${got.why}; fetched instead`,
      );
      add(report.snapshotFallbacks, a.entry.size);
      writes.set(a.entry.path, a.entry);
    }
    if (writes.size) {
      const taken = new Set<string>();
      await provider.deliver([...writes.values()], async (entry, content) => {
        const want = writes.get(entry.path);
        if (!want || taken.has(entry.path))
          throw new ContentUnavailableError(
            entry.path,
            'the provider delivered an entry that was not asked for, or twice',
          );
        taken.add(entry.path); // before any await: a provider may deliver several at once
        const rel = `${stagingRel}/${++n}`;
        if (isVerifiedFile(content)) {
          // Already verified by this process (the delta store, same filesystem): share its extents.
          if (await cloneVerified(content.verifiedFile, sr.path(rel), want.size, want.path)) {
            add(report.clonedFromStore, want.size);
            staged.set(entry.path, rel);
            return;
          }
          content = createReadStream(content.verifiedFile);
        }
        await writeNewFile(sr.path(rel), content, { digest: want.digest!, size: want.size }, want.path, opts.space);
        staged.set(entry.path, rel);
      });
      for (const p of writes.keys())
        if (!staged.has(p)) throw new ContentUnavailableError(p, 'the content provider did not deliver it');
    }
    opts.onPhase?.('reflink');
    for (const a of plan.actions) {
      if (!((a.kind === 'reflink' && !a.fromNew && !a.fromSnapshot) || a.kind === 'clone')) continue;
      const from = a.from!;
      const st = await lstat(sr.path(from)).catch(() => null);
      if (!st?.isFile()) throw new UnsafePathError(from, 'reflink source is no longer a regular file');
      const rel = `${stagingRel}/${++n}`;
      const real = await reflinkFile(sr.path(from), sr.path(rel), opts.allowCopyFallback ?? false);
      if (!real) add(report.copiedInsteadOfReflink, a.entry.size);
      staged.set(a.entry.path, rel);
    }

    // (2) deletions
    opts.onPhase?.('delete');
    for (const d of plan.deletes) {
      const r = await removeTree(sr, d, report.warnings);
      report.deleted.count += r.count;
      report.deleted.bytes += r.bytes;
    }

    // (3) the tree, parents first
    opts.onPhase?.('tree');
    const links: Action[] = [];
    for (const a of plan.actions) {
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
        if (a.fix?.xattrSet?.length)
          xattrSets.push({ path: sr.path(rel), set: Object.fromEntries(a.fix.xattrSet.map((k) => [k, e.xattrs[k]!])) });
        for (const k of a.fix?.xattrRemove ?? []) xattrRemoves.push({ path: sr.path(rel), name: k });
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
          let src = staged.get(rel);
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
          if (a.kind === 'write' || writes.has(rel)) add(report.written, bytes);
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
      if (Object.keys(e.xattrs).length) xattrSets.push({ path: sr.path(rel), set: e.xattrs });
    }

    // (4) hardlinks
    opts.onPhase?.('links');
    for (const a of links) {
      const e = a.entry;
      if (a.replace) await clearFor(sr, e.path, e, report.warnings);
      await makeLink(sr, e.path, e.linkname!);
      add(report.linked, 0);
    }

    // (5) xattrs, after every chown
    opts.onPhase?.('xattrs');
    await setXattrs(xattrSets);
    for (const x of xattrRemoves) await removeXattr(x.path, x.name);
  } finally {
    await removeTree(sr, stagingRel, report.warnings).catch(() => undefined);
    await rmdir(sr.path(stagingRel)).catch(() => undefined);
  }

  // (6) directory mtimes, now that nothing changes inside them any more
  opts.onPhase?.('mtimes');
  for (const a of plan.actions) {
    const e = a.entry;
    if (e.type !== 'dir' || e.implicit) continue;
    const st = await lstat(sr.path(e.path), { bigint: true });
    if (!sameTime(st.mtimeNs, e.mtimeNs)) await setMetaAt(sr, e.path, e, { mtime: true });
  }

  if (opts.index) {
    opts.onPhase?.('index');
    // The keys as they are recorded, not an object of three BigInts per file kept until the end.
    const keep = new Set<IndexKey>();
    for (const a of plan.actions) {
      const e = a.entry;
      if (e.type !== 'reg' || !e.digest) continue;
      const st = await lstat(sr.path(e.path), { bigint: true });
      keep.add(
        opts.index.remember({ ino: st.ino, size: Number(st.size), mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs }, e.digest),
      );
    }
    opts.index.retainKeys(keep);
  }
  return report;
}

/** Make room at `rel` for an entry of another type: a directory goes (recursively); a non-directory where a directory must be goes. */
async function clearFor(sr: SafeRoot, rel: string, e: TreeEntry, warnings: string[]): Promise<void> {
  const st = await lstat(sr.path(rel)).catch(() => null);
  if (!st) return;
  if (st.isDirectory() && e.type !== 'dir') await removeTree(sr, rel, warnings);
  else if (!st.isDirectory() && e.type === 'dir') await removeTree(sr, rel, warnings);
  // other cases: the rename of the new entry replaces it atomically
}
