/**
 * A small streaming tar reader (ustar, pax, GNU long names), written for this engine because
 * it must keep pax xattr values as raw bytes (security.capability is binary) and must refuse
 * what it does not understand instead of guessing.
 */
import type { Readable } from 'node:stream';
import { ByteReader } from '../../bundle/tar-format.ts';
import { BadEntryError, BadTarError } from './errors.ts';
import { checkXattrs } from '../../host/xattr-names.ts';
import type { EntryType } from './types.ts';

export interface TarEntry {
  name: string;
  type: EntryType | 'other';
  /** Raw typeflag. */
  flag: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtimeNs: bigint;
  linkname: string;
  devmajor: number;
  devminor: number;
  xattrs: Record<string, Buffer>;
  /** The content; must be consumed before the next entry is asked for (else it is skipped). */
  body(): AsyncGenerator<Buffer>;
}

const MAX_META = 1 << 20;

function cstr(b: Buffer): string {
  const z = b.indexOf(0);
  return (z < 0 ? b : b.subarray(0, z)).toString();
}

const UTF8 = new TextDecoder('utf-8', { fatal: true });
/**
 * A name or link target: must be UTF-8. A lossy decode would turn two distinct names into one
 * file (both become U+FFFD), so anything else is refused with ENTRY_INVALID (as on the TOC path).
 */
function nameOf(b: Buffer, field = 'name', nulEnds = true): string {
  const z = nulEnds ? b.indexOf(0) : -1;
  const raw = z < 0 ? b : b.subarray(0, z);
  try {
    return UTF8.decode(raw);
  } catch {
    throw new BadEntryError(
      raw.toString(),
      `its ${field} is not valid UTF-8: names that are not UTF-8 are not supported by the apply engine`,
    );
  }
}

function num(b: Buffer, field: string): number {
  if (b[0]! & 0x80) {
    // base-256: big-endian two's complement, first byte's top bit is the marker
    let v = BigInt(b[0]! & 0x7f);
    for (let i = 1; i < b.length; i++) v = (v << 8n) | BigInt(b[i]!);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new BadTarError(`${field} out of range`);
    return Number(v);
  }
  const s = cstr(b).trim();
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw new BadTarError(`${field} is not octal: ${JSON.stringify(s)}`);
  return parseInt(s, 8);
}

function parsePax(buf: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let i = 0;
  while (i < buf.length) {
    const sp = buf.indexOf(0x20, i);
    if (sp < 0) throw new BadTarError('malformed pax record');
    const len = Number(buf.subarray(i, sp).toString());
    if (!Number.isSafeInteger(len) || len <= sp - i || i + len > buf.length)
      throw new BadTarError('malformed pax record length');
    const rec = buf.subarray(sp + 1, i + len - 1); // without trailing newline
    const eq = rec.indexOf(0x3d);
    if (eq < 0) throw new BadTarError('pax record without =');
    out.set(rec.subarray(0, eq).toString(), Buffer.from(rec.subarray(eq + 1)));
    i += len;
  }
  return out;
}

function paxTimeNs(v: string): bigint {
  const m = /^(-?\d+)(?:\.(\d+))?$/.exec(v);
  if (!m) throw new BadTarError(`bad pax mtime ${JSON.stringify(v)}`);
  return BigInt(m[1]!) * 1_000_000_000n + BigInt((m[2] ?? '').slice(0, 9).padEnd(9, '0'));
}

/** LIBARCHIVE.xattr. keys are URL-encoded; a malformed escape is a bad tar. */
function decodeXattrKey(k: string): string {
  try {
    return decodeURIComponent(k);
  } catch {
    throw new BadTarError(`malformed LIBARCHIVE.xattr. name ${JSON.stringify(k.slice(0, 100))}`);
  }
}

const FLAG_TYPES: Record<string, EntryType> = {
  '0': 'reg',
  '\0': 'reg',
  '7': 'reg',
  '1': 'hardlink',
  '2': 'symlink',
  '3': 'char',
  '4': 'block',
  '5': 'dir',
  '6': 'fifo',
};

