/**
 * Ordinary images (no table of contents): stream each layer's tar into the target in layer
 * order, comparing as it goes. A regular file whose size matches the file already there is
 * compared byte by byte with it while it streams in; only when a byte differs does writing
 * start (the equal prefix is copied from the old file), so an identical update writes no
 * data and needs no hashing. Whiteouts and opaque directories hide lower layers; what no layer
 * leaves in the tree is removed at the end, then xattrs (after every chown) and directory
 * mtimes are set.
 */
import { constants, type BigIntStats } from 'node:fs';
import { lstat, open, readlink, rename, unlink, type FileHandle } from 'node:fs/promises';
import type { LayerOpener } from '../../layer/openers.ts';
import { removeXattr, setXattrs } from '../../host/xattr.ts';
import { BadHardlinkError, BadTarError, UnsafePathError, inLayer, mapFsError } from './errors.ts';
import type { SpaceGuard } from './space.ts';
// The filesystem primitives, shared with the executor (execute.ts).
import * as fsops from './fsops.ts';
import { isAtOrBelow, whiteoutOf } from './layers.ts';
import { comparePaths, joinPath, normalizeEntryPath, parentOf } from '../../layer/paths.ts';
import { bstr, devMajor, devMinor, implicitDir, showPath } from '../../layer/entry.ts';
import { metaDiff } from './plan.ts';
import { ContentIndex, existingFromStats, pathsOfSize, scanTree } from './scan.ts';
import { readTar, type TarMember } from '../../layer/tar.ts';
import { imageEntry } from './tar-entries.ts';
import { skipReserved, SkipTally, type Reserved } from './reserved.ts';
import type { ApplyReport, Counter, EntryType, OldTree, TreeEntry } from './types.ts';
import { emptyReport } from './types.ts';

export interface TarApplyOptions {
  /** Paths never deleted (nor scanned below). */
  preserve?: readonly string[];
  /** Image entries (and whiteouts) at or below these are skipped and counted (reserved.ts). */
  reserved?: Reserved;
  /**
   * Hashes of the old tree (e.g. ContentIndex.load of the booted snapshot's index): new files
   * whose content already exists elsewhere in the old tree become reflinks of it. Default: a
   * fresh index that hashes same-size candidates lazily.
   */
  index?: ContentIndex;
  allowCopyFallback?: boolean;
  /** Skip reading existing xattrs (filesystems without them; tests). */
  noXattrs?: boolean;
  /** The free-space reserve (space.ts): DISK_FULL before the filesystem is full. */
  space?: SpaceGuard;
}

/** What an entry costs on disk besides its content (inode, name), for the reserve's count. */
const ENTRY_COST = 512;

function add(c: Counter, bytes: number): void {
  c.count++;
  c.bytes += bytes;
}

/** Smaller new files are not worth looking for elsewhere (inline extents can't be shared anyway). */
const REFLINK_MIN = 4096;

interface State {
  sr: fsops.SafeRoot;
  /** The booted tree's scan, while layers are written (null after: not held through the second scan). */
  old: OldTree | null;
  index: ContentIndex;
  report: ApplyReport;
  /** Paths of the final tree so far -> the entry and the layer that put it there. */
  present: Map<string, { entry: TreeEntry; layer: number }>;
  /** Current xattrs of the inode at a path (from the scan; `{}` for inodes created here). */
  xattrNow: Map<string, Record<string, Buffer>>;
  opts: TarApplyOptions;
  skipped: SkipTally;
  reads: ReadBuffer;
}

export async function applyTarLayers(
  root: string,
  layers: readonly LayerOpener[],
  opts: TarApplyOptions = {},
): Promise<ApplyReport> {
  try {
    return await applyTarLayersInner(root, layers, opts);
  } catch (e) {
    throw mapFsError(e, root);
  }
}

