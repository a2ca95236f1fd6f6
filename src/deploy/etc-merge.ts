/**
 * Three-way merge of /etc. base = the old image's pristine copy (/usr/lib/tiu/etc of the old
 * snapshot), ours = the admin's current /etc, theirs = the new image's /etc (equally the new
 * snapshot's /usr/lib/tiu/etc). Per path, comparing type, content, symlink target, mode and
 * owner ("content" in all senses):
 *   ours == theirs                -> nothing to do
 *   base == theirs (upstream kept) -> ours stays (admin's change, addition or deletion kept)
 *   base == ours (admin kept)      -> theirs is taken (update, new default, upstream deletion)
 *   all three differ               -> conflict: the admin's version stays; where the image has
 *                                     a file or symlink it is written beside as <path>.tiunew
 * A directory the upstream deleted is removed only when nothing the admin kept is inside.
 * passwd/group/shadow/gshadow are left to users-merge. Planning is pure (planEtcMerge);
 * scanEtc and applyEtcMerge touch the filesystem.
 */
import { createHash } from 'node:crypto';
import { lchown, lstat, lutimes, mkdir, rename, rmdir, symlink, unlink, chmod } from 'node:fs/promises';
import { join } from 'node:path';
import { TiuError } from '../errors.ts';
import { getXattrs, setXattrs } from '../host/xattr.ts';
import { openNoFollow, SafeRoot, tmpName } from './apply/fsops.ts';
import { comparePaths, isAtOrBelow, joinPath, parentOf } from '../layer/paths.ts';
import { settableXattrs } from '../host/xattr-names.ts';
import { RootedDir } from './rooted.ts';

export const TIUNEW_SUFFIX = '.tiunew';
/** The piece a scan reads an /etc file in to hash it (64 KiB took 14 times as long for a 2 GiB file). */
const ETC_READ_PIECE = 1024 * 1024;
export const USER_DB_FILES = ['passwd', 'group', 'shadow', 'gshadow'] as const;

export interface EtcNode {
  type: 'file' | 'dir' | 'symlink' | 'other';
  mode: number;
  uid: number;
  gid: number;
  /** sha256 of a file's content, the target of a symlink, `major:minor`/type for others. */
  content: string;
  mtimeMs?: number;
}

export type EtcTree = Map<string, EtcNode>;

export type EtcConflictKind =
  | 'both-changed' // admin and image changed (or both added) differently: admin's kept, image's as .tiunew
  | 'deleted-by-admin-changed-upstream' // admin deleted, image changed: stays deleted, image's as .tiunew
  | 'changed-by-admin-deleted-upstream' // admin changed, image deleted: admin's kept
  | 'parent-not-directory'; // the image has something below a path the admin turned into a non-directory

export interface EtcConflict {
  path: string;
  kind: EtcConflictKind;
  /** Where the image's version was written, if it was. */
  tiunew?: string;
}

export type EtcAction =
  | { op: 'take'; path: string; node: EtcNode }
  | { op: 'delete'; path: string; node: EtcNode }
  | { op: 'tiunew'; path: string; to: string; node: EtcNode };

export interface EtcMergePlan {
  actions: EtcAction[];
  conflicts: EtcConflict[];
  /** Paths where the admin's version stays on purpose (their change or deletion). */
  keptLocal: string[];
  /** Directories the image removed that stay because the admin has files in them. */
  keptNonEmpty: string[];
}

export interface EtcMergeReport extends EtcMergePlan {
  updated: number;
  deleted: number;
  tiunew: number;
}

export class EtcMergeError extends TiuError {
  constructor(path: string, why: string) {
    super('ETC_MERGE_FAILED', `/etc merge: ${path}: ${why}`, { path, why });
  }
}

export function sameNode(a: EtcNode | undefined, b: EtcNode | undefined): boolean {
  if (!a || !b) return a === b;
  if (a.type !== b.type || a.content !== b.content || a.uid !== b.uid || a.gid !== b.gid) return false;
  return a.type === 'symlink' || a.mode === b.mode;
}

export interface EtcMergeOptions {
  /** Top-level names merged elsewhere (default: passwd, group, shadow, gshadow). */
  skip?: readonly string[];
}

