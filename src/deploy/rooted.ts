/**
 * The rooted filesystem API: every read and write that tiu does in a snapshot outside the apply
 * engine (the /etc set-aside and merge, the users merge, the SELinux relabel marker, the copy of
 * the new /etc to /usr/lib/tiu/etc, the commit's touch of /usr, the hook chroot's mount points)
 * goes through a RootedDir, so an image can never make tiu read or write outside the snapshot.
 *
 *   - A RootedDir is opened on an absolute path that must be a real directory (APPLY_ROOT_INVALID
 *     otherwise). Paths given to it are relative: `.` and empty components are dropped, an
 *     absolute path, a `..` component or a NUL byte is PATH_UNSAFE.
 *   - Every directory on the way is resolved beneath the root component by component with
 *     lstat, never following a symlink: a symlink or non-directory where a directory must be is
 *     PATH_UNSAFE naming the path (SafeRoot in apply/fsops.ts does this walk for the apply
 *     engine too: one rooted model).
 *   - The last component is opened with O_NOFOLLOW (reads, metadata) or created with O_EXCL
 *     (new files, under a temporary name in the verified parent), and files are replaced by
 *     rename, which never follows a symlink at the destination: a symlink the image left where
 *     tiu writes a file is replaced, not written through.
 *
 * TOCTOU: lstat-per-component is sound here because nothing else writes into an unfinished
 * snapshot while tiu holds the update lock (the snapshot is new, read-write only for tiu, and
 * not mounted anywhere else); what can be hostile is the image's content, which is fixed once
 * it is written. The checks guard against the image's symlinks, not against a racing writer.
 */
import { constants, type Dir, type Dirent, type Stats } from 'node:fs';
import {
  link,
  lstat,
  mkdir,
  open,
  opendir,
  readdir,
  readlink,
  rename,
  rm,
  symlink,
  lchown,
  lutimes,
  chmod,
  type FileHandle,
} from 'node:fs/promises';
import { join } from 'node:path';
import { makeNode } from '../host/nodes.ts';
import { dumpTreeXattrs, setXattrs } from '../host/xattr.ts';
import { UnsafePathError } from './apply/errors.ts';
import { reflinkFile, SafeRoot, tmpName } from './apply/fsops.ts';
import { joinPath, normalizeEntryPath, parentOf } from '../layer/paths.ts';
import { settableXattrs } from '../host/xattr-names.ts';

export { UnsafePathError };

/** What copyTree did. */
export interface CopyTreeReport {
  entries: number;
  /** Files that could not be reflinked and were copied. */
  copied: number;
  /** Xattrs of the source that tiu does not set (another namespace, such as btrfs.*): left out. */
  skippedXattrs: string[];
  /** Sockets are not copied. */
  skippedSockets: string[];
}

function errno(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code;
}

