/**
 * systemd-boot integration, the pure part: entry names and boot counters, the kernel command
 * line built from image data, the entry text, what systemd-boot 252 selects, and the
 * reconcile plan that makes the ESP agree with the snapshots. Nothing here touches a file.
 *
 * Layout on the ESP (as openSUSE's sdbootutil lays MicroOS out: per snapshot one Boot Loader
 * Specification type-1 entry, kernels shared by content hash):
 *
 *   loader/loader.conf              `default tiu-*`
 *   loader/entries/tiu-N+3.conf     snapshot N, 3 boot tries left (Automatic Boot Assessment)
 *   loader/entries/tiu-N.conf       snapshot N, blessed (counter removed)
 *   loader/entries/tiu-N+0-3.conf   snapshot N, bad (no tries left)
 *   loader/entries/tiuparked-N…     snapshot N, not a candidate for the default (newer than the
 *                                   btrfs default: staged before the commit, or rolled back from)
 *   tiu/<kver>/linux-<sha256/32>    kernels and initrds, named by content: snapshots share them
 *   tiu/<kver>/initrd-<sha256/32>
 *
 * Why a glob and not an exact default (systemd-boot 252, src/boot/efi/boot.c): an entry's id is
 * its whole file name, counter included (`tiu-5+2-1.conf`), so an exact `default` stops matching
 * at the first counted boot; entries are sorted with the ones without tries left first, then by
 * version comparison of the id, and the default pattern picks the *last* matching entry. So with
 * `default tiu-*` the loader boots the highest-numbered candidate entry that still has tries, and
 * when the newest one runs out (`+0-3`) it boots the next older candidate by itself. tiu keeps
 * the candidates exactly the snapshots up to the btrfs default (newer ones are parked), so the
 * loader's choice and the btrfs default name the same snapshot.
 */
import { TiuError } from '../../errors.ts';

export class BootError extends TiuError {}

export const ENTRY_PREFIX = 'tiu-';
export const PARKED_PREFIX = 'tiuparked-';
export const LOADER_DEFAULT = 'tiu-*';
export const ENTRIES_DIR = 'loader/entries';
export const LOADER_CONF = 'loader/loader.conf';
export const KERNEL_DIR = 'tiu';
export const DEFAULT_BOOT_TRIES = 3;
export const MAX_CMDLINE = 4096;

export interface EntryName {
  snapshot: number;
  parked: boolean;
  /** Undefined: no counter (blessed). */
  triesLeft?: number;
  triesDone?: number;
}

export type EntryState = 'blessed' | 'counting' | 'bad';

const NAME_RE = /^(tiu|tiuparked)-(\d{1,9})(?:\+(\d{1,4})(?:-(\d{1,4}))?)?\.conf$/;

export function parseEntryName(name: string): EntryName | undefined {
  const m = NAME_RE.exec(name);
  if (!m) return undefined;
  return {
    snapshot: Number(m[2]),
    parked: m[1] === 'tiuparked',
    ...(m[3] !== undefined ? { triesLeft: Number(m[3]) } : {}),
    ...(m[4] !== undefined ? { triesDone: Number(m[4]) } : {}),
  };
}

export function entryName(e: EntryName): string {
  const counter =
    e.triesLeft === undefined ? '' : `+${e.triesLeft}${e.triesDone !== undefined ? `-${e.triesDone}` : ''}`;
  return `${e.parked ? PARKED_PREFIX : ENTRY_PREFIX}${e.snapshot}${counter}.conf`;
}

export function entryState(e: EntryName): EntryState {
  if (e.triesLeft === undefined) return 'blessed';
  return e.triesLeft === 0 ? 'bad' : 'counting';
}

/**
 * A kernel version usable in ESP paths and entry text: no `/`, no `..` component, no control
 * characters, at most 128 bytes; and not ending in `.`, which vfat drops from a name
 * (`6.1.` and `6.1` would be one directory on the ESP, and the reconcile would delete the
 * kernel of the entry that names the other spelling).
 */
export const KVER_RE = /^[A-Za-z0-9](?:[A-Za-z0-9._+~-]{0,126}[A-Za-z0-9_+~-])?$/;

/** ESP paths compare as vfat does: case-insensitively (`tiu/6.1-A/…` and `tiu/6.1-a/…` are one file). */
export const espKey = (rel: string): string => rel.toLowerCase();