export function planEtcMerge(base: EtcTree, ours: EtcTree, theirs: EtcTree, opts: EtcMergeOptions = {}): EtcMergePlan {
  const skip = opts.skip ?? USER_DB_FILES;
  const plan: EtcMergePlan = { actions: [], conflicts: [], keptLocal: [], keptNonEmpty: [] };
  const all = [...new Set([...base.keys(), ...ours.keys(), ...theirs.keys()])]
    .filter((p) => p !== '' && !skip.some((s) => isAtOrBelow(p, s)))
    .sort(comparePaths);
  // The result type at each path, to refuse writing below a non-directory.
  const result = new Map<string, EtcNode | undefined>();
  const deleting = new Set<string>();
  // A directory waiting for deletion is still a directory while its content is decided.
  const resultIsDir = (p: string): boolean =>
    p === '' ? true : result.has(p) ? result.get(p)?.type === 'dir' : ours.get(p)?.type === 'dir';
  const deletes: { path: string; node: EtcNode }[] = [];

  for (const p of all) {
    const b = base.get(p);
    const o = ours.get(p);
    const t = theirs.get(p);
    if (sameNode(o, t)) {
      result.set(p, o);
      continue;
    }
    if (sameNode(b, t)) {
      plan.keptLocal.push(p);
      result.set(p, o);
      continue;
    }
    if (!resultIsDir(parentOf(p))) {
      if (t) plan.conflicts.push({ path: p, kind: 'parent-not-directory' });
      result.set(p, o);
      continue;
    }
    if (sameNode(b, o)) {
      if (t) {
        plan.actions.push({ op: 'take', path: p, node: t });
        result.set(p, t);
      } else if (o) {
        deletes.push({ path: p, node: o });
        deleting.add(p);
        result.set(p, o);
      }
      continue;
    }
    // all three differ
    result.set(p, o);
    if (!t) {
      plan.conflicts.push({ path: p, kind: 'changed-by-admin-deleted-upstream' });
      continue;
    }
    const kind: EtcConflictKind = o ? 'both-changed' : 'deleted-by-admin-changed-upstream';
    if (t.type === 'file' || t.type === 'symlink') {
      const to = p + TIUNEW_SUFFIX;
      plan.actions.push({ op: 'tiunew', path: p, to, node: t });
      plan.conflicts.push({ path: p, kind, tiunew: to });
    } else plan.conflicts.push({ path: p, kind });
  }

  // Deletions, deepest first; a directory goes only when nothing remains in it.
  const remaining = (d: string): boolean => {
    for (const [p, n] of result) if (n && p !== d && isAtOrBelow(p, d) && !deleting.has(p)) return true;
    for (const p of ours.keys())
      if (p !== d && isAtOrBelow(p, d) && !result.has(p) && !skip.some((s) => isAtOrBelow(p, s))) return true;
    return false;
  };
  for (const d of deletes.sort((x, y) => comparePaths(y.path, x.path))) {
    if (d.node.type === 'dir' && remaining(d.path)) {
      plan.keptNonEmpty.push(d.path);
      deleting.delete(d.path);
      continue;
    }
    plan.actions.push({ op: 'delete', path: d.path, node: d.node });
  }
  return plan;
}

/**
 * Read a directory tree into an EtcTree (content by sha256; symlinks not followed). A missing
 * directory is an empty tree. Everything below `dir` is read through a RootedDir (no symlink
 * followed); the caller has checked the components of `dir` itself (update.ts: within the snapshot).
 */
export async function scanEtc(dir: string): Promise<EtcTree> {
  const out: EtcTree = new Map();
  const st0 = await lstat(dir).catch(() => null);
  if (!st0) return out;
  if (!st0.isDirectory()) throw new EtcMergeError(dir, 'is not a directory');
  const rd = await RootedDir.open(dir);
  // One read buffer per scan (the three trees are scanned at once): a file is hashed piece by
  // piece, never read whole (an image's /etc may hold a file of any size).
  const piece = Buffer.allocUnsafe(ETC_READ_PIECE);
  async function contentHash(rel: string): Promise<string> {
    const h = createHash('sha256');
    const fh = await rd.openNoFollow(rel, 'file');
    try {
      for (;;) {
        const { bytesRead } = await fh.read(piece, 0, piece.length, null);
        if (bytesRead === 0) break;
        h.update(piece.subarray(0, bytesRead));
      }
    } finally {
      await fh.close();
    }
    return h.digest('hex');
  }
  async function walk(rel: string): Promise<void> {
    for await (const d of await rd.opendir(rel)) {
      const p = joinPath(rel, d.name);
      const st = await rd.lstat(p);
      if (!st) throw new EtcMergeError(join(dir, p), 'vanished while /etc was read');
      const base = { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, mtimeMs: st.mtimeMs };
      if (st.isFile()) out.set(p, { type: 'file', ...base, content: await contentHash(p) });
      else if (st.isSymbolicLink()) out.set(p, { type: 'symlink', ...base, content: await rd.readlink(p) });
      else if (st.isDirectory()) {
        out.set(p, { type: 'dir', ...base, content: '' });
        await walk(p);
      } else out.set(p, { type: 'other', ...base, content: `${st.mode & 0o170000}:${st.rdev}` });
    }
  }
  await walk('');
  return out;
}

/**
 * Carry out a plan: `theirsDir` is where the image's /etc is, `oursDir` the /etc being merged
 * (in the new snapshot). Writes go through verified parents and temporary names.
 */