export async function* readTar(src: Readable | AsyncIterable<Buffer | Uint8Array>): AsyncGenerator<TarEntry> {
  const r = new ByteReader(src as AsyncIterable<Buffer>);
  let pax = new Map<string, Buffer>();
  let globalPax = new Map<string, Buffer>();
  let longName: string | null = null;
  let longLink: string | null = null;
  for (;;) {
    const h = await r.read(512);
    if (h.length === 0) return; // tolerate archives without the end blocks
    if (h.length < 512) throw new BadTarError('truncated header');
    if (h.every((b) => b === 0)) return;
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : h[i]!;
    if (sum !== num(h.subarray(148, 156), 'checksum')) throw new BadTarError('header checksum mismatch');
    const flag = String.fromCharCode(h[156]!);
    const size = num(h.subarray(124, 136), 'size');
    const padded = Math.ceil(size / 512) * 512;
    if (flag === 'x' || flag === 'g' || flag === 'L' || flag === 'K') {
      if (size > MAX_META) throw new BadTarError(`metadata entry of ${size} bytes is too large`);
      const data = await r.read(padded);
      if (data.length < padded) throw new BadTarError('truncated metadata entry');
      const body = data.subarray(0, size);
      if (flag === 'x') pax = parsePax(body);
      else if (flag === 'g') globalPax = parsePax(body);
      else if (flag === 'L') longName = nameOf(body);
      else longLink = nameOf(body, 'link target');
      continue;
    }
    if (flag === 'S') throw new BadTarError('GNU sparse entries are not supported');
    const all = new Map([...globalPax, ...pax]);
    if ([...all.keys()].some((k) => k.startsWith('GNU.sparse.')))
      throw new BadTarError('pax sparse entries are not supported');
    const magic = h.subarray(257, 263).toString();
    // The header's own fields only where no pax record or GNU long name replaces them (writers
    // put a lossy fallback there).
    const headerName = (): string => {
      const prefix = magic.startsWith('ustar') ? nameOf(h.subarray(345, 500)) : '';
      return prefix ? `${prefix}/${nameOf(h.subarray(0, 100))}` : nameOf(h.subarray(0, 100));
    };
    let name = all.has('path') ? '' : (longName ?? headerName());
    let linkname = all.has('linkpath') ? '' : (longLink ?? nameOf(h.subarray(157, 257), 'link target'));
    let realSize = size;
    let mtimeNs = BigInt(num(h.subarray(136, 148), 'mtime')) * 1_000_000_000n;
    let uid = num(h.subarray(108, 116), 'uid');
    let gid = num(h.subarray(116, 124), 'gid');
    const xattrs: Record<string, Buffer> = {};
    for (const [k, v] of all) {
      if (k === 'path') name = nameOf(v, 'name', false);
      else if (k === 'linkpath') linkname = nameOf(v, 'link target', false);
      else if (k === 'size') realSize = Number(v.toString());
      else if (k === 'mtime') mtimeNs = paxTimeNs(v.toString());
      else if (k === 'uid') uid = Number(v.toString());
      else if (k === 'gid') gid = Number(v.toString());
      else if (k.startsWith('SCHILY.xattr.')) xattrs[k.slice(13)] = v;
      else if (k.startsWith('LIBARCHIVE.xattr.'))
        xattrs[decodeXattrKey(k.slice(17))] = Buffer.from(v.toString(), 'base64');
    }
    // Names from image data: refused here, before anything is written (XATTR_INVALID).
    checkXattrs(name, xattrs);
    if (!Number.isSafeInteger(realSize) || realSize < 0 || !Number.isSafeInteger(uid) || !Number.isSafeInteger(gid))
      throw new BadTarError(`bad numbers in pax header of ${JSON.stringify(name)}`);
    pax = new Map();
    longName = null;
    longLink = null;
    const type: TarEntry['type'] = FLAG_TYPES[flag] ?? 'other';
    const dataSize =
      type === 'reg'
        ? realSize
        : flag === '1' || flag === '2' || flag === '5' || flag === '3' || flag === '4' || flag === '6'
          ? 0
          : realSize;
    const dataPadded = Math.ceil(dataSize / 512) * 512;
    let remaining = dataSize;
    async function* body(): AsyncGenerator<Buffer> {
      while (remaining > 0) {
        const b = await r.some(Math.min(remaining, 1 << 20));
        if (b.length === 0) throw new BadTarError(`truncated content of ${JSON.stringify(name)}`);
        remaining -= b.length;
        yield b;
      }
    }
    yield {
      name,
      type,
      flag,
      linkname,
      uid,
      gid,
      mtimeNs,
      xattrs,
      mode: num(h.subarray(100, 108), 'mode') & 0o7777,
      size: type === 'reg' ? realSize : 0,
      devmajor: num(h.subarray(329, 337), 'devmajor'),
      devminor: num(h.subarray(337, 345), 'devminor'),
      body,
    };
    // skip what the consumer did not read, and the padding
    while (remaining > 0) {
      const b = await r.some(Math.min(remaining, 1 << 20));
      if (b.length === 0) throw new BadTarError(`truncated content of ${JSON.stringify(name)}`);
      remaining -= b.length;
    }
    const pad = dataPadded - dataSize;
    if (pad > 0 && (await r.read(pad)).length < pad) throw new BadTarError('truncated padding');
    // a hardlink/symlink/dir with a size field > 0 carries data in some writers: skip it
    if (dataSize === 0 && size > 0 && type !== 'reg') {
      const extra = Math.ceil(size / 512) * 512;
      if ((await r.read(extra)).length < extra) throw new BadTarError('truncated entry data');
    }
  }
}
