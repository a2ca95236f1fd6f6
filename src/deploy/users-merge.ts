/**
 * passwd, group, shadow and gshadow merged by entry. base = the old image's files (pristine
 * /usr/lib/tiu/etc), ours = the admin's, theirs = the new image's.
 * - Every line of ours stays as it is (accounts, passwords, comments, order).
 * - Accounts and groups the new image brings (in theirs, not in base) are added, unless their
 *   name exists already (kept as the admin has it) or their UID/GID is taken by another name:
 *   then they are not added and the clash is reported, never silently overwritten.
 * - Accounts the admin deleted (in base and theirs, not in ours) stay deleted.
 * - Group member lists (group field 4, gshadow fields 3 and 4): ours plus the members the image
 *   added since base; members the admin removed stay removed.
 * - shadow/gshadow lines are added for exactly the accounts/groups added to passwd/group.
 * planUsersMerge is pure (text in, text out); mergeUserDb reads and writes the files.
 */
import { lstat } from 'node:fs/promises';
import { join } from 'node:path';
import { TiuError } from '../errors.ts';
import { USER_DB_FILES } from './etc-merge.ts';
import { RootedDir } from './rooted.ts';

export interface UserDbTexts {
  passwd?: string;
  group?: string;
  shadow?: string;
  gshadow?: string;
}

export interface IdClash {
  /** 'uid' for passwd, 'gid' for group. */
  kind: 'uid' | 'gid';
  /** The image's account/group that was not added (or whose id differs). */
  name: string;
  id: number;
  /** The admin's account/group that has this id (or, for id-differs, the same name). */
  existing: string;
  existingId: number;
  why: 'id-taken' | 'id-differs';
}

export interface UsersMergeResult {
  files: Required<UserDbTexts>;
  addedUsers: string[];
  addedGroups: string[];
  /** Members added to existing groups: group -> names. */
  addedMembers: Record<string, string[]>;
  clashes: IdClash[];
}

export class UserDbError extends TiuError {
  constructor(file: string, line: number, why: string) {
    super('USER_DB_INVALID', `${file} line ${line}: ${why}`, { file, line, why });
  }
}

interface Db {
  lines: string[];
  /** name -> index in lines */
  byName: Map<string, number>;
}

function parseDb(text: string | undefined, file: string, minFields: number): Db {
  const lines = (text ?? '').split('\n');
  if (lines.length && lines[lines.length - 1] === '') lines.pop();
  const byName = new Map<string, number>();
  lines.forEach((l, i) => {
    if (l === '' || l.startsWith('#') || l.startsWith('+') || l.startsWith('-')) return;
    const f = l.split(':');
    if (f.length < minFields || f[0] === '')
      throw new UserDbError(file, i + 1, `expected at least ${minFields} ':'-separated fields`);
    if (!byName.has(f[0]!)) byName.set(f[0]!, i);
  });
  return { lines, byName };
}

function field(db: Db, name: string, i: number): string | undefined {
  const idx = db.byName.get(name);
  return idx === undefined ? undefined : db.lines[idx]!.split(':')[i];
}

function idOf(db: Db, name: string, i: number, file: string): number {
  const v = field(db, name, i) ?? '';
  if (!/^\d+$/.test(v))
    throw new UserDbError(file, (db.byName.get(name) ?? 0) + 1, `${name}: id ${JSON.stringify(v)} is not a number`);
  return Number(v);
}

/** Insert before NIS compat lines (+/-), which must stay last. */
function append(db: Db, line: string): void {
  let at = db.lines.findIndex((l) => l.startsWith('+') || l.startsWith('-'));
  if (at < 0) at = db.lines.length;
  db.lines.splice(at, 0, line);
  db.byName = new Map();
  db.lines.forEach((l, i) => {
    if (l === '' || l.startsWith('#') || l.startsWith('+') || l.startsWith('-')) return;
    const n = l.split(':')[0]!;
    if (!db.byName.has(n)) db.byName.set(n, i);
  });
}

function setField(db: Db, name: string, i: number, value: string): void {
  const idx = db.byName.get(name)!;
  const f = db.lines[idx]!.split(':');
  f[i] = value;
  db.lines[idx] = f.join(':');
}

function members(v: string | undefined): string[] {
  return (v ?? '').split(',').filter((m) => m !== '');
}

function text(db: Db): string {
  return db.lines.length ? db.lines.join('\n') + '\n' : '';
}

/** Merge member lists of groups both sides have; returns names added per group. */
function mergeMembers(ours: Db, theirs: Db, base: Db, fieldIx: number, added: Record<string, string[]>): void {
  for (const name of ours.byName.keys()) {
    if (!theirs.byName.has(name)) continue;
    const o = members(field(ours, name, fieldIx));
    const t = members(field(theirs, name, fieldIx));
    const b = new Set(base.byName.has(name) ? members(field(base, name, fieldIx)) : []);
    const fresh = t.filter((m) => !b.has(m) && !o.includes(m));
    if (!fresh.length) continue;
    setField(ours, name, fieldIx, [...o, ...fresh].join(','));
    (added[name] ??= []).push(...fresh.filter((m) => !(added[name] ?? []).includes(m)));
  }
}

