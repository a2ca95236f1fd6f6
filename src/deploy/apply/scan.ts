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
import { lstat, open, rename, type FileHandle } from 'node:fs/promises';
import { constants, lstatSync, readdirSync, readlinkSync } from 'node:fs';
import { readTreeXattrs } from '../../host/xattr.ts';
import { bbuf, bstr, fileTypeOf } from '../../layer/entry.ts';
import { BadRootError } from './errors.ts';
import { isAtOrBelow, joinPath } from '../../layer/paths.ts';
import { PathTable } from './path-table.ts';
import { ScanEntries } from './scan-entries.ts';
import type { RowSpill } from './row-spill.ts';
import { SizeIndex } from './size-index.ts';
import { INDEX_HEAD, IndexTextParser, MIN_MEMBER } from './content-index-text.ts';
import { IndexTable, keyText, type IndexKeyParts } from './index-table.ts';
import { ScanDigests, type KeyedEntry } from './scan-digests.ts';
import type { EntryType, ExistingEntry, OldTree, ScannedEntries } from './types.ts';
import type { BigIntStats, PathLike } from 'node:fs';

const SLASH = Buffer.from('/');

export function typeOfStats(st: BigIntStats): EntryType | 'other' {
  return fileTypeOf(st) ?? 'other';
}

/** One lstat result as an entry (the executor's look at a path; a scan keeps rows, scan-entries.ts). */
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
    dev: st.dev,
    nlink: Number(st.nlink),
    rdev: st.rdev,
    xattrs: {},
  };
  if (linkname !== undefined) e.linkname = linkname;
  return e;
}

export interface ScanOptions {
  /** Relative paths whose content is neither scanned nor ever deleted (other subvolumes, /.snapshots). */
  preserve?: readonly string[];
  /** Skip reading xattrs (tests on filesystems without them). */
  noXattrs?: boolean;
  /**
   * Another holder's string of a path, used instead of the one just read (the new tree's, when
   * the plan's tree is made before the scan): the read one dies young, and the scan and the tree
   * share one string per path from the start instead of two until the plan's sharePathsWith
   * and a full collection (~3.6 MiB of strings on the bench's larger tree).
   */
  ownPath?: (path: string) => string | undefined;
  /** Where complete blocks of rows may wait (row-spill.ts); without one they stay in memory. */
  spill?: RowSpill;
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
  const entries = new ScanEntries(opts.spill);
  entries.addStats('', rst);
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
      const read = joinPath(rel, bstr(name));
      const p = opts.ownPath?.(read) ?? read;
      const abs = absOf(p);
      const st = lstatSync(abs, { bigint: true });
      const link = st.isSymbolicLink() ? bstr(readlinkSync(abs, { encoding: 'buffer' })) : undefined;
      entries.addStats(p, st, link);
      if (st.isDirectory() && !preserve.some((x) => isAtOrBelow(p, x))) stack.push(p);
      if (++sinceYield >= 500) {
        sinceYield = 0;
        await new Promise((r) => setImmediate(r));
      }
    }
  }
  entries.finish();
  if (!opts.noXattrs) {
    for (const [rel, xs] of await readTreeXattrs(root)) entries.setXattrs(rel, Object.fromEntries(xs));
  }
  return indexOldTree(root, entries);
}

export function indexOldTree(root: string, entries: ScannedEntries): OldTree {
  const byIno = new Map<bigint, string[]>();
  const linked = (ino: bigint, path: string) => {
    // A new list as a literal: `[]` then push() reserves 17 slots.
    const i = byIno.get(ino);
    if (i) i.push(path);
    else byIno.set(ino, [path]);
  };
  if (entries instanceof ScanEntries) {
    // By row: no entry object made per path; the size index reads the rows' sizes and paths.
    entries.forEachFile((r, nlink, ino) => {
      if (nlink >= 2) linked(ino, entries.pathAt(r));
    });
    return { root, entries, bySize: entries.filesBySize(), byIno };
  }
  const sizes: number[] = [];
  const paths: string[] = [];
  for (const e of entries.values()) {
    if (e.type !== 'reg') continue;
    sizes.push(e.size);
    paths.push(e.path);
    if (e.nlink >= 2) linked(e.ino, e.path);
  }
  const bySize = new SizeIndex(
    Int32Array.from(sizes.keys()),
    (i) => sizes[i]!,
    (i) => paths[i]!,
  );
  return { root, entries, bySize, byIno };
}

/**
 * Let `old` name its paths with `tree`'s strings of them: the booted tree and the new one share
 * almost every path, and two strings of each were ~3 MiB on a 45k-file tree. Done in place (the
 * rows, the size and inode indexes keep their order and make nothing): rebuilt indexes and maps
 * left as much garbage as they saved, and RSS peaked higher.
 */
