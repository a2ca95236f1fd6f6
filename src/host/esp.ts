/**
 * The EFI system partition and the boot loader's EFI variables: the only code that writes to
 * the ESP. Every write is atomic as far as vfat allows: a temporary name in the same directory,
 * written and fsync'ed, renamed over the final name, then the directory fsync'ed. A crash
 * leaves either the old file or the new one (and at worst a `.tiu-tmp-*` file that the next
 * reconcile removes).
 *
 * Paths given here are relative to the ESP's mount point; they are made by tiu's boot planner
 * from validated names (src/deploy/boot/entries.ts), never taken from image content as they are.
 */
import { createHash, randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rmdir, statfs, unlink, type FileHandle } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { TiuError } from '../errors.ts';
import { run } from './exec.ts';
import { fsyncDir, replaceFileAtomic } from '../util/atomic.ts';

export class EspError extends TiuError {}

function safeRel(rel: string): string {
  if (rel.startsWith('/') || rel.split('/').some((c) => c === '' || c === '.' || c === '..') || rel.includes('\0')) {
    throw new EspError('PATH_UNSAFE', `refusing ESP path '${rel}'`, { path: rel });
  }
  return rel;
}

export const ESP_TMP_PREFIX = '.tiu-tmp-';

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
    for (let pos = 0; ;) {
      const { bytesRead } = await src.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
      await fh.write(buf, 0, bytesRead);
      pos += bytesRead;
    }
    const got = h.digest('hex');
    if (got !== sha256)
      throw new EspError(
        'ESP_SOURCE_CHANGED',
        `the file for ${rel} changed while it was copied (sha256 ${got}, planned ${sha256})`,
        { path: rel },
      );
  });
}

async function writeEspFrom(esp: string, rel: string, fill: (fh: FileHandle) => Promise<void>): Promise<void> {
  await mkdirSynced(esp, dirname(rel) === '.' ? '' : dirname(rel));
  // The ESP's own temporary prefix: reconcile removes leftovers of a crash by it.
  const tempPath = join(esp, dirname(rel), `${ESP_TMP_PREFIX}${randomBytes(6).toString('hex')}`);
  try {
    await replaceFileAtomic(join(esp, rel), fill, { tempPath });
  } catch (e) {
    throw mapNoSpace(e, esp, rel);
  }
}

function mapNoSpace(e: unknown, esp: string, rel: string): unknown {
  if ((e as NodeJS.ErrnoException).code === 'ENOSPC')
    return new EspError('ESP_FULL', `the ESP ${esp} is full while writing ${rel}`, { esp, path: rel }, { cause: e });
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
export const EFIVARS = '/sys/firmware/efi/efivars';
/** NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS, what bootctl set-default writes. */
export const LOADER_VARIABLE_ATTRIBUTES = 0x7;
/** Larger boot loader string variables are not read (a firmware has a few KiB per variable). */
export const MAX_LOADER_VARIABLE = 4096;

/**
 * Where the EFI variables of the system at `sysroot` are: efivarfs for the running system
 * (`/`); none for another sysroot (its firmware is not this machine's). TIU_TEST_EFIVARS=DIR
 * stands in for efivarfs in tests (this machine may have none).
 */
export function efivarsDir(sysroot: string): string | undefined {
  const test = process.env.TIU_TEST_EFIVARS;
  if (test) return test;
  return sysroot === '/' ? EFIVARS : undefined;
}

/**
 * An efivarfs file's bytes -> attributes and string value (up to the first NUL); undefined for
 * what is not a UTF-16 string variable (shorter than the attributes, an odd number of value
 * bytes, larger than MAX_LOADER_VARIABLE).
 */
export function decodeLoaderVariable(raw: Uint8Array): { attributes: number; value: string } | undefined {
  if (raw.length < 4 || (raw.length - 4) % 2 !== 0 || raw.length - 4 > MAX_LOADER_VARIABLE) return undefined;
  const b = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
  const text = b.subarray(4).toString('utf16le');
  const nul = text.indexOf('\0');
  return { attributes: b.readUInt32LE(0), value: nul < 0 ? text : text.slice(0, nul) };
}

function loaderVariablePath(name: string, dir: string): string {
  if (!/^[A-Za-z][A-Za-z0-9]{0,63}$/.test(name))
    throw new EspError('PATH_UNSAFE', `refusing EFI variable name '${name}'`, { name });
  return join(dir, `${name}-${LOADER_GUID}`);
}

/** A UTF-16LE string variable of the boot loader interface (LoaderEntrySelected, LoaderEntryDefault, ...), or undefined. */
export async function readLoaderVariable(name: string, dir: string | undefined = EFIVARS): Promise<string | undefined> {
  if (!dir) return undefined;
  const fh = await open(loaderVariablePath(name, dir), constants.O_RDONLY | constants.O_NOFOLLOW).catch(
    () => undefined,
  );
  if (!fh) return undefined;
  try {
    const buf = Buffer.alloc(4 + MAX_LOADER_VARIABLE + 2);
    let got = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, got, buf.length - got, got);
      if (bytesRead === 0 || (got += bytesRead) === buf.length) break;
    }
    return decodeLoaderVariable(buf.subarray(0, got))?.value;
  } finally {
    await fh.close();
  }
}

/**
 * Remove a boot loader variable (LoaderEntryDefault overrides loader.conf's `default`). efivarfs
 * creates the files of non-standard variables immutable: `chattr -i` first (a filesystem without
 * file attributes, the stand-in of the tests, makes chattr fail; the unlink then says whether
 * it mattered). EFI_VARIABLE_IMMUTABLE when the variable stays. False when it was not there.
 */
export async function removeLoaderVariable(name: string, dir: string | undefined = EFIVARS): Promise<boolean> {
  if (!dir) return false;
  const path = loaderVariablePath(name, dir);
  const exists = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW).then(
    async (fh) => {
      await fh.close();
      return true;
    },
    () => false,
  );
  if (!exists) return false;
  await run('chattr', ['-i', path], { okExitCodes: [0, 1] }).catch(() => undefined);
  await unlink(path).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return;
    throw new EspError(
      'EFI_VARIABLE_IMMUTABLE',
      `cannot remove the EFI variable ${name} (${path}): ${e.code ?? e.message}`,
      { name, path },
      { cause: e },
    );
  });
  return true;
}

/** The kernel command line this system booted with (/proc/cmdline). */
export async function procCmdline(): Promise<string> {
  return (await readFile('/proc/cmdline', 'utf8')).trim();
}