export async function applyEtcMerge(plan: EtcMergePlan, oursDir: string, theirsDir: string): Promise<EtcMergeReport> {
  const sr = await SafeRoot.open(oursDir);
  const theirs = await RootedDir.open(theirsDir);
  const report: EtcMergeReport = { ...plan, updated: 0, deleted: 0, tiunew: 0 };
  const copied: { from: string; to: string }[] = [];
  const keptNonEmpty = [...plan.keptNonEmpty];
  const conflicts = [...plan.conflicts];
  // deletions first (deepest first), so a directory the image turned into a file is gone
  for (const a of plan.actions) {
    if (a.op !== 'delete') continue;
    const abs = sr.abs(a.path);
    await sr.verifyDir(parentOf(a.path), a.path);
    const st = await lstat(abs).catch(() => null);
    if (!st) continue;
    if (st.isDirectory()) {
      try {
        await rmdir(abs);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOTEMPTY') throw e;
        keptNonEmpty.push(a.path);
        continue;
      }
      sr.forget(a.path);
    } else await unlink(abs);
    report.deleted++;
  }
  for (const a0 of plan.actions) {
    if (a0.op === 'delete') continue;
    let a = a0;
    if (a.op === 'take' && a.node.type !== 'dir') {
      const cur = await lstat(sr.abs(a.path)).catch(() => null);
      if (cur?.isDirectory()) {
        try {
          await rmdir(sr.abs(a.path));
          sr.forget(a.path);
        } catch {
          // the admin keeps files in it: the image's version goes beside
          a = { op: 'tiunew', path: a.path, to: a.path + TIUNEW_SUFFIX, node: a.node };
          conflicts.push({ path: a.path, kind: 'both-changed', tiunew: a.to });
        }
      }
    }
    const dest = a.op === 'take' ? a.path : a.to;
    await sr.verifyDir(parentOf(dest), dest);
    const src = theirs.abs(a.path);
    const sst = await theirs.lstat(a.path);
    if (!sst) throw new EtcMergeError(a.path, 'missing from the new image /etc');
    const destAbs = sr.abs(dest);
    if (a.node.type === 'dir') {
      if (!sst.isDirectory()) throw new EtcMergeError(a.path, 'changed type in the new image /etc while merging');
      const cur = await lstat(destAbs).catch(() => null);
      if (cur && !cur.isDirectory()) await unlink(destAbs);
      if (!cur?.isDirectory()) await mkdir(destAbs, 0o700);
      const fh = await openNoFollow(destAbs, true);
      try {
        await fh.chown(sst.uid, sst.gid);
        await fh.chmod(sst.mode & 0o7777);
      } finally {
        await fh.close();
      }
      sr.markDir(dest);
    } else {
      const cur = await lstat(destAbs).catch(() => null);
      if (cur?.isDirectory()) throw new EtcMergeError(dest, 'is a directory where the image has a file');
      const tmp = joinPath(parentOf(dest), tmpName());
      const tmpAbs = sr.abs(tmp);
      if (sst.isSymbolicLink()) await symlink(await theirs.readlink(a.path), tmpAbs);
      else if (sst.isFile()) await theirs.copyFileOut(a.path, tmpAbs);
      else throw new EtcMergeError(a.path, 'special files in /etc are not merged');
      await lchown(tmpAbs, sst.uid, sst.gid);
      if (!sst.isSymbolicLink()) await chmod(tmpAbs, sst.mode & 0o7777);
      await lutimes(tmpAbs, sst.atime, sst.mtime);
      await rename(tmpAbs, destAbs);
      copied.push({ from: src, to: destAbs });
    }
    if (a.op === 'take') report.updated++;
    else report.tiunew++;
  }
  report.keptNonEmpty = keptNonEmpty;
  report.conflicts = conflicts;
  // xattrs (SELinux labels) of what was copied, after the chowns
  if (copied.length) {
    const xs = await getXattrs(copied.map((c) => c.from));
    // only names tiu sets (the image's were checked when read; others, such as btrfs.*, stay behind)
    await setXattrs(
      copied.filter((c) => xs.has(c.from)).map((c) => ({ path: c.to, set: settableXattrs(xs.get(c.from)!) })),
    );
  }
  return report;
}

/** Plan and apply in one go: base/ours/theirs are directories. */
export async function mergeEtc(
  baseDir: string,
  oursDir: string,
  theirsDir: string,
  opts: EtcMergeOptions = {},
): Promise<EtcMergeReport> {
  const [base, ours, theirs] = await Promise.all([scanEtc(baseDir), scanEtc(oursDir), scanEtc(theirsDir)]);
  return applyEtcMerge(planEtcMerge(base, ours, theirs, opts), oursDir, theirsDir);
}