/** Kernel command line tokens, double quotes kept together (`a="b c"` is one token). */
export function splitCmdline(s: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quoted = false;
  for (const ch of s) {
    if (ch === '"') quoted = !quoted;
    if (ch === ' ' && !quoted) {
      if (cur) out.push(cur);
      cur = '';
    } else cur += ch;
  }
  if (cur) out.push(cur);
  return out;
}

/**
 * Parameters tiu sets itself (or that would mount something else than the snapshot): an image's
 * or admin's are dropped. Compared as the parsers of the command line read a key: the kernel
 * skips a leading `"` (`"root=/dev/x"` sets root), systemd's initrd removes every quote
 * (`ro"ot"=x` is root=x), and both take `-` and `_` as the same character.
 */
const OWN = new Set(['root', 'rootflags', 'boot_image', 'initrd', 'mount.usr', 'mount.usrflags', 'mount.usrfstype']);
export function ownParameter(token: string): boolean {
  const key = token.replace(/"/g, '').split('=', 1)[0]!.replace(/-/g, '_').toLowerCase();
  return token.replace(/"/g, '').includes('=') && OWN.has(key);
}

/**
 * A command line from image data (`/etc/kernel/cmdline`) or tiu.conf: valid UTF-8, no control
 * characters (a newline would start a new key in the entry file), at most 4 KiB, balanced
 * quotes; one trailing newline (the file's end) is allowed. root=/rootflags=/initrd= are
 * dropped: tiu names the snapshot. CMDLINE_INVALID otherwise.
 */
export function sanitizeCmdline(raw: Uint8Array | string, source: string): string[] {
  let text: string;
  try {
    text = typeof raw === 'string' ? raw : new TextDecoder('utf-8', { fatal: true }).decode(raw);
  } catch {
    throw new BootError('CMDLINE_INVALID', `${source} is not valid UTF-8`, { source });
  }
  text = text.replace(/\r?\n$/, '');
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f\u0080-\u009f\u2028\u2029]/.test(text)) {
    throw new BootError(
      'CMDLINE_INVALID',
      `${source} contains a newline or control character; refusing to write it into a boot entry`,
      { source },
    );
  }
  if (Buffer.byteLength(text) > MAX_CMDLINE)
    throw new BootError('CMDLINE_INVALID', `${source} is longer than ${MAX_CMDLINE} bytes`, { source });
  if ((text.match(/"/g) ?? []).length % 2)
    throw new BootError('CMDLINE_INVALID', `${source} has an unbalanced quote`, { source });
  return splitCmdline(text.replace(/\t/g, ' ')).filter((t) => !ownParameter(t));
}

export interface EntryFile {
  /** ESP-relative path (`/tiu/<kver>/linux-<hash>` in the entry). */
  espRel: string;
  sha256: string;
  size: number;
}

export interface EntrySpec {
  snapshot: number;
  kver: string;
  kernel: EntryFile;
  initrd?: EntryFile;
  /** Already validated tokens, root= and rootflags= first. */
  options: string[];
}

export function kernelRel(kver: string, kind: 'linux' | 'initrd', sha256: string): string {
  if (!KVER_RE.test(kver))
    throw new BootError('KERNEL_VERSION_INVALID', `kernel version '${kver}' is not usable as a file name`, { kver });
  if (!/^[0-9a-f]{64}$/.test(sha256))
    throw new BootError('KERNEL_VERSION_INVALID', `bad content hash for kernel ${kver}`, { kver });
  return `${KERNEL_DIR}/${kver}/${kind}-${sha256.slice(0, 32)}`;
}

/** The options line: root by filesystem UUID, the snapshot's subvolume, then the image's and the admin's additions. */
export function entryOptions(fsUuid: string, subvol: string, image: string[], admin: string[]): string[] {
  if (!/^[0-9a-f-]{36}$/.test(fsUuid))
    throw new BootError('CMDLINE_INVALID', `filesystem UUID '${fsUuid}' is not a UUID`);
  if (!/^[A-Za-z0-9@._/-]+$/.test(subvol))
    throw new BootError('CMDLINE_INVALID', `subvolume path '${subvol}' cannot be written into a command line`);
  return [`root=UUID=${fsUuid}`, `rootflags=subvol=${subvol}`, ...image, ...admin];
}

export function entryText(s: EntrySpec): string {
  for (const t of s.options)
    // eslint-disable-next-line no-control-regex
    if (/[\u0000-\u001f\u007f]/.test(t))
      throw new BootError('CMDLINE_INVALID', `option '${JSON.stringify(t)}' has a control character`);
  return [
    `# Boot Loader Specification type #1 entry, written by tiu for snapshot ${s.snapshot}`,
    `title      tiu snapshot ${s.snapshot} (${s.kver})`,
    `version    ${s.snapshot}@${s.kver}`,
    `linux      /${s.kernel.espRel}`,
    ...(s.initrd ? [`initrd     /${s.initrd.espRel}`] : []),
    `options    ${s.options.join(' ')}`,
    '',
  ].join('\n');
}

/** The ESP files an entry text names (`linux`, `initrd`), ESP-relative. */
export function entryFiles(text: string): string[] {
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*(linux|initrd|efi|devicetree)\s+\/?(\S+)\s*$/.exec(line);
    if (m) out.push(m[2]!.replace(/\\/g, '/'));
  }
  return out;
}

/** loader.conf with its `default` line set to `pattern` (other settings kept). */
export function loaderConfWith(current: string | undefined, pattern = LOADER_DEFAULT): string {
  const lines = (current ?? '').split('\n').filter((l) => l.trim() !== '' && !/^\s*default(\s|$)/.test(l));
  return [`default ${pattern}`, ...lines, ''].join('\n');
}

export function loaderDefaultOf(conf: string | undefined): string | undefined {
  return /^\s*default\s+(\S+)/m.exec(conf ?? '')?.[1];
}

// --- What systemd-boot 252 boots ---

/** systemd's strverscmp_improved, for the names tiu compares (digits numerically, other runs by code point). */
export function verscmp(a: string, b: string): number {
  const re = /\d+|\D+/g;
  const pa = a.match(re) ?? [];
  const pb = b.match(re) ?? [];
  for (let i = 0; i < Math.min(pa.length, pb.length); i++) {
    const x = pa[i]!;
    const y = pb[i]!;
    const dx = /^\d/.test(x);
    const dy = /^\d/.test(y);
    if (dx && dy) {
      const d = Number(x) - Number(y);
      if (d !== 0) return Math.sign(d);
    } else if (x !== y) return x < y ? -1 : 1;
  }
  return Math.sign(pa.length - pb.length);
}

function fnmatch(pattern: string, s: string): boolean {
  let re = '^';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === '*') re += '.*';
    else if (c === '?') re += '.';
    else if (c === '[') {
      const end = pattern.indexOf(']', i + 1);
      if (end < 0) re += '\\[';
      else {
        re += `[${pattern.slice(i + 1, end).replace(/\\/g, '\\\\')}]`;
        i = end;
      }
    } else re += c.replace(/[.+^${}()|\\]/g, '\\$&');
  }
  return new RegExp(re + '$', 'i').test(s);
}