/** Linux's encoding of a device number (glibc's gnu_dev_major/minor). */
function devMajor(rdev: number): number {
  return ((rdev >>> 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff);
}
function devMinor(rdev: number): number {
  return (rdev & 0xff) | ((rdev >>> 12) & ~0xff & 0xfffff);
}

/**
 * Copy the open regular file `fh` to the new file `destAbs` (O_EXCL), by reflink where the
 * filesystem can (true), else by copying. The source is named through its descriptor
 * (/proc/self/fd/N names exactly that inode), so no path of it is resolved again.
 */
function cloneFd(fh: FileHandle, destAbs: string): Promise<boolean> {
  return reflinkFile(`/proc/self/fd/${fh.fd}`, destAbs, true);
}

/** The first `max` bytes of `fh`, or null when it has more. */
async function readAtMost(fh: FileHandle, max: number): Promise<Buffer | null> {
  const buf = Buffer.alloc(max + 1);
  let got = 0;
  while (got < buf.length) {
    const { bytesRead } = await fh.read(buf, got, buf.length - got, got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return got > max ? null : buf.subarray(0, got);
}

export class RootedDir {
  readonly root: string;
  readonly #sr: SafeRoot;

  private constructor(sr: SafeRoot) {
    this.#sr = sr;
    this.root = sr.root;
  }

  /** Open `root` (absolute, a real directory, not a symlink: APPLY_ROOT_INVALID otherwise). */
  static async open(root: string): Promise<RootedDir> {
    if (!root.startsWith('/'))
      throw new UnsafePathError(root, 'the root of a rooted directory must be an absolute path');
    return new RootedDir(await SafeRoot.open(root));
  }

  /** Normalise a relative path: `` is the root; absolute, `..` and NUL are PATH_UNSAFE. */
  static rel(path: string): string {
    return normalizeEntryPath(path);
  }

  /** The absolute path of `rel` (no check: for messages, or after a check). */
  abs(rel: string): string {
    const r = RootedDir.rel(rel);
    return r === '' ? this.root : join(this.root, r);
  }

  /** `rel` is a real directory beneath the root (every component lstat'ed), or PATH_UNSAFE (also when missing). */
  async verifyDir(rel: string): Promise<void> {
    await this.#sr.verifyDir(RootedDir.rel(rel));
  }

  /** True when `rel` is a real directory, false when it or a parent is missing; PATH_UNSAFE for a symlink or non-directory on the way. */
  async isDir(rel: string): Promise<boolean> {
    return (await this.#sr.probeDir(RootedDir.rel(rel))) === null;
  }

  /** lstat of `rel` with every parent verified; undefined when it or a parent does not exist. */
  async lstat(rel: string): Promise<Stats | undefined> {
    const r = RootedDir.rel(rel);
    if (r === '') return lstat(this.root);
    if ((await this.#sr.probeDir(parentOf(r), r)) !== null) return undefined;
    try {
      return await lstat(this.abs(r));
    } catch (e) {
      if (errno(e) === 'ENOENT') return undefined;
      throw e;
    }
  }

  /**
   * lstat of what `path` names as a process chrooted into the root would see it: symlinks are
   * followed, but resolved beneath the root (an absolute target starts again at the root, `..`
   * stops there), as openat2's RESOLVE_IN_ROOT does; more than 40 links is a loop. Read-only:
   * for questions such as "does the tree have /bin/sh" where /bin is the image's `bin -> usr/bin`.
   * Undefined when nothing is there.
   */
  async lstatInRoot(path: string): Promise<Stats | undefined> {
    let todo = path.split('/').filter((c) => c !== '' && c !== '.');
    const done: string[] = [];
    let links = 0;
    while (todo.length) {
      const c = todo.shift()!;
      if (c === '..') {
        done.pop();
        continue;
      }
      if (c.includes('\0')) return undefined;
      const st = await lstat(join(this.root, ...done, c)).catch(() => undefined);
      if (!st) return undefined;
      if (st.isSymbolicLink()) {
        if (++links > 40) throw new UnsafePathError(path, 'too many levels of symbolic links');
        const target = await readlink(join(this.root, ...done, c));
        if (target.startsWith('/')) done.length = 0;
        todo = [...target.split('/').filter((x) => x !== '' && x !== '.'), ...todo];
        continue;
      }
      if (!todo.length) return st;
      if (!st.isDirectory()) return undefined;
      done.push(c);
    }
    return lstat(done.length ? join(this.root, ...done) : this.root);
  }

  /** Open an existing regular file (kind 'file') or directory ('dir') at `rel` without following a symlink. */
  async openNoFollow(rel: string, kind: 'file' | 'dir', flags = constants.O_RDONLY): Promise<FileHandle> {
    const r = RootedDir.rel(rel);
    if (r !== '') await this.#sr.verifyDir(parentOf(r), r);
    let fh: FileHandle;
    try {
      fh = await open(
        this.abs(r),
        flags | constants.O_NOFOLLOW | constants.O_NONBLOCK | (kind === 'dir' ? constants.O_DIRECTORY : 0),
      );
    } catch (e) {
      if (errno(e) === 'ELOOP') throw new UnsafePathError(r, 'is a symlink: following it is refused');
      if (errno(e) === 'ENOTDIR') throw new UnsafePathError(r, 'is not a directory');
      throw e;
    }
    const st = await fh.stat();
    if (kind === 'file' ? !st.isFile() : !st.isDirectory()) {
      await fh.close();
      throw new UnsafePathError(r, kind === 'file' ? 'is not a regular file' : 'is not a directory');
    }
    return fh;
  }

  /** The content of the regular file `rel` (never through a symlink; ENOENT errors pass as they are). */
  async readFile(rel: string): Promise<Buffer>;
  /**
   * The same, read no further than `max` bytes: null when the file is longer (an image's 2 GiB
   * /etc/kernel/cmdline is refused, not loaded into memory).
   */
  async readFile(rel: string, max: number): Promise<Buffer | null>;
  async readFile(rel: string, max?: number): Promise<Buffer | null> {
    const fh = await this.openNoFollow(rel, 'file');
    try {
      return max === undefined ? await fh.readFile() : await readAtMost(fh, max);
    } finally {
      await fh.close();
    }
  }

  /**
   * Copy the regular file `rel` (opened with O_NOFOLLOW) to the new file `destAbs` (O_EXCL: an
   * existing name, a symlink too, is EEXIST), reflinked where the filesystem can, else copied.
   * Returns true for a reflink. `destAbs` must be a path the caller has verified.
   */
  async copyFileOut(rel: string, destAbs: string): Promise<boolean> {
    const fh = await this.openNoFollow(rel, 'file');
    try {
      return await cloneFd(fh, destAbs);
    } finally {
      await fh.close();
    }
  }

  /** readFile, or undefined when `rel` or a parent does not exist. */
  async readFileIfExists(rel: string): Promise<Buffer | undefined> {
    const st = await this.lstat(rel);
    if (!st) return undefined;
    return this.readFile(rel);
  }

  async readlink(rel: string): Promise<string> {
    const r = RootedDir.rel(rel);
    await this.#sr.verifyDir(parentOf(r), r);
    return readlink(this.abs(r));
  }

  /** The entries of the real directory `rel`. */
  async readdir(rel: string): Promise<Dirent[]> {
    const r = RootedDir.rel(rel);
    await this.#sr.verifyDir(r);
    return readdir(this.abs(r), { withFileTypes: true });
  }

  async opendir(rel: string): Promise<Dir> {
    const r = RootedDir.rel(rel);
    await this.#sr.verifyDir(r);
    return opendir(this.abs(r));
  }

  /** `mkdir -p` beneath the root: missing components are created as real directories (`mode`, owned by the caller). */
  async mkdir(rel: string, mode = 0o755): Promise<void> {
    const r = RootedDir.rel(rel);
    for (;;) {
      const missing = await this.#sr.probeDir(r);
      if (missing === null) return;
      try {
        await mkdir(this.abs(missing), mode);
      } catch (e) {
        if (errno(e) !== 'EEXIST') throw e;
      }
      // probeDir lstat's what is there now: a symlink that appeared is refused there.
    }
  }

  /**
   * Write `data` as the file `rel`: into a new temporary file beside it (O_CREAT|O_EXCL|O_NOFOLLOW),
   * with mode (and owner, mtime when given), then renamed over `rel`. A symlink at `rel` is
   * replaced, never followed; a directory there is PATH_UNSAFE.
   */
  async writeFileAtomic(
    rel: string,
    data: string | Uint8Array,
    o: { mode?: number; uid?: number; gid?: number; mtime?: Date } = {},
  ): Promise<void> {
    const r = RootedDir.rel(rel);
    if (r === '') throw new UnsafePathError(rel, 'is the root directory');
    const tmp = await this.#sr.tmpBeside(r);
    const tmpAbs = this.abs(tmp);
    const fh = await open(
      tmpAbs,
      constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
      0o600,
    );
    try {
      try {
        await fh.writeFile(data);
        if (o.uid !== undefined || o.gid !== undefined) await fh.chown(o.uid ?? -1, o.gid ?? -1);
        await fh.chmod(o.mode ?? 0o644);
        if (o.mtime) await fh.utimes(o.mtime, o.mtime);
      } finally {
        await fh.close();
      }
      const cur = await lstat(this.abs(r)).catch(() => undefined);
      if (cur?.isDirectory()) throw new UnsafePathError(r, 'is a directory where a file is written');
      await rename(tmpAbs, this.abs(r));
    } catch (e) {
      await rm(tmpAbs, { force: true }).catch(() => undefined);
      throw e;
    }
  }

  /** Set the times of the real directory `rel` (a symlink, non-directory or missing one is PATH_UNSAFE). */
  async touchDir(rel: string, time: Date = new Date()): Promise<void> {
    const r = RootedDir.rel(rel);
    if ((await this.lstat(r)) === undefined) throw new UnsafePathError(r, 'does not exist');
    const fh = await this.openNoFollow(r, 'dir');
    try {
      await fh.utimes(time, time);
    } finally {
      await fh.close();
    }
  }

  /**
   * Copy the directory `fromRel` of `from` (another RootedDir, or this one) to `toRel` here,
   * which must not exist: what `cp -a --reflink=auto` did, without following any symlink on
   * either side. Files are reflinked (copied where the filesystem can't), hardlinks within the
   * tree kept, symlinks recreated as symlinks, devices and fifos made with mknod; owner, mode,
   * times and xattrs (those tiu sets: see src/host/xattr-names.ts) are kept. The copy is built under a
   * temporary name beside `toRel` and renamed into place at the end.
   */
  async copyTree(from: RootedDir, fromRel: string, toRel: string): Promise<CopyTreeReport> {
    const src = RootedDir.rel(fromRel);
    const dst = RootedDir.rel(toRel);
    if (dst === '') throw new UnsafePathError(toRel, 'cannot copy onto the root directory');
    await from.verifyDir(src);
    await this.#sr.verifyDir(parentOf(dst), dst);
    if (await lstat(this.abs(dst)).catch(() => undefined))
      throw new UnsafePathError(dst, 'exists already: refusing to copy over it');
    const tmp = joinPath(parentOf(dst), tmpName());
    const report: CopyTreeReport = { entries: 0, copied: 0, skippedXattrs: [], skippedSockets: [] };
    const srcRoot = from.abs(src);
    const tmpRoot = this.abs(tmp);
    const links = new Map<string, string>();
    const dirTimes: { abs: string; st: Stats }[] = [];

    const copyOne = async (rel: string, st: Stats): Promise<void> => {
      const s = rel === '' ? srcRoot : join(srcRoot, rel);
      const d = rel === '' ? tmpRoot : join(tmpRoot, rel);
      report.entries++;
      if (st.isDirectory()) {
        await mkdir(d, 0o700);
        for (const ent of await readdir(s)) {
          const sub = joinPath(rel, ent);
          await copyOne(sub, await lstat(join(srcRoot, sub)));
        }
        const fh = await open(d, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
        try {
          await fh.chown(st.uid, st.gid);
          await fh.chmod(st.mode & 0o7777);
        } finally {
          await fh.close();
        }
        dirTimes.push({ abs: d, st });
        return;
      }
      if (st.isFile()) {
        const key = `${st.dev}:${st.ino}`;
        const first = st.nlink > 1 ? links.get(key) : undefined;
        if (first !== undefined) {
          await link(first, d);
          return;
        }
        const sfh = await open(s, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
        try {
          if (!(await sfh.stat()).isFile())
            throw new UnsafePathError(joinPath(src, rel), 'changed type while being copied');
          if (!(await cloneFd(sfh, d))) report.copied++;
        } finally {
          await sfh.close();
        }
        const fh = await open(d, constants.O_RDONLY | constants.O_NOFOLLOW);
        try {
          await fh.chown(st.uid, st.gid);
          await fh.chmod(st.mode & 0o7777);
          await fh.utimes(st.atime, st.mtime);
        } finally {
          await fh.close();
        }
        if (st.nlink > 1) links.set(key, d);
        return;
      }
      if (st.isSymbolicLink()) {
        await symlink(await readlink(s), d);
        await lchown(d, st.uid, st.gid);
        await lutimes(d, st.atime, st.mtime);
        return;
      }
      if (st.isSocket()) {
        report.entries--;
        report.skippedSockets.push(joinPath(src, rel));
        return;
      }
      const kind = st.isCharacterDevice() ? 'char' : st.isBlockDevice() ? 'block' : 'fifo';
      await makeNode(d, kind, st.mode & 0o777, devMajor(st.rdev), devMinor(st.rdev));
      await lchown(d, st.uid, st.gid);
      if ((await lstat(d)).isSymbolicLink())
        throw new UnsafePathError(joinPath(dst, rel), 'became a symlink while being copied');
      await chmod(d, st.mode & 0o7777);
      await lutimes(d, st.atime, st.mtime);
    };

    try {
      await copyOne('', await lstat(srcRoot));
      // xattrs after every chown (chown drops security.capability); only names tiu sets
      const xs = await dumpTreeXattrs(srcRoot);
      const sets: { path: string; set: Record<string, Buffer> }[] = [];
      for (const [abs, names] of xs) {
        if (abs !== srcRoot && !abs.startsWith(srcRoot + '/')) continue;
        const set = settableXattrs(names, (n) =>
          report.skippedXattrs.push(`${abs.slice(srcRoot.length + 1) || '.'}: ${n}`),
        );
        if (Object.keys(set).length) sets.push({ path: tmpRoot + abs.slice(srcRoot.length), set });
      }
      await setXattrs(sets);
      // directory times last, deepest first (creating entries changed them)
      for (const { abs, st } of dirTimes) {
        const fh = await open(abs, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
        try {
          await fh.utimes(st.atime, st.mtime);
        } finally {
          await fh.close();
        }
      }
      if (await lstat(this.abs(dst)).catch(() => undefined))
        throw new UnsafePathError(dst, 'appeared while it was being copied');
      await rename(tmpRoot, this.abs(dst));
      this.#sr.markDir(dst);
    } catch (e) {
      await rm(tmpRoot, { recursive: true, force: true }).catch(() => undefined);
      throw e;
    }
    return report;
  }
}
