/**
 * Adapter from a zstd:chunked table of contents (containers/storage's JSON: `{version,
 * entries: [{type, name, linkName, mode, size, uid, gid, modtime, devMajor, devMinor, xattrs,
 * digest, offset, endOffset, ...}]}`) to the engine's TreeEntry list for one layer.
 * Xattr values in the TOC are base64; `chunk` entries (further frames of the file before them,
 * contiguous in the blob) widen that file's byte range: its digest is of the whole content.
 */
import { bbuf, NO_XATTRS } from '../../layer/entry.ts';
import { BadEntryError } from './errors.ts';
import { TocFile, TocFiles } from './toc-files.ts';
import type { RowSpill } from './row-spill.ts';
import { checkXattrs } from '../../host/xattr-names.ts';
import { normalizeEntryPath, normalizeLinkTarget } from '../../layer/paths.ts';
import type { EntryType, TreeEntry } from './types.ts';
import type { Toc, TocEntry } from '../../layer/toc.ts';

/** The TOC format is defined once, in src/layer/toc.ts (which also reads and checks it). */
export type ChunkedToc = Toc;
export type ChunkedTocEntry = TocEntry;

export const EMPTY_SHA256 = 'sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

const TYPES: Record<string, EntryType> = {
  reg: 'reg',
  dir: 'dir',
  symlink: 'symlink',
  hardlink: 'hardlink',
  char: 'char',
  block: 'block',
  fifo: 'fifo',
};

function nat(v: unknown, name: string, what: string): number {
  if (v === undefined || v === null) return 0;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0)
    throw new BadEntryError(name, `${what} is not a non-negative integer`);
  return v;
}

/** Parse an RFC 3339 time with up to nanosecond precision into ns since the epoch. */
export function parseTimeNs(s: string | undefined, name: string): bigint {
  if (s === undefined || s === '') return 0n;
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$/.exec(s);
  if (!m) throw new BadEntryError(name, `modtime ${JSON.stringify(s.slice(0, 40))} is not RFC 3339`);
  const secs = Date.parse(m[1]! + m[3]!);
  if (Number.isNaN(secs)) throw new BadEntryError(name, `modtime ${JSON.stringify(s)} is not a date`);
  const frac = BigInt((m[2] ?? '').padEnd(9, '0') || '0');
  return BigInt(secs) * 1_000_000n + frac;
}

/**
 * One layer's entries from its TOC entries, taken one at a time in TOC order (`chunk` entries
 * widen the file before them), so a reader never needs the whole parsed TOC.
 */
export class LayerEntries {
  readonly entries: TreeEntry[] = [];
  /** The regular files' fields, as rows (toc-files.ts): most entries are files. */
  readonly #files: TocFiles;

  /** The last modtime read and its value: files of a package share one, and a BigInt is 24 bytes. */
  #lastModtime: string | undefined;
  #lastMtimeNs = 0n;

  /** Where the entries' paths may be had as strings that exist already (see `constructor`). */
  readonly #ownPath: ((path: string) => string | undefined) | undefined;

  /**
   * `ownPath`: another holder's string of a path, used instead of the one read (the booted
   * tree's scan, which planning holds anyway): the read one then dies young, and the tree and
   * the scan share one string per path from the start instead of two until a full collection.
   */
  /** `spill`: where the files' rows may go once complete (row-spill.ts); without one they stay in memory. */
  constructor(layer: number, ownPath?: (path: string) => string | undefined, spill?: RowSpill) {
    this.#files = new TocFiles(layer, spill);
    this.#ownPath = ownPath;
  }

  /** The TOC is read whole: the last rows may leave memory too. */
  finish(): TreeEntry[] {
    this.#files.finish();
    return this.entries;
  }

