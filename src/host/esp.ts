/**
 * The EFI system partition and the boot loader's EFI variables: the only code that writes to
 * the ESP. Every write is atomic as far as vfat allows: a temporary name in the same directory,
 * written and fsync'ed, renamed over the final name, then the directory fsync'ed. A crash
 * leaves either the old file or the new one (and at worst a `.tiu-tmp-*` file that the next
 * reconcile removes).
 *
 * Paths given here are relative to the ESP's mount point; they are made by tiu's boot planner
 * from validated names (src/deploy/boot/names.ts), never taken from image content as they are.
 */
import { createHash, randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, rmdir, statfs, unlink, type FileHandle } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { TiuError } from '../errors.ts';
import { run } from './exec.ts';

export class EspError extends TiuError {}

function safeRel(rel: string): string {
  if (rel.startsWith('/') || rel.split('/').some((c) => c === '' || c === '.' || c === '..') || rel.includes('\0')) {
    throw new EspError('UNSAFE_PATH', `refusing ESP path '${rel}'`, { path: rel });
  }
  return rel;
}

export const ESP_TMP_PREFIX = '.tiu-tmp-';

async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function mkdirSynced(esp: string, relDir: string): Promise<void> {
  const parts = relDir.split('/').filter(Boolean);
  let cur = esp;
  for (const p of parts) {
    const next = join(cur, p);
    const made = await mkdir(next).then(
      () => true,
      (e: NodeJS.ErrnoException) => {
        if (e.code === 'EEXIST') return false;
        throw e;
      },
    );
    if (made) await fsyncDir(cur);
    cur = next;
  }
}

/** Write `data` to ESP/rel atomically (temp, fsync, rename, fsync the directory). */
export async function writeEspFile(esp: string, rel: string, data: string | Uint8Array): Promise<void> {
  await writeEspFrom(esp, safeRel(rel), async (fh) => {
    await fh.writeFile(data);
  });
}

/**
 * Copy the open regular file `src` (a descriptor the caller opened without following links) to
 * ESP/rel atomically, checking on the way that its content hashes to `sha256` (hex): a file
 * that changed since it was planned is refused (ESP_SOURCE_CHANGED), and nothing is renamed.
 */
export async function copyToEsp(esp: string, rel: string, src: FileHandle, sha256: string): Promise<void> {
  await writeEspFrom(esp, safeRel(rel), async (fh) => {
    const h = createHash('sha256');
    const buf = Buffer.allocUnsafe(1 << 20);
    for (let pos = 0; ; ) {
      const { bytesRead } = await src.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
      await fh.write(buf, 0, bytesRead);
      pos += bytesRead;
    }
    const got = h.digest('hex');
    if (got !== sha256) throw new EspError('ESP_SOURCE_CHANGED', `the file for ${rel} changed while it was copied (sha256 ${got}, planned ${sha256})`, { path: rel });
  });
}

async function writeEspFrom(esp: string, rel: string, fill: (fh: FileHandle) => Promise<void>): Promise<void> {
  const dir = join(esp, dirname(rel));
  await mkdirSynced(esp, dirname(rel) === '.' ? '' : dirname(rel));
  const tmp = join(dir, `${ESP_TMP_PREFIX}${randomBytes(6).toString('hex')}`);
  const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
  try {
    try {
      await fill(fh);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, join(esp, rel));
  } catch (e) {
    await rm(tmp, { force: true }).catch(() => undefined);
    throw mapNoSpace(e, esp, rel);
  }
  await fsyncDir(dir);
}

function mapNoSpace(e: unknown, esp: string, rel: string): unknown {
  if ((e as NodeJS.ErrnoException).code === 'ENOSPC') return new EspError('ESP_FULL', `the ESP ${esp} is full while writing ${rel}`, { esp, path: rel }, { cause: e });
  return e;
}

