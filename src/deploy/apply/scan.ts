/**
 * What is in the target directory now: one lstat walk (never following symlinks) and one
 * getfattr run. Content hashes are not computed here: the planner asks for them lazily, only
 * for files whose size matches something in the new tree, through a ContentIndex.
 *
 * Why a cache keyed by (inode, size, mtime, ctime): hashing every same-size file means reading
 * the whole old tree (~1-2 GB on MicroOS) on every update. A btrfs snapshot keeps inode
 * numbers and the full inode (mtime *and* ctime) of its source, so hashes recorded when
 * snapshot N was written stay valid in snapshot N+1 created from it. mtime alone can be set by
 * anyone (touch, tar); ctime can't be set from userspace and changes with any write, chmod,
 * chown or xattr change, so a matching (ino, size, mtime, ctime) means the content is the one
 * that was hashed. Without a cache the index still works: it hashes same-size candidates only,
 * once each.
 */
import { createHash } from 'node:crypto';
import { lstat, open, readFile, rename, writeFile } from 'node:fs/promises';
import { constants, lstatSync, readdirSync, readlinkSync } from 'node:fs';
import { readTreeXattrs } from '../../host/xattr.ts';
import { bbuf, bstr, fileTypeOf } from '../../layer/entry.ts';
import { BadRootError } from './errors.ts';
import { isAtOrBelow, joinPath } from '../../layer/paths.ts';
import type { EntryType, ExistingEntry, OldTree } from './types.ts';
import type { BigIntStats, PathLike } from 'node:fs';

const SLASH = Buffer.from('/');

export function typeOfStats(st: BigIntStats): EntryType | 'other' {
  return fileTypeOf(st) ?? 'other';
}

/**
 * The xattrs of an entry the scan found none for (the scan assigns a new object when it finds
 * some, never adds to this one). One shared frozen object instead of ~56 bytes per entry.
 */
const NO_XATTRS: Record<string, Buffer> = Object.freeze({});

/**
 * One BigInt per value where a tree repeats it: every entry of a tree has the same `dev`, and
 * nearly all an `rdev` of 0 (each lstat returns new BigInts, ~24 bytes apiece).
 */
let lastDev = 0n;
const ZERO = 0n;

export function existingFromStats(path: string, st: BigIntStats, linkname?: string): ExistingEntry {
  const e: ExistingEntry = {
    path,
    type: typeOfStats(st),
    mode: Number(st.mode & 0o7777n),
    uid: Number(st.uid),
    gid: Number(st.gid),
    size: Number(st.size),
    mtimeNs: st.mtimeNs,
    ctimeNs: st.ctimeNs,
    ino: st.ino,
    dev: st.dev === lastDev ? lastDev : (lastDev = st.dev),
    nlink: Number(st.nlink),
    rdev: st.rdev === ZERO ? ZERO : st.rdev,
    xattrs: NO_XATTRS,
  };
  if (linkname !== undefined) e.linkname = linkname;
  return e;
}

export interface ScanOptions {
  /** Relative paths whose content is neither scanned nor ever deleted (other subvolumes, /.snapshots). */
  preserve?: readonly string[];
  /** Skip reading xattrs (tests on filesystems without them). */
  noXattrs?: boolean;
}

/** Walk `root` (which must be a real directory) and describe everything in it. */
export async function scanTree(root: string, opts: ScanOptions = {}): Promise<OldTree> {
  let rst: BigIntStats;
  try {
    rst = await lstat(root, { bigint: true });
  } catch (e) {
    throw new BadRootError(root, (e as Error).message);
  }
  if (!rst.isDirectory()) throw new BadRootError(root, 'is not a directory (or is a symlink)');
  const preserve = opts.preserve ?? [];
  const entries = new Map<string, ExistingEntry>();
  entries.set('', existingFromStats('', rst));
  // Synchronous calls: one lstat is a few microseconds, while a round trip through libuv's
  // thread pool per entry made the walk of a 13k-entry tree take over a second. The event
  // loop gets a turn every few hundred entries.
  // Names are read as bytes and kept as binary strings (src/layer/entry.ts), like entry paths.
  const rootBytes = Buffer.from(root.replace(/\/+$/, ''), 'utf8');
  const absOf = (rel: string) => (rel === '' ? rootBytes : Buffer.concat([rootBytes, SLASH, bbuf(rel)]));
  const stack: string[] = [''];
  let sinceYield = 0;
  while (stack.length > 0) {
    const rel = stack.pop()!;
    for (const name of readdirSync(absOf(rel), { encoding: 'buffer' })) {
      const p = joinPath(rel, bstr(name));
      const abs = absOf(p);
      const st = lstatSync(abs, { bigint: true });
      const link = st.isSymbolicLink() ? bstr(readlinkSync(abs, { encoding: 'buffer' })) : undefined;
      entries.set(p, existingFromStats(p, st, link));
      if (st.isDirectory() && !preserve.some((x) => isAtOrBelow(p, x))) stack.push(p);
      if (++sinceYield >= 500) {
        sinceYield = 0;
        await new Promise((r) => setImmediate(r));
      }
    }
  }
  if (!opts.noXattrs) {
    for (const [rel, xs] of await readTreeXattrs(root)) {
      const e = entries.get(rel);
      if (e) e.xattrs = Object.fromEntries(xs);
    }
  }
  return indexOldTree(root, entries);
}