  #mtimeOf(modtime: string | undefined, name: string): bigint {
    if (modtime !== this.#lastModtime) {
      this.#lastMtimeNs = parseTimeNs(modtime, name);
      this.#lastModtime = modtime;
    }
    return this.#lastMtimeNs;
  }

  add(t: TocEntry): void {
    const out = this.entries;
    if (typeof t?.name !== 'string' || typeof t.type !== 'string')
      throw new BadEntryError(String(t?.name), 'entry without name or type');
    if (t.type === 'chunk') {
      // Further zstd frames of the previous file, right after it: widen its range to take them.
      const prev = out[out.length - 1];
      if (!(prev instanceof TocFile) || normalizeEntryPath(t.name) !== prev.path)
        throw new BadEntryError(t.name, 'chunk entry without its file');
      const off = nat(t.offset, t.name, 'offset');
      const end = nat(t.endOffset, t.name, 'endOffset');
      if (off !== prev.source.endOffset || end < off)
        throw new BadEntryError(t.name, 'chunk frames are not contiguous');
      prev.widenTo(end);
      return;
    }
    const type = TYPES[t.type];
    if (!type) throw new BadEntryError(t.name, `unknown entry type ${JSON.stringify(t.type)}`);
    const read = normalizeEntryPath(t.name);
    const path = this.#ownPath?.(read) ?? read;
    // Most entries have none: they share one frozen object (tens of bytes apiece on a 45k-entry tree).
    const xattrs: Record<string, Buffer> = t.xattrs && Object.keys(t.xattrs).length ? {} : NO_XATTRS;
    for (const [k, v] of Object.entries(t.xattrs ?? {})) {
      if (typeof v !== 'string')
        throw new BadEntryError(t.name, `xattr ${JSON.stringify(k.slice(0, 100))} is not base64 text`);
      xattrs[k] = Buffer.from(v, 'base64');
    }
    // Names from image data: refused while the TOC is read, before anything is written (XATTR_INVALID).
    if (xattrs !== NO_XATTRS) checkXattrs(bbuf(path), xattrs);
    const meta = {
      path,
      type,
      mode: nat(t.mode, t.name, 'mode') & 0o7777,
      uid: nat(t.uid, t.name, 'uid'),
      gid: nat(t.gid, t.name, 'gid'),
      mtimeNs: this.#mtimeOf(t.modtime, t.name),
      xattrs,
      size: type === 'reg' ? nat(t.size, t.name, 'size') : 0,
    };
    if (type === 'reg') {
      let digest: string;
      if (meta.size === 0 && (t.digest === undefined || t.digest === '')) digest = EMPTY_SHA256;
      else if (typeof t.digest !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(t.digest))
        throw new BadEntryError(t.name, 'regular file without a sha256 digest');
      else digest = t.digest;
      const offset = nat(t.offset, t.name, 'offset');
      const endOffset = nat(t.endOffset, t.name, 'endOffset');
      out.push(this.#files.add(path, { ...meta, digest, offset, endOffset }));
      return;
    }
    const e: TreeEntry = meta;
    if (type === 'symlink') {
      if (typeof t.linkName !== 'string' || t.linkName === '')
        throw new BadEntryError(t.name, 'symlink without a target');
      e.linkname = t.linkName;
    }
    if (type === 'hardlink') {
      if (typeof t.linkName !== 'string') throw new BadEntryError(t.name, 'hardlink without a target');
      e.linkname = normalizeLinkTarget(t.name, t.linkName);
    }
    if (type === 'char' || type === 'block') {
      e.devmajor = nat(t.devMajor, t.name, 'devMajor');
      e.devminor = nat(t.devMinor, t.name, 'devMinor');
    }
    out.push(e);
  }
}

export function tocToEntries(toc: Toc, layer: number): TreeEntry[] {
  if (!toc || !Array.isArray(toc.entries)) throw new BadEntryError('(toc)', 'no entries array');
  const out = new LayerEntries(layer);
  for (const t of toc.entries) out.add(t);
  return out.entries;
}