const counterOf = (name: string): { left?: number; done?: number } => {
  const m = /\+(\d+)(?:-(\d+))?\.conf$/i.exec(name);
  return m ? { left: Number(m[1]), ...(m[2] !== undefined ? { done: Number(m[2]) } : {}) } : {};
};

/**
 * The entry systemd-boot 252 starts without a human (no LoaderEntryOneShot; LoaderEntryDefault, when
 * given and matching an entry, before loader.conf's `default`):
 * entries sorted with no-tries-left first, then by version comparison of the lower-cased file
 * name, then by tries; the `default` pattern picks the last match; without a match, the last entry.
 */
export function selectedEntry(
  names: readonly string[],
  defaultPattern: string | undefined,
  efiEntryDefault?: string,
): string | undefined {
  const sorted = [...names].sort((a, b) => {
    const ca = counterOf(a);
    const cb = counterOf(b);
    const za = ca.left === 0;
    const zb = cb.left === 0;
    if (za !== zb) return za ? -1 : 1;
    const r = verscmp(a.toLowerCase(), b.toLowerCase());
    if (r) return r;
    if (ca.left === undefined || cb.left === undefined) return 0;
    if (ca.left !== cb.left) return ca.left - cb.left;
    return (cb.done ?? 0) - (ca.done ?? 0);
  });
  // LoaderEntryDefault (bootctl set-default) first, when it matches an entry; then loader.conf.
  for (const pattern of [efiEntryDefault, defaultPattern]) {
    if (!pattern) continue;
    for (let i = sorted.length - 1; i >= 0; i--)
      if (fnmatch(pattern.toLowerCase(), sorted[i]!.toLowerCase())) return sorted[i];
  }
  return sorted.at(-1);
}