async function applyTarLayersInner(
  root: string,
  layers: readonly LayerOpener[],
  opts: TarApplyOptions,
): Promise<ApplyReport> {
  const sr = await fsops.SafeRoot.open(root, 'binary');
  const st: State = {
    sr,
    old: await scanTree(root, { preserve: opts.preserve ?? [], noXattrs: opts.noXattrs ?? false }),
    index: opts.index ?? new ContentIndex(root),
    report: emptyReport(),
    present: new Map(),
    xattrNow: new Map(),
    opts,
    skipped: new SkipTally(),
    reads: new ReadBuffer(),
  };
  let oldBytes = 0;
  for (const [p, e] of st.old!.entries) {
    st.xattrNow.set(p, e.xattrs);
    if (e.type === 'reg') oldBytes += e.size;
  }

  // The reserve: checked now, every few MiB written, and against what the tars declare.
  const space = opts.space;
  if (space) await space.start(oldBytes);
  for (let k = 0; k < layers.length; k++) {
    const stream = await layers[k]!();
    try {
      for await (const t of readTar(stream)) {
        if (space) {
          space.expand(t.size, t.name);
          await space.wrote(ENTRY_COST);
        }
        await applyTarEntry(st, t, k);
      }
    } catch (e) {
      throw inLayer(e, k, layers[k]!.label);
    } finally {
      stream.destroy?.();
    }
  }

  st.old = null;
  // What no layer left in the tree goes; ancestors of preserved paths stay (their other children go).
  const preserve = opts.preserve ?? [];
  const now = await scanTree(root, { preserve, noXattrs: true });
  const gone = new Set<string>();
  for (const p of [...now.entries.keys()].sort(comparePaths)) {
    if (p === '' || st.present.has(p) || preserve.some((d) => isAtOrBelow(p, d))) continue;
    if (now.entries.get(p)!.type === 'dir' && !gone.has(parentOf(p)) && preserve.some((d) => d.startsWith(p + '/')))
      continue;
    if (gone.has(parentOf(p))) {
      gone.add(p);
      continue;
    }
    gone.add(p);
    const r = await fsops.removeTree(sr, p, st.report.warnings);
    st.report.deleted.count += r.count;
    st.report.deleted.bytes += r.bytes;
  }

  // xattrs, after every chown: set in batches as the tree is read (no list of every labelled file)
  await setXattrs(xattrsToSet(st));
  for (const [p, { entry }] of st.present) {
    if (entry.type === 'hardlink' || entry.implicit) continue;
    const have = st.xattrNow.get(p) ?? {};
    for (const n of Object.keys(have)) if (!(n in entry.xattrs)) await removeXattr(sr.path(p), n);
  }

  // directory mtimes last
  for (const [p, { entry }] of st.present) {
    if (entry.type !== 'dir' || entry.implicit) continue;
    const s = await lstat(sr.path(p), { bigint: true });
    if (!fsops.sameTime(s.mtimeNs, entry.mtimeNs)) await fsops.setMetaAt(sr, p, entry, { mtime: true });
  }
  return { ...st.report, ...st.skipped.report() };
}

/** The xattrs each path of the final tree lacks or has with another value. */
function* xattrsToSet(st: State): Generator<{ path: Buffer; set: Record<string, Buffer> }> {
  for (const [p, { entry }] of st.present) {
    if (entry.type === 'hardlink' || entry.implicit) continue;
    const have = st.xattrNow.get(p) ?? {};
    const set: Record<string, Buffer> = {};
    for (const [n, v] of Object.entries(entry.xattrs)) if (!have[n]?.equals(v)) set[n] = v;
    if (Object.keys(set).length) yield { path: st.sr.path(p), set };
  }
}

function hide(st: State, below: string, includeSelf: boolean, layer: number): void {
  for (const [p, v] of st.present) {
    if (v.layer >= layer) continue;
    if ((includeSelf && p === below) || (p !== below && isAtOrBelow(p, below))) st.present.delete(p);
  }
}