export function sharePathsWith(old: OldTree, tree: ReadonlyMap<string, { readonly path: string }>): void {
  if (!(old.entries instanceof ScanEntries)) return;
  // A table's own strings without making its entries (a TOC's files are kept as paths there).
  const same = tree instanceof PathTable ? (p: string) => tree.ownPath(p) : (p: string) => tree.get(p)?.path;
  old.entries.sharePaths(same);
  for (const g of old.byIno.values()) for (let i = 0; i < g.length; i++) g[i] = same(g[i]!) ?? g[i]!;
}

/** Free `old`'s rows now: nothing reads it again (see ScanEntries.release); a tree not from a scan is left to the collector. */
export function releaseScan(old: OldTree): void {
  if (old.entries instanceof ScanEntries) old.entries.release();
}

/** The regular files of `old` that have `size` bytes. */
export function pathsOfSize(old: OldTree, size: number): readonly string[] {
  return old.bySize.pathsOf(size);
}

/** Hashes of old-tree files, asked for lazily by the planner. */
export interface ContentHasher {
  digestOf(e: ExistingEntry): Promise<string>;
  /**
   * Whether the file's digest is `digest`, when that is known without reading the file (a saved
   * index); undefined when it is not known. The planner decides a file from it without a promise
   * or a string (an update asks this of most files).
   */
  knownMatch?(e: ExistingEntry, digest: string): boolean | undefined;
}

/**
 * The saved index: `{"version":1,"entries":{"<ino>:<size>:<mtimeNs>:<ctimeNs>":"sha256:<hex>",...}}`,
 * the JSON text JSON.stringify made of it before (keys are digits, `:` and `-`: nothing to escape).
 * It is read in pieces of this size, each parsed as it comes (content-index-text.ts).
 */
const INDEX_READ_PIECE = 64 * 1024;

const SHA256 = /^sha256:[0-9a-f]{64}$/;

/** A file's row in a content index, as `remember` gives it for `retainKeys`; -1: none. */
export type IndexKey = number;

/**
 * How many members the saved index in `fh` has: four quotes each, after the head's four (the
 * text parser allows no others). A damaged file can claim more, never more than its bytes hold.
 */