/** Rename ESP/from to ESP/to (same directory on vfat is one directory-entry update), then fsync the directory. */
export async function renameEsp(esp: string, from: string, to: string): Promise<void> {
  await rename(join(esp, safeRel(from)), join(esp, safeRel(to)));
  await fsyncDir(dirname(join(esp, to)));
}

/** Remove ESP/rel (missing is fine), then fsync its directory; an emptied parent directory below the ESP goes too. */
export async function removeEsp(esp: string, rel: string, opts: { pruneParents?: number } = {}): Promise<void> {
  const abs = join(esp, safeRel(rel));
  await unlink(abs).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'ENOENT') throw e;
  });
  let dir = dirname(abs);
  await fsyncDir(dir).catch(() => undefined);
  for (let i = 0; i < (opts.pruneParents ?? 0) && dir !== esp && dir.startsWith(esp + '/'); i++) {
    const left = await readdir(dir).catch(() => undefined);
    if (!left || left.length) break;
    await rmdir(dir).catch(() => undefined);
    dir = dirname(dir);
    await fsyncDir(dir).catch(() => undefined);
  }
}

/** Names in ESP/rel (none when it does not exist). */
export async function listEsp(esp: string, rel: string): Promise<{ name: string; dir: boolean }[]> {
  const abs = rel ? join(esp, safeRel(rel)) : esp;
  const ents = await readdir(abs, { withFileTypes: true }).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT' || e.code === 'ENOTDIR') return [];
    throw e;
  });
  return ents.map((d) => ({ name: d.name, dir: d.isDirectory() }));
}

export async function readEspFile(esp: string, rel: string): Promise<string | undefined> {
  return readFile(join(esp, safeRel(rel)), 'utf8').catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return undefined;
    throw e;
  });
}

export async function espFileSize(esp: string, rel: string): Promise<number | undefined> {
  const fh = await open(join(esp, safeRel(rel)), constants.O_RDONLY).catch(() => undefined);
  if (!fh) return undefined;
  try {
    return (await fh.stat()).size;
  } finally {
    await fh.close();
  }
}

export interface EspSpace {
  size: number;
  free: number;
  /** Allocation unit: every file takes whole clusters. */
  cluster: number;
}

export async function espSpace(esp: string): Promise<EspSpace> {
  const s = await statfs(esp);
  return { size: s.blocks * s.bsize, free: s.bavail * s.bsize, cluster: s.bsize };
}

// --- EFI variables (systemd's Boot Loader Interface, vendor GUID 4a67b082-0a4c-41cf-b6c7-440b29bb8c4f) ---

export const LOADER_GUID = '4a67b082-0a4c-41cf-b6c7-440b29bb8c4f';
const EFIVARS = '/sys/firmware/efi/efivars';

/** A UTF-16LE string variable of the boot loader interface (LoaderEntrySelected, LoaderEntryDefault, ...), or undefined. */
export async function readLoaderVariable(name: string): Promise<string | undefined> {
  const raw = await readFile(join(EFIVARS, `${name}-${LOADER_GUID}`)).catch(() => undefined);
  if (!raw || raw.length < 4) return undefined;
  // 4 bytes of attributes, then the value; strings are NUL-terminated UTF-16LE.
  const s = raw.subarray(4).toString('utf16le');
  return s.replace(/\0+$/, '');
}

/**
 * Remove a boot loader variable (LoaderEntryDefault overrides loader.conf's `default`). efivarfs
 * files are immutable until chattr -i.
 */
export async function removeLoaderVariable(name: string): Promise<boolean> {
  const path = join(EFIVARS, `${name}-${LOADER_GUID}`);
  const exists = await open(path, constants.O_RDONLY).then(
    async (fh) => {
      await fh.close();
      return true;
    },
    () => false,
  );
  if (!exists) return false;
  await run('chattr', ['-i', path], { okExitCodes: [0, 1] });
  await unlink(path);
  return true;
}

/** The kernel command line this system booted with (/proc/cmdline). */
export async function procCmdline(): Promise<string> {
  return (await readFile('/proc/cmdline', 'utf8')).trim();
}