/** chown drops security.capability: remember that the inode no longer has it. */
function afterChown(st: State, path: string): void {
  const x = st.xattrNow.get(path);
  if (x?.['security.capability']) {
    const { ['security.capability']: _drop, ...rest } = x;
    st.xattrNow.set(path, rest);
  }
}

async function lstatOrNull(abs: Buffer): Promise<BigIntStats | null> {
  return lstat(abs, { bigint: true }).catch(() => null);
}

/** Parents the archive did not list (or hid) become 0755 root directories; a non-directory in the final tree there is refused. */
async function ensureParents(st: State, path: string, layer: number): Promise<void> {
  const chain: string[] = [];
  for (let d = parentOf(path); ; d = parentOf(d)) {
    chain.unshift(d);
    if (d === '') break;
  }
  for (const d of chain) {
    const have = st.present.get(d);
    if (have) {
      if (have.entry.type !== 'dir')
        throw new UnsafePathError(
          path,
          `its parent ${JSON.stringify(showPath(d))} is a ${have.entry.type} in the image, not a directory`,
        );
      continue;
    }
    const implicit = implicitDir(d);
    const s = await lstatOrNull(st.sr.path(d));
    if (!s?.isDirectory()) {
      if (s) await fsops.removeTree(st.sr, d, st.report.warnings);
      await fsops.ensureDir(st.sr, d, implicit);
      add(st.report.created, 0);
    }
    st.present.set(d, { entry: implicit, layer });
  }
}

async function applyTarEntry(st: State, t: TarMember, layer: number): Promise<void> {
  const path = normalizeEntryPath(t.name);
  const w = whiteoutOf(path);
  if (st.opts.reserved && skipReserved({ path, type: t.type ?? 'reg', size: t.size }, st.opts.reserved, st.skipped))
    return;
  if (w) {
    if (w.kind === 'whiteout') hide(st, w.path, true, layer);
    else if (w.kind === 'opaque') hide(st, w.dir, false, layer);
    return;
  }
  const e = imageEntry(t, layer, path);
  if (path === '' && e.type !== 'dir')
    throw new UnsafePathError(t.name, `the root of the image is a ${e.type}, not a directory`);
  if (path !== '') await ensureParents(st, path, layer);
  const { sr, report } = st;
  if (path !== '') await sr.verifyDir(parentOf(path), path);
  const abs = sr.path(path);
  const cur = await lstatOrNull(abs);
  const curX = cur ? existingFromStats(path, cur) : null;
  if (curX) curX.xattrs = st.xattrNow.get(path) ?? {};

  switch (e.type) {
    case 'dir': {
      // Layers each carry the parents they need (tiu's do): a directory an earlier layer already
      // put down is one directory of the tree, counted once; a later layer's metadata still wins.
      const again = st.present.get(path);
      const counted = again?.entry.type === 'dir' && !again.entry.implicit;
      if (cur?.isDirectory()) {
        const fix = metaDiff(e, curX!);
        if (fix && (fix.owner || fix.mode)) {
          await fsops.setMetaAt(sr, path, e, fix);
          if (fix.owner) afterChown(st, path);
          if (!counted) add(report.metadataFixed, 0);
        } else if (!counted) add(report.kept, 0);
      } else {
        if (cur) await fsops.removeTree(sr, path, report.warnings);
        await fsops.ensureDir(sr, path, e);
        st.xattrNow.set(path, {});
        add(report.created, 0);
      }
      sr.markDir(path);
      break;
    }
    case 'reg':
      await applyRegular(st, e, t, cur, curX);
      break;
    case 'symlink':
    case 'char':
    case 'block':
    case 'fifo': {
      let same = curX?.type === e.type && curX.nlink === 1;
      if (same && e.type === 'symlink') same = bstr(await readlink(abs, { encoding: 'buffer' })) === e.linkname;
      else if (same && e.type !== 'fifo')
        same = devMajor(curX!.rdev) === e.devmajor && devMinor(curX!.rdev) === e.devminor;
      if (same) {
        const fix = metaDiff(e, curX!);
        if (fix && (fix.owner || fix.mode || fix.mtime)) {
          await fsops.setMetaAt(sr, path, e, fix);
          if (fix.owner) afterChown(st, path);
          add(report.metadataFixed, 0);
        } else add(report.kept, 0);
      } else {
        if (cur?.isDirectory()) await fsops.removeTree(sr, path, report.warnings);
        await fsops.createSpecial(sr, path, e);
        st.xattrNow.set(path, {});
        add(report.created, 0);
      }
      break;
    }
    case 'hardlink': {
      const target = e.linkname!;
      const te = st.present.get(target);
      if (!te) throw new BadHardlinkError(path, target, 'target is not in the tree (yet)');
      if (te.entry.type === 'dir') throw new BadHardlinkError(path, target, 'target is a directory');
      if (target === path) throw new BadHardlinkError(path, target, 'links to itself');
      const ts = await lstatOrNull(sr.path(target));
      if (cur && ts && cur.ino === ts.ino && !cur.isDirectory()) add(report.kept, 0);
      else {
        if (cur?.isDirectory()) await fsops.removeTree(sr, path, report.warnings);
        await fsops.makeLink(sr, path, target);
        add(report.linked, 0);
      }
      // record the target's entry for xattrs purposes: the link shares its inode
      st.present.set(path, { entry: e, layer });
      return;
    }
  }
  st.present.set(path, { entry: e, layer });
}