async function countMembers(fh: FileHandle, piece: Buffer): Promise<number> {
  let quotes = 0;
  let bytes = 0;
  for (;;) {
    const { bytesRead } = await fh.read(piece, 0, piece.length, bytes);
    if (bytesRead === 0) break;
    bytes += bytesRead;
    for (let at = piece.indexOf(0x22); at >= 0 && at < bytesRead; at = piece.indexOf(0x22, at + 1)) quotes++;
  }
  return Math.max(0, Math.min(Math.floor(quotes / 4) - 1, Math.floor(bytes / MIN_MEMBER)));
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
  #known = new IndexTable();
  /**
   * Loaded with the scan of its tree: the digests hang off the scan's rows (scan-digests.ts) and
   * `#known` stays empty until the index is changed by something other than reading (remember,
   * replaceRows, forgetRows), which first makes its rows a table of their own again.
   */
  #onScan: ScanDigests | undefined;
  /** Files actually read to hash them (for reports and tests). */
  hashedFiles = 0;
  hashedBytes = 0;

  constructor(root: string) {
    this.root = root;
  }

  /**
   * The index saved at `file`; empty when there is none or it is not exactly what `save`
   * writes (it is only an accelerator). Read member by member as its pieces come: JSON.parse made
   * an object of every entry (~8 MB for a 45k-file tree), and the whole file with its text copy
   * was ~10 MB more. With `scan` (the tree's, made just before and read by nothing that changes
   * it), the digests are kept on its rows (scan-digests.ts) and the index reads it until
   * `forgetRows`: it must not be released before.
   */
  static async load(root: string, file: string, scan?: ScanEntries): Promise<ContentIndex> {
    const idx = new ContentIndex(root);
    let fh;
    try {
      fh = await open(file, 'r');
    } catch {
      return idx;
    }
    try {
      const piece = Buffer.allocUnsafe(INDEX_READ_PIECE);
      // Counted first, so that the rows are made once at their size (IndexTable.reserve).
      const members = await countMembers(fh, piece);
      let onMember: (key: IndexKeyParts, digest: string) => unknown;
      if (scan) {
        const onScan = (idx.#onScan = new ScanDigests(scan, members));
        const rowsOfInode = scan.inodeLookup();
        onMember = (key, digest) => onScan.attach(key, digest, rowsOfInode);
      } else {
        idx.#known.reserve(members);
        onMember = (key, digest) => idx.#known.set(key, digest);
      }
      const parser = new IndexTextParser(onMember);
      for (let at = 0; ;) {
        const { bytesRead } = await fh.read(piece, 0, piece.length, at);
        if (bytesRead === 0) break;
        at += bytesRead;
        if (!parser.push(piece.subarray(0, bytesRead))) break;
      }
      if (!parser.end()) return new ContentIndex(root);
    } catch {
      return new ContentIndex(root);
    } finally {
      await fh.close();
    }
    idx.#known.trim();
    idx.#onScan?.trim();
    return idx;
  }

  /** The file is written in pieces: one object or string of every entry would be tens of MB at once. */
  async save(file: string): Promise<void> {
    const fh = await open(file + '.tmp', 'w');
    try {
      let piece = INDEX_HEAD;
      let first = true;
      for (const [key, digest] of this.#members()) {
        piece += `${first ? '' : ','}"${key}":"${digest}"`;
        first = false;
        if (piece.length >= 64 * 1024) {
          await fh.write(piece);
          piece = '';
        }
      }
      await fh.write(piece + '}}');
    } finally {
      await fh.close();
    }
    await rename(file + '.tmp', file);
  }

  get size(): number {
    return this.#rows().size;
  }

  /** Where the digests are now: on the scan's rows, or in a table of their own. */
  #rows(): ScanDigests | IndexTable {
    return this.#onScan ?? this.#known;
  }

  /** Each member's key text and digest, in the order the file keeps them. */
  *#members(): Generator<[string, string]> {
    if (this.#onScan) for (const [key, digest] of this.#onScan.rows()) yield [keyText(key), digest];
    else for (let r = 0; r < this.#known.size; r++) yield [this.#known.keyAt(r), this.#known.digestAt(r)];
  }

  /** How many times its rows were made (IndexTable.allocations). */
  get tableAllocations(): number {
    return this.#known.allocations;
  }

  /**
   * Record a known digest (the executor does this for everything it writes, from the TOC); the
   * file's key, for retainKeys (-1: not recorded).
   */
  remember(e: IndexKeyParts, digest: string): IndexKey {
    this.#ownRows();
    return SHA256.test(digest) ? this.#known.set(e, digest) : this.#known.find(e);
  }

  /** Drop everything except these keys (after an apply, only the new tree's files matter); earlier keys are invalid after. */
  retainKeys(keep: ReadonlySet<IndexKey>): void {
    this.#ownRows();
    this.#known.retain(keep);
  }

  /**
   * Make the index the rows of `files` (at most `rows` of them): the executor's record of the
   * tree it wrote. Same outcome as `remember` for each and `retainKeys` of those keys (a digest
   * that is not sha256 keeps the key's known one; a row read here stays marked so), but into a
   * table sized for them once: growing the old table by every new file of a first install and
   * then compacting it left several copies of its arrays (~8 MiB of ArrayBuffers at the end of
   * the bench's larger first install, the peak of the apply).
   */
  replaceRows(rows: number, files: Iterable<readonly [IndexKeyParts, string]>): void {
    this.#ownRows();
    // An index without rows (forgetRows) has nothing to consult: its arrays take the rows when they have room.
    const next = this.#known.size === 0 && this.#known.room >= rows ? this.#known : new IndexTable(rows);
    for (const [key, digest] of files) {
      const r = this.#known.find(key);
      const known = SHA256.test(digest) ? digest : r !== -1 ? this.#known.digestAt(r) : undefined;
      if (known !== undefined) next.set(key, known, r !== -1 && this.#known.hashedHereAt(r));
    }
    this.#known = next;
  }

  /**
   * Forget every row, keeping the table's arrays for the rows recorded next: the apply records
   * the new tree's files (replaceRows) once its plan has asked the booted tree's rows, and an
   * update's new tree has about as many files, so they reuse these arrays instead of a second
   * table made beside them (~3.9 MiB on the bench's larger tree, the first one garbage then).
   */
  forgetRows(): void {
    this.#onScan = undefined;
    this.#known.clear();
  }

  knownMatch(e: ExistingEntry, digest: string): boolean | undefined {
    const rows = this.#rows();
    const r = rows.find(e);
    return r === -1 ? undefined : rows.digestIs(r, digest);
  }

  async digestOf(e: ExistingEntry): Promise<string> {
    const rows = this.#rows();
    const r = rows.find(e);
    if (r !== -1) return rows.digestAt(r);
    const d = await hashFile(Buffer.concat([Buffer.from(this.root, 'utf8'), SLASH, bbuf(e.path)]));
    this.hashedFiles++;
    this.hashedBytes += e.size;
    // Asked while the file was read, the rows may have become a table of their own meanwhile.
    this.#rows().set(e, d, true);
    return d;
  }

  /** Whether this process read the file with this key to hash it (rather than trusting a saved index). */
  hashedHere(e: KeyedEntry): boolean {
    const rows = this.#rows();
    const r = rows.find(e);
    return r !== -1 && rows.hashedHereAt(r);
  }

  /**
   * Rows kept on the scan become a table of their own (needed by the calls that change the
   * index as a whole); the scan must still be there. A no-op for an index loaded without one.
   */
  #ownRows(): void {
    const onScan = this.#onScan;
    if (!onScan) return;
    this.#onScan = undefined;
    const table = new IndexTable(onScan.size);
    for (const [key, digest, hashedHere] of onScan.rows()) table.set(key, digest, hashedHere);
    this.#known = table;
  }
}