export function planUsersMerge(base: UserDbTexts, ours: UserDbTexts, theirs: UserDbTexts): UsersMergeResult {
  const bp = parseDb(base.passwd, 'base passwd', 7);
  const op = parseDb(ours.passwd, 'passwd', 7);
  const tp = parseDb(theirs.passwd, 'image passwd', 7);
  const bg = parseDb(base.group, 'base group', 4);
  const og = parseDb(ours.group, 'group', 4);
  const tg = parseDb(theirs.group, 'image group', 4);
  const os = parseDb(ours.shadow, 'shadow', 2);
  const ts = parseDb(theirs.shadow, 'image shadow', 2);
  const bgs = parseDb(base.gshadow, 'base gshadow', 4);
  const ogs = parseDb(ours.gshadow, 'gshadow', 4);
  const tgs = parseDb(theirs.gshadow, 'image gshadow', 4);
  const result: UsersMergeResult = {
    files: { passwd: '', group: '', shadow: '', gshadow: '' },
    addedUsers: [],
    addedGroups: [],
    addedMembers: {},
    clashes: [],
  };

  // groups first: a new account's primary group should exist
  const gidOwner = new Map<number, string>();
  for (const n of og.byName.keys()) gidOwner.set(idOf(og, n, 2, 'group'), n);
  for (const [name, idx] of tg.byName) {
    const gid = idOf(tg, name, 2, 'image group');
    if (og.byName.has(name)) {
      const mine = idOf(og, name, 2, 'group');
      if (mine !== gid)
        result.clashes.push({ kind: 'gid', name, id: gid, existing: name, existingId: mine, why: 'id-differs' });
      continue;
    }
    if (bg.byName.has(name)) continue; // the admin deleted it
    const other = gidOwner.get(gid);
    if (other !== undefined) {
      result.clashes.push({ kind: 'gid', name, id: gid, existing: other, existingId: gid, why: 'id-taken' });
      continue;
    }
    append(og, tg.lines[idx]!);
    gidOwner.set(gid, name);
    result.addedGroups.push(name);
    const gsIdx = tgs.byName.get(name);
    if (gsIdx !== undefined && !ogs.byName.has(name)) append(ogs, tgs.lines[gsIdx]!);
    else if (gsIdx === undefined && ours.gshadow !== undefined && !ogs.byName.has(name))
      append(ogs, `${name}:!::${field(tg, name, 3) ?? ''}`);
  }

  const uidOwner = new Map<number, string>();
  for (const n of op.byName.keys()) uidOwner.set(idOf(op, n, 2, 'passwd'), n);
  for (const [name, idx] of tp.byName) {
    const uid = idOf(tp, name, 2, 'image passwd');
    if (op.byName.has(name)) {
      const mine = idOf(op, name, 2, 'passwd');
      if (mine !== uid)
        result.clashes.push({ kind: 'uid', name, id: uid, existing: name, existingId: mine, why: 'id-differs' });
      continue;
    }
    if (bp.byName.has(name)) continue; // the admin deleted it
    const other = uidOwner.get(uid);
    if (other !== undefined) {
      result.clashes.push({ kind: 'uid', name, id: uid, existing: other, existingId: uid, why: 'id-taken' });
      continue;
    }
    append(op, tp.lines[idx]!);
    uidOwner.set(uid, name);
    result.addedUsers.push(name);
    const sIdx = ts.byName.get(name);
    if (!os.byName.has(name)) append(os, sIdx !== undefined ? ts.lines[sIdx]! : `${name}:!*:::::::`);
  }

  // member lists of groups both sides have (new groups came with the image's list)
  mergeMembers(og, tg, bg, 3, result.addedMembers);
  const gsAdded: Record<string, string[]> = {};
  mergeMembers(ogs, tgs, bgs, 3, gsAdded);
  mergeMembers(ogs, tgs, bgs, 2, {});

  result.files = { passwd: text(op), group: text(og), shadow: text(os), gshadow: text(ogs) };
  return result;
}

/** The four files of `dir` (an /etc), read through a RootedDir: never through a symlink; a missing directory has none. */
async function readDb(dir: string): Promise<UserDbTexts> {
  const out: UserDbTexts = {};
  const st = await lstat(dir).catch(() => undefined);
  if (!st) return out;
  const rd = await RootedDir.open(dir);
  for (const f of USER_DB_FILES) {
    const t = await rd.readFileIfExists(f);
    if (t !== undefined) out[f] = t.toString('utf8');
  }
  return out;
}

/**
 * Merge the four files: base/theirs are directories holding the old and new image's copies,
 * ours is the /etc being written (changed files replaced atomically, keeping owner and mode;
 * a file the admin lacks is created with the image's owner and mode). The caller has checked
 * the components of the three directories (update.ts: within their snapshots); below them,
 * every read and write goes through a RootedDir.
 */
export async function mergeUserDb(baseDir: string, oursDir: string, theirsDir: string): Promise<UsersMergeResult> {
  const [base, ours, theirs] = await Promise.all([readDb(baseDir), readDb(oursDir), readDb(theirsDir)]);
  const r = planUsersMerge(base, ours, theirs);
  const oursRd = await RootedDir.open(oursDir);
  const theirsRd = await RootedDir.open(theirsDir);
  for (const f of USER_DB_FILES) {
    const want = r.files[f];
    if (want === (ours[f] ?? '')) continue;
    if (ours[f] === undefined && theirs[f] === undefined) continue;
    const cur = await oursRd.lstat(f);
    if (cur?.isSymbolicLink()) throw new UserDbError(join(oursDir, f), 0, 'is a symlink: refusing to write through it');
    const like = cur ?? (await theirsRd.lstat(f));
    if (!like) throw new UserDbError(join(theirsDir, f), 0, 'vanished while merging');
    await oursRd.writeFileAtomic(f, want, { mode: like.mode & 0o7777, uid: like.uid, gid: like.gid });
  }
  return r;
}