export function indexOldTree(root: string, entries: Map<string, ExistingEntry>): OldTree {
  const bySize = new Map<number, string[]>();
  const byIno = new Map<bigint, string[]>();
  for (const e of entries.values()) {
    if (e.type !== 'reg') continue;
    // A new list as a literal: `[]` then push() reserves 17 slots, ~150 bytes for the one path
    // almost every inode and many sizes have.
    const s = bySize.get(e.size);
    if (s) s.push(e.path);
    else bySize.set(e.size, [e.path]);
    const i = byIno.get(e.ino);
    if (i) i.push(e.path);
    else byIno.set(e.ino, [e.path]);
  }
  return { root, entries, bySize, byIno };
}

/** Hashes of old-tree files, asked for lazily by the planner. */
export interface ContentHasher {
  digestOf(e: ExistingEntry): Promise<string>;
}

interface IndexFile {
  version: 1;
  entries: Record<string, string>;
}

function keyOf(e: Pick<ExistingEntry, 'ino' | 'size' | 'mtimeNs' | 'ctimeNs'>): string {
  return `${e.ino}:${e.size}:${e.mtimeNs}:${e.ctimeNs}`;
}

/** sha256 of a file, reading it without following a symlink at its place. */
export async function hashFile(abs: PathLike): Promise<string> {
  const h = createHash('sha256');
  const fh = await open(abs, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    for await (const chunk of fh.createReadStream({ autoClose: false })) h.update(chunk as Buffer);
  } finally {
    await fh.close();
  }
  return `sha256:${h.digest('hex')}`;
}

/**
 * A content index of a tree: (inode, size, mtime, ctime) -> sha256. Loaded from and saved to
 * a file the caller chooses (outside the snapshot, e.g. /var/cache/tiu/content-index/<N>.json).
 */
export class ContentIndex implements ContentHasher {
  readonly root: string;
  readonly #known = new Map<string, string>();
  /** Keys whose digest this process read from the file itself (not loaded from a saved index). */
  readonly #hashedHere = new Set<string>();
  /** Files actually read to hash them (for reports and tests). */
  hashedFiles = 0;
  hashedBytes = 0;

  constructor(root: string) {
    this.root = root;
  }

  static async load(root: string, file: string): Promise<ContentIndex> {
    const idx = new ContentIndex(root);
    try {
      const j = JSON.parse(await readFile(file, 'utf8')) as IndexFile;
      if (j?.version === 1 && j.entries && typeof j.entries === 'object') {
        for (const [k, v] of Object.entries(j.entries))
          if (typeof v === 'string' && /^sha256:[0-9a-f]{64}$/.test(v)) idx.#known.set(k, v);
      }
    } catch {
      // No or unreadable cache: start empty, it is only an accelerator.
    }
    return idx;
  }

  async save(file: string): Promise<void> {
    const body: IndexFile = { version: 1, entries: Object.fromEntries(this.#known) };
    await writeFile(file + '.tmp', JSON.stringify(body));
    await rename(file + '.tmp', file);
  }

  get size(): number {
    return this.#known.size;
  }

  /** Record a known digest (the executor does this for everything it writes, from the TOC). */
  remember(e: Pick<ExistingEntry, 'ino' | 'size' | 'mtimeNs' | 'ctimeNs'>, digest: string): void {
    this.#known.set(keyOf(e), digest);
  }

  /** Drop everything except these keys (after an apply, only the new tree's files matter). */
  retainOnly(keep: Iterable<Pick<ExistingEntry, 'ino' | 'size' | 'mtimeNs' | 'ctimeNs'>>): void {
    const ks = new Set<string>();
    for (const e of keep) ks.add(keyOf(e));
    for (const k of [...this.#known.keys()]) if (!ks.has(k)) this.#known.delete(k);
  }

  async digestOf(e: ExistingEntry): Promise<string> {
    const k = keyOf(e);
    const known = this.#known.get(k);
    if (known) return known;
    const d = await hashFile(Buffer.concat([Buffer.from(this.root, 'utf8'), SLASH, bbuf(e.path)]));
    this.hashedFiles++;
    this.hashedBytes += e.size;
    this.#known.set(k, d);
    this.#hashedHere.add(k);
    return d;
  }

  /** Whether this process read the file with this key to hash it (rather than trusting a saved index). */
  hashedHere(e: Pick<ExistingEntry, 'ino' | 'size' | 'mtimeNs' | 'ctimeNs'>): boolean {
    return this.#hashedHere.has(keyOf(e));
  }
}