// --- Reconcile ---

export interface EspEntry extends EntryName {
  name: string;
  /** ESP-relative files it names. */
  files: string[];
}

export interface ReconcileSnapshot {
  number: number;
  inProgress: boolean;
  health?: 'good' | 'bad';
}

export interface ReconcileInput {
  snapshots: readonly ReconcileSnapshot[];
  default: number | undefined;
  entries: readonly EspEntry[];
  /** ESP-relative files below tiu/ (and temporary files anywhere tiu writes). */
  files: readonly string[];
  loaderDefault: string | undefined;
  tries: number;
}

export interface ReconcilePlan {
  /** Entries to delete: snapshot gone, unfinished, or a duplicate. */
  remove: string[];
  rename: { from: string; to: string }[];
  /** Snapshots that should have an entry and have none, newest first, the default first of all. */
  missing: number[];
  /** ESP files no remaining entry uses. */
  unusedFiles: string[];
  setLoaderDefault: boolean;
}

/** What makes the ESP agree with the snapshots (the btrfs default is the truth). */
export function planReconcile(i: ReconcileInput): ReconcilePlan {
  const snaps = new Map(i.snapshots.map((s) => [s.number, s]));
  const remove: string[] = [];
  const rename: { from: string; to: string }[] = [];
  const keep = new Map<number, EspEntry>();
  // Candidates before parked ones, so a duplicate keeps the one systemd-boot would use.
  for (const e of [...i.entries].sort((a, b) => Number(a.parked) - Number(b.parked) || verscmp(a.name, b.name))) {
    const s = snaps.get(e.snapshot);
    if (!s || (s.inProgress && s.number !== i.default) || keep.has(e.snapshot)) remove.push(e.name);
    else keep.set(e.snapshot, e);
  }
  for (const e of keep.values()) {
    const s = snaps.get(e.snapshot)!;
    const want: EntryName = {
      snapshot: e.snapshot,
      parked: i.default !== undefined && e.snapshot > i.default,
      triesLeft: e.triesLeft,
      triesDone: e.triesDone,
    };
    if (e.snapshot === i.default) {
      want.parked = false;
      // The default must be bootable: a bad counter on it (an admin's rollback to it) starts again.
      if (e.triesLeft === 0) {
        want.triesLeft = i.tries;
        delete want.triesDone;
      }
    } else if (s.health === 'bad' && e.triesLeft !== 0) {
      want.triesLeft = 0;
      want.triesDone = e.triesDone ?? 0;
    }
    const to = entryName(want);
    if (to !== e.name) rename.push({ from: e.name, to });
  }
  const removed = new Set(remove);
  const used = new Set(i.entries.filter((e) => !removed.has(e.name)).flatMap((e) => e.files.map(espKey)));
  const unusedFiles = i.files.filter((f) => !used.has(espKey(f)));
  const missing = i.snapshots
    .filter(
      (s) =>
        !s.inProgress &&
        s.health !== 'bad' &&
        !keep.has(s.number) &&
        (i.default === undefined || s.number <= i.default),
    )
    .map((s) => s.number)
    .sort((a, b) => (a === i.default ? -1 : b === i.default ? 1 : b - a));
  return { remove, rename, missing, unusedFiles, setLoaderDefault: i.loaderDefault !== LOADER_DEFAULT };
}

/** Bless (drop the counter) or mark bad (no tries left): the rename systemd-bless-boot does. */
export function markedName(e: EntryName, mark: 'good' | 'bad'): string {
  if (mark === 'good') return entryName({ snapshot: e.snapshot, parked: e.parked });
  return entryName({ snapshot: e.snapshot, parked: e.parked, triesLeft: 0, triesDone: e.triesDone ?? 0 });
}