/** The largest piece of an old file read at once (to compare it, or to copy its equal prefix). */
const OLD_PIECE = 1 << 20;

/**
 * The buffer old files are read into, to compare them with the layer's bytes or to copy their
 * equal prefix: one per apply, of at most OLD_PIECE bytes, not a new one per chunk (an unchanged
 * tree is read whole this way). What is read into it is used before the next read.
 */
class ReadBuffer {
  #buf = Buffer.alloc(0);

  /** Up to `len` (<= OLD_PIECE) bytes of `fh` at `pos`; valid until the next read. */
  async readAt(fh: FileHandle, len: number, pos: number): Promise<Buffer> {
    if (this.#buf.length < len) this.#buf = Buffer.allocUnsafe(Math.min(OLD_PIECE, Math.max(len, 64 * 1024)));
    return readInto(fh, this.#buf.subarray(0, len), pos);
  }
}

async function readInto(fh: FileHandle, b: Buffer, pos: number): Promise<Buffer> {
  const len = b.length;
  let got = 0;
  while (got < len) {
    const { bytesRead } = await fh.read(b, got, len - got, pos + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return b.subarray(0, got);
}

async function applyRegular(
  st: State,
  e: TreeEntry,
  t: TarMember,
  cur: BigIntStats | null,
  curX: ReturnType<typeof existingFromStats> | null,
): Promise<void> {
  const { sr, report } = st;
  const path = e.path;
  const abs = sr.path(path);
  const body = t.body();
  if (cur?.isFile() && Number(cur.size) === e.size) {
    // Compare while streaming; start writing only at the first difference.
    const fh = await open(abs, constants.O_RDONLY | constants.O_NOFOLLOW);
    let pos = 0;
    let tmp: string | null = null;
    let reused = false;
    try {
      for await (const chunk of body) {
        let same = true;
        for (let off = 0; same && off < chunk.length; off += OLD_PIECE) {
          const n = Math.min(OLD_PIECE, chunk.length - off);
          same = (await st.reads.readAt(fh, n, pos + off)).equals(chunk.subarray(off, off + n));
        }
        if (same) {
          pos += chunk.length;
          continue;
        }
        // differs: copy the equal prefix from the old file, then this chunk and the rest
        tmp = joinPath(parentOf(path), fsops.tmpName());
        const fhOld = fh;
        const prefixEnd = pos;
        async function* rest(): AsyncGenerator<Buffer> {
          // each piece is written before the next is read (writeNewFile takes one at a time)
          for (let p = 0; p < prefixEnd; p += OLD_PIECE)
            yield await st.reads.readAt(fhOld, Math.min(OLD_PIECE, prefixEnd - p), p);
          yield chunk;
          for await (const c of body) yield c;
        }
        const r = await reuseOldContent(
          st,
          tmp,
          (await fsops.writeNewFile(sr.path(tmp), rest(), { size: e.size }, path, st.opts.space)).digest,
          e.size,
        );
        tmp = r.path;
        reused = r.reused;
        break;
      }
      if (!tmp && pos !== e.size)
        throw new BadTarError(`content of ${JSON.stringify(showPath(t.name))} is shorter than its header says`);
    } finally {
      await fh.close();
    }
    if (tmp) {
      await fsops.setMetaAt(sr, tmp, e);
      await rename(sr.path(tmp), abs);
      st.xattrNow.set(path, {});
      add(reused ? report.reflinked : report.written, e.size);
      return;
    }
    if (cur.nlink > 1n) {
      // Same content, but the inode is shared with other names: give this name its own inode
      // (a reflink, no data) so changing its metadata cannot change the others'.
      const tmp2 = await sr.tmpBeside(path);
      const real = await fsops.reflinkFile(abs, sr.path(tmp2), st.opts.allowCopyFallback ?? false);
      if (!real) add(report.copiedInsteadOfReflink, e.size);
      await fsops.setMetaAt(sr, tmp2, e);
      await rename(sr.path(tmp2), abs);
      st.xattrNow.set(path, {});
      add(report.reflinked, e.size);
      return;
    }
    const fix = metaDiff(e, curX!);
    if (fix && (fix.owner || fix.mode || fix.mtime)) {
      await fsops.setMetaAt(sr, path, e, fix);
      if (fix.owner) afterChown(st, path);
      add(report.metadataFixed, e.size);
    } else add(report.kept, e.size);
    return;
  }
  if (cur?.isDirectory()) await fsops.removeTree(sr, path, report.warnings);
  const tmp0 = await sr.tmpBeside(path);
  const { path: tmp, reused } = await reuseOldContent(
    st,
    tmp0,
    (await fsops.writeNewFile(sr.path(tmp0), body, { size: e.size }, path, st.opts.space)).digest,
    e.size,
  );
  await fsops.setMetaAt(sr, tmp, e);
  await rename(sr.path(tmp), abs);
  st.xattrNow.set(path, {});
  add(reused ? report.reflinked : report.written, e.size);
}

/**
 * The content just written to `tmp` may exist elsewhere in the old tree (a moved or renamed
 * file): then a reflink of that file replaces it, so the extents stay shared with the old
 * snapshot. Only still-unmodified old files of the same size are candidates.
 */
async function reuseOldContent(
  st: State,
  tmp: string,
  digest: string,
  size: number,
): Promise<{ path: string; reused: boolean }> {
  const no = { path: tmp, reused: false };
  const old = st.old;
  if (!old || size < REFLINK_MIN) return no;
  for (const c of pathsOfSize(old, size)) {
    const x = old.entries.get(c)!;
    const now = await lstatOrNull(st.sr.path(c));
    if (
      !now?.isFile() ||
      now.ino !== x.ino ||
      now.mtimeNs !== x.mtimeNs ||
      now.ctimeNs !== x.ctimeNs ||
      Number(now.size) !== size
    )
      continue;
    if ((await st.index.digestOf(x)) !== digest) continue;
    const clone = joinPath(parentOf(tmp), fsops.tmpName());
    const real = await fsops.reflinkFile(st.sr.path(c), st.sr.path(clone), st.opts.allowCopyFallback ?? false);
    if (!real) {
      // no reflinks here: the copy just written is as good
      await unlink(st.sr.path(clone));
      return no;
    }
    await unlink(st.sr.path(tmp));
    return { path: clone, reused: true };
  }
  return no;
}

export type { EntryType };
