/**
 * A zstd:chunked layer checked the way containers/storage checks it when it pulls one
 * (pkg/chunked: readZstdChunkedManifest, unmarshalToc, ensureTOCMatchesTarSplit,
 * ensureFileMetadataAttributesMatch, minimal.NewFileMetadata), plus what tiu promises beyond
 * that. Written apart from tiu's own readers on purpose: its own tar header parser with Go
 * archive/tar semantics, its own reading of the TOC JSON with jsoniter ConfigFastest semantics
 * (raw bytes in strings stay bytes, `\uXXXX` becomes UTF-8), its own CRC-64. Names are binary
 * strings (one char per byte), as Go strings are bytes.
 *
 * checkLayer() throws StorageCheckError at the first problem, as containers/storage stops:
 *   - annotations: TOC position, manifest-checksum of the compressed TOC, tar-split position;
 *     the TOC's tarSplitDigest of the compressed tar-split;
 *   - tar-split: JSON lines, positions in order, no file name twice (filepath.Clean), one tar
 *     header per segment (IterateHeaders);
 *   - every tar-split header has its TOC entry and vice versa, no name twice in the TOC, same
 *     type/name/linkname/mode/size/uid/gid/mtime/atime/ctime (zero or Unix 0 = absent)/
 *     devmajor/devminor/xattrs;
 *   - tiu: every regular file's TOC digest and size are those of its content frame(s), the
 *     tar-split reassembles the layer's tar byte for byte (the CRC-64 of every file too), and
 *     every entry's parent directories are in the same layer (a partial pull needs them).
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { zstdDecompressSync } from 'node:zlib';

export class StorageCheckError extends Error {
  override name = 'StorageCheckError';
}

const fail = (msg: string): never => {
  throw new StorageCheckError(msg);
};
const sha256 = (b: Uint8Array) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const bstr = (b: Uint8Array) => Buffer.from(b).toString('latin1');
const show = (s: string) => JSON.stringify(Buffer.from(s, 'latin1').toString('utf8'));

// ---- Go archive/tar, the parts a header uses ----

/** A tar header as Go's archive/tar Reader.Next returns it (times in ns, null when not set). */
export interface GoTarHeader {
  typeflag: number;
  name: string;
  linkname: string;
  mode: bigint;
  uid: bigint;
  gid: bigint;
  size: bigint;
  modTime: bigint;
  accessTime: bigint | null;
  changeTime: bigint | null;
  devmajor: bigint;
  devminor: bigint;
  paxRecords: Map<string, string>;
}

function cstring(b: Buffer): string {
  const nul = b.indexOf(0);
  return bstr(nul < 0 ? b : b.subarray(0, nul));
}

/** parseNumeric: base-256 when the top bit is set, else octal with spaces and NULs trimmed. */
function numeric(b: Buffer, what: string): bigint {
  if (b.length > 0 && b[0]! & 0x80) {
    const inv = b[0]! & 0x40 ? 0xff : 0;
    let x = 0n;
    for (let i = 0; i < b.length; i++) {
      let c = b[i]! ^ inv;
      if (i === 0) c &= 0x7f;
      if (x >> 56n > 0n) fail(`tar: ${what} overflows`);
      x = (x << 8n) | BigInt(c);
    }
    if (x >> 63n > 0n) fail(`tar: ${what} overflows`);
    return inv === 0xff ? -x - 1n : x;
  }
  const s = bstr(b).replace(/^[ \0]+|[ \0]+$/g, '');
  if (s === '') return 0n;
  if (!/^[0-7]+$/.test(s)) fail(`tar: ${what} ${JSON.stringify(s)} is not octal`);
  return BigInt('0o' + s);
}

/** Go's parsePAXTime: seconds, optionally '.' and up to nanosecond digits (more are cut). */
function paxTime(v: string): bigint {
  const m = /^(-?)(\d+)(?:\.(\d*))?$/.exec(v);
  if (!m) return fail(`tar: PAX time ${JSON.stringify(v)} is invalid`);
  const secs = BigInt(m[2]!);
  const nsec = BigInt((m[3] ?? '').slice(0, 9).padEnd(9, '0'));
  return m[1] === '-' ? -(secs * 1_000_000_000n) - nsec : secs * 1_000_000_000n + nsec;
}

function parsePax(data: Buffer): Map<string, string> {
  const out = new Map<string, string>();
  let s = bstr(data);
  while (s.length > 0) {
    const sp = s.indexOf(' ');
    const len = sp > 0 ? Number(s.slice(0, sp)) : NaN;
    if (!Number.isInteger(len) || len <= sp + 1 || len > s.length || s[len - 1] !== '\n')
      fail('tar: invalid PAX record');
    const rec = s.slice(sp + 1, len - 1);
    s = s.slice(len);
    const eq = rec.indexOf('=');
    if (eq < 0) fail('tar: PAX record without "="');
    const k = rec.slice(0, eq);
    const v = rec.slice(eq + 1);
    const nulForbidden = ['path', 'linkpath', 'uname', 'gname'].includes(k);
    if (k === '' || k.includes('\0') || (nulForbidden && v.includes('\0'))) fail(`tar: invalid PAX record ${k}`);
    out.set(k, v);
  }
  return out;
}

const BLOCK = 512;
const pad = (n: number) => (BLOCK - (n % BLOCK)) % BLOCK;

/**
 * The first header of `data` as Go's tar.Reader.Next returns it (PAX and GNU long-name headers
 * folded in), null at the end-of-archive blocks; `end` is where its content starts.
 */
export function readGoTarHeader(data: Buffer): { hdr: GoTarHeader; end: number } | null {
  let off = 0;
  let pax = new Map<string, string>();
  let longName: string | undefined;
  let longLink: string | undefined;
  for (;;) {
    // io.ReadFull: nothing left is io.EOF (the end), part of a block is not
    if (off === data.length && pax.size === 0 && longName === undefined && longLink === undefined) return null;
    if (off + BLOCK > data.length) return fail('tar: unexpected end of header data');
    const blk = data.subarray(off, off + BLOCK);
    off += BLOCK;
    if (blk.every((b) => b === 0)) {
      const next = data.subarray(off, off + BLOCK);
      if (next.length === 0 || (next.length === BLOCK && next.every((b) => b === 0))) return null;
      return fail('tar: a zero block that is not the end of the archive');
    }
    const want = numeric(blk.subarray(148, 156), 'checksum');
    let unsigned = 0n;
    let signed = 0n;
    for (let i = 0; i < BLOCK; i++) {
      const c = i >= 148 && i < 156 ? 0x20 : blk[i]!;
      unsigned += BigInt(c);
      signed += BigInt(c < 128 ? c : c - 256);
    }
    if (want !== unsigned && want !== signed) fail('tar: header checksum mismatch');
    const magic = bstr(blk.subarray(257, 263));
    const version = bstr(blk.subarray(263, 265));
    const ustar = magic === 'ustar\0' && version === '00';
    const star = ustar && bstr(blk.subarray(508, 512)) === 'tar\0';
    const gnu = magic === 'ustar ' && version === ' \0';
    const typeflag = blk[156]!;
    const size = numeric(blk.subarray(124, 136), 'size');
    const hdr: GoTarHeader = {
      typeflag,
      name: cstring(blk.subarray(0, 100)),
      linkname: cstring(blk.subarray(157, 257)),
      mode: numeric(blk.subarray(100, 108), 'mode'),
      uid: numeric(blk.subarray(108, 116), 'uid'),
      gid: numeric(blk.subarray(116, 124), 'gid'),
      size,
      modTime: numeric(blk.subarray(136, 148), 'mtime') * 1_000_000_000n,
      accessTime: null,
      changeTime: null,
      devmajor: 0n,
      devminor: 0n,
      paxRecords: new Map(),
    };
    if (ustar || gnu) {
      hdr.devmajor = numeric(blk.subarray(329, 337), 'devmajor');
      hdr.devminor = numeric(blk.subarray(337, 345), 'devminor');
    }
    let prefix = '';
    if (star) {
      prefix = cstring(blk.subarray(345, 476));
      hdr.accessTime = numeric(blk.subarray(476, 488), 'atime') * 1_000_000_000n;
      hdr.changeTime = numeric(blk.subarray(488, 500), 'ctime') * 1_000_000_000n;
    } else if (ustar) prefix = cstring(blk.subarray(345, 500));
    else if (gnu) {
      if (blk[345] !== 0) hdr.accessTime = numeric(blk.subarray(345, 357), 'atime') * 1_000_000_000n;
      if (blk[357] !== 0) hdr.changeTime = numeric(blk.subarray(357, 369), 'ctime') * 1_000_000_000n;
    }
    if (prefix !== '') hdr.name = prefix + '/' + hdr.name;
    const ch = String.fromCharCode(typeflag);
    if (ch === 'x' || ch === 'g' || ch === 'L' || ch === 'K') {
      const n = Number(size);
      if (off + n > data.length) fail('tar: extension header data cut short');
      const body = data.subarray(off, off + n);
      off += n + pad(n);
      if (ch === 'x') pax = parsePax(body);
      else if (ch === 'g') fail('tar: a global PAX header (tiu writes none)');
      else if (ch === 'L') longName = cstring(body);
      else longLink = cstring(body);
      continue;
    }
    // mergePAX: an empty value keeps the header's field
    for (const [k, v] of pax) {
      if (v === '') continue;
      if (k === 'path') hdr.name = v;
      else if (k === 'linkpath') hdr.linkname = v;
      else if (k === 'uid' || k === 'gid' || k === 'size') {
        if (!/^[+-]?\d+$/.test(v)) fail(`tar: PAX ${k} ${JSON.stringify(v)} is not a number`);
        hdr[k] = BigInt(v);
      } else if (k === 'mtime') hdr.modTime = paxTime(v);
      else if (k === 'atime') hdr.accessTime = paxTime(v);
      else if (k === 'ctime') hdr.changeTime = paxTime(v);
    }
    hdr.paxRecords = pax;
    if (longName !== undefined) hdr.name = longName;
    if (longLink !== undefined) hdr.linkname = longLink;
    if (hdr.typeflag === 0) hdr.typeflag = (hdr.name.endsWith('/') ? '5' : '0').charCodeAt(0);
    return { hdr, end: off };
  }
}

// ---- jsoniter ConfigFastest, the parts unmarshalToc uses ----

type JsonValue = string | number | boolean | null | JsonValue[] | JsonObject;
/** Fields in document order; keys as raw bytes (ObjectFieldMustBeSimpleString: not unescaped). */
interface JsonObject {
  fields: [string, JsonValue][];
}

function appendRune(out: number[], r: number): void {
  if (r >= 0xd800 && r <= 0xdfff) r = 0xfffd;
  out.push(...Buffer.from(String.fromCodePoint(r), 'utf8'));
}

export function parseJsonBytes(data: Buffer): JsonValue {
  let i = 0;
  const ws = () => {
    while (i < data.length && (data[i] === 0x20 || data[i] === 0x0a || data[i] === 0x0d || data[i] === 0x09)) i++;
  };
  const u4 = (): number => {
    const h = bstr(data.subarray(i, i + 4));
    if (!/^[0-9a-fA-F]{4}$/.test(h)) fail('TOC JSON: bad \\u escape');
    i += 4;
    return parseInt(h, 16);
  };
  const rawKey = (): string => {
    if (data[i] !== 0x22) fail(`TOC JSON: expected a key at ${i}`);
    const end = data.indexOf(0x22, i + 1);
    if (end < 0) fail('TOC JSON: unterminated key');
    const k = bstr(data.subarray(i + 1, end));
    i = end + 1;
    return k;
  };
  const str = (): string => {
    i++; // opening quote
    const out: number[] = [];
    for (;;) {
      if (i >= data.length) fail('TOC JSON: unterminated string');
      const c = data[i++]!;
      if (c === 0x22) break;
      if (c !== 0x5c) {
        out.push(c); // raw bytes stay bytes, valid UTF-8 or not
        continue;
      }
      const e = String.fromCharCode(data[i++]!);
      const simple: Record<string, number> = { '"': 0x22, '\\': 0x5c, '/': 0x2f, b: 8, f: 12, n: 10, r: 13, t: 9 };
      if (e in simple) out.push(simple[e]!);
      else if (e === 'u') {
        const r = u4();
        if (r >= 0xd800 && r < 0xdc00 && data[i] === 0x5c && data[i + 1] === 0x75) {
          i += 2;
          const r2 = u4();
          if (r2 >= 0xdc00 && r2 <= 0xdfff) appendRune(out, 0x10000 + ((r - 0xd800) << 10) + (r2 - 0xdc00));
          else {
            appendRune(out, r);
            appendRune(out, r2);
          }
        } else appendRune(out, r);
      } else fail(`TOC JSON: invalid escape \\${e}`);
    }
    return Buffer.from(out).toString('latin1');
  };
  const value = (): JsonValue => {
    ws();
    const c = data[i];
    if (c === 0x22) return str();
    if (c === 0x7b) {
      i++;
      const o: JsonObject = { fields: [] };
      ws();
      if (data[i] === 0x7d) {
        i++;
        return o;
      }
      for (;;) {
        ws();
        const k = rawKey();
        ws();
        if (data[i++] !== 0x3a) fail('TOC JSON: expected ":"');
        o.fields.push([k, value()]);
        ws();
        const d = data[i++];
        if (d === 0x7d) return o;
        if (d !== 0x2c) fail('TOC JSON: expected "," or "}"');
      }
    }
    if (c === 0x5b) {
      i++;
      const a: JsonValue[] = [];
      ws();
      if (data[i] === 0x5d) {
        i++;
        return a;
      }
      for (;;) {
        a.push(value());
        ws();
        const d = data[i++];
        if (d === 0x5d) return a;
        if (d !== 0x2c) fail('TOC JSON: expected "," or "]"');
      }
    }
    const m = /^(?:-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null)/.exec(bstr(data.subarray(i, i + 40)));
    if (!m) return fail(`TOC JSON: unexpected byte at ${i}`);
    i += m[0].length;
    return m[0] === 'true' ? true : m[0] === 'false' ? false : m[0] === 'null' ? null : Number(m[0]);
  };
  const v = value();
  ws();
  if (i !== data.length) fail('unexpected data after manifest');
  return v;
}

/** minimal.FileMetadata as unmarshalToc fills it (times in ns, null when absent). */
export interface GoFileMetadata {
  type: string;
  name: string;
  linkname: string;
  mode: bigint;
  size: bigint;
  uid: bigint;
  gid: bigint;
  modTime: bigint | null;
  accessTime: bigint | null;
  changeTime: bigint | null;
  devmajor: bigint;
  devminor: bigint;
  xattrs: Map<string, string>;
  digest: string;
  offset: number;
  endOffset: number;
}

/** Days from 1970-01-01 to a proleptic Gregorian date (any year, unlike Date.UTC). */
function daysFromCivil(y: number, m: number, d: number): number {
  const yy = m <= 2 ? y - 1 : y;
  const era = Math.floor(yy / 400);
  const yoe = yy - era * 400;
  const doy = Math.floor((153 * (m + (m > 2 ? -3 : 9)) + 2) / 5) + d - 1;
  const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy;
  return era * 146097 + doe - 719468;
}

/** time.Parse(time.RFC3339, s) in ns since the epoch; Go's zero time (year 1) is null. */
export function parseRfc3339(s: string): bigint | null {
  const m = /^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:[.,](\d+))?(Z|([+-])(\d\d):(\d\d))$/.exec(s);
  if (!m) return fail(`parsing time ${JSON.stringify(s)} as RFC 3339`);
  const [y, mo, d, h, mi, se] = m.slice(1, 7).map(Number) as [number, number, number, number, number, number];
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || se > 59)
    fail(`time ${JSON.stringify(s)} out of range`);
  const zone = m[8] === 'Z' ? 0 : (m[9] === '-' ? -1 : 1) * (Number(m[10]) * 3600 + Number(m[11]) * 60);
  const secs = BigInt(daysFromCivil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se - zone);
  const ns = secs * 1_000_000_000n + BigInt((m[7] ?? '').slice(0, 9).padEnd(9, '0'));
  return y === 1 && mo === 1 && d === 1 && ns === BigInt(daysFromCivil(1, 1, 1) * 86400) * 1_000_000_000n ? null : ns;
}

const EMPTY_DIGEST = sha256(Buffer.alloc(0));

function int(v: JsonValue, what: string): bigint {
  if (typeof v !== 'number' || !Number.isInteger(v)) return fail(`TOC: ${what} is not an integer`);
  return BigInt(v);
}
function text(v: JsonValue, what: string): string {
  if (typeof v !== 'string') return fail(`TOC: ${what} is not a string`);
  return v;
}

/** unmarshalToc: field names matched lower-cased, unknown fields skipped. */
export function unmarshalToc(json: Buffer): { entries: GoFileMetadata[]; tarSplitDigest: string } {
  const top = parseJsonBytes(json);
  if (!top || typeof top !== 'object' || !('fields' in top)) return fail('TOC: not an object');
  const toc = { entries: [] as GoFileMetadata[], tarSplitDigest: '' };
  for (const [k, v] of top.fields) {
    const key = k.toLowerCase();
    if (key === 'tarsplitdigest') {
      toc.tarSplitDigest = text(v, 'tarSplitDigest');
      if (!/^sha256:[0-9a-f]{64}$/.test(toc.tarSplitDigest)) fail('TOC: invalid tarSplitDigest');
    } else if (key === 'entries') {
      if (!Array.isArray(v)) return fail('TOC: entries is not an array');
      for (const raw of v) {
        if (!raw || typeof raw !== 'object' || !('fields' in raw)) return fail('TOC: an entry is not an object');
        const m: GoFileMetadata = {
          type: '',
          name: '',
          linkname: '',
          mode: 0n,
          size: 0n,
          uid: 0n,
          gid: 0n,
          modTime: null,
          accessTime: null,
          changeTime: null,
          devmajor: 0n,
          devminor: 0n,
          xattrs: new Map(),
          digest: '',
          offset: 0,
          endOffset: 0,
        };
        for (const [fk, fv] of raw.fields) {
          const f = fk.toLowerCase();
          if (f === 'type') m.type = text(fv, 'type');
          else if (f === 'name') m.name = text(fv, 'name');
          else if (f === 'linkname') m.linkname = text(fv, 'linkName');
          else if (f === 'mode') m.mode = int(fv, 'mode');
          else if (f === 'size') m.size = int(fv, 'size');
          else if (f === 'uid') m.uid = int(fv, 'uid');
          else if (f === 'gid') m.gid = int(fv, 'gid');
          else if (f === 'modtime') m.modTime = parseRfc3339(text(fv, 'modtime'));
          else if (f === 'accesstime') m.accessTime = parseRfc3339(text(fv, 'accesstime'));
          else if (f === 'changetime') m.changeTime = parseRfc3339(text(fv, 'changetime'));
          else if (f === 'devmajor') m.devmajor = int(fv, 'devMajor');
          else if (f === 'devminor') m.devminor = int(fv, 'devMinor');
          else if (f === 'digest') m.digest = text(fv, 'digest');
          else if (f === 'offset') m.offset = Number(int(fv, 'offset'));
          else if (f === 'endoffset') m.endOffset = Number(int(fv, 'endOffset'));
          else if (f === 'xattrs') {
            if (!fv || typeof fv !== 'object' || !('fields' in fv)) return fail('TOC: xattrs is not an object');
            m.xattrs = new Map(fv.fields.map(([xk, xv]) => [xk, text(xv, `xattr ${xk}`)]));
          }
        }
        if (m.type === 'reg' && m.size === 0n && m.digest === '') m.digest = EMPTY_DIGEST;
        toc.entries.push(m);
      }
    }
  }
  return toc;
}

/**
 * All zstd frames of `data`, skippable ones skipped, as `zstd -dc` gives them (node's one-shot
 * zstdDecompressSync stops after the first frame).
 */
function unzstdAll(data: Buffer): Buffer {
  const r = spawnSync('zstd', ['-dc'], { input: data, maxBuffer: 1 << 30 });
  if (r.status !== 0) fail(`zstd -dc: ${r.stderr.toString().trim()}`);
  return r.stdout;
}

// ---- containers/storage's comparison ----

const TAR_TYPES: Record<string, string> = {
  '0': 'reg',
  '\0': 'reg',
  '1': 'hardlink',
  '2': 'symlink',
  '3': 'char',
  '4': 'block',
  '5': 'dir',
  '6': 'fifo',
};

/** minimal.NewFileMetadata: what the TOC entry of a tar header must say. */
export function newFileMetadata(hdr: GoTarHeader): GoFileMetadata {
  const type = TAR_TYPES[String.fromCharCode(hdr.typeflag)];
  if (!type) return fail(`unknown tarball type: ${hdr.typeflag}`);
  const xattrs = new Map<string, string>();
  for (const [k, v] of hdr.paxRecords)
    if (k.startsWith('SCHILY.xattr.'))
      xattrs.set(k.slice('SCHILY.xattr.'.length), Buffer.from(v, 'latin1').toString('base64'));
  return {
    type,
    name: hdr.name,
    linkname: hdr.linkname,
    mode: hdr.mode,
    size: hdr.size,
    uid: hdr.uid,
    gid: hdr.gid,
    modTime: hdr.modTime,
    accessTime: hdr.accessTime,
    changeTime: hdr.changeTime,
    devmajor: hdr.devmajor,
    devminor: hdr.devminor,
    xattrs,
    digest: '',
    offset: 0,
    endOffset: 0,
  };
}

/** ensureTimePointersMatch: absent, Go's zero time and Unix 0 are the same. */
function sameTime(a: bigint | null, b: bigint | null): boolean {
  const norm = (t: bigint | null) => (t === 0n ? null : t);
  return norm(a) === norm(b);
}

/** ensureFileMetadataAttributesMatch (TOC entry `a`, from the tar header `b`). */
export function ensureFileMetadataAttributesMatch(a: GoFileMetadata, b: GoFileMetadata): void {
  const scalar = ['type', 'name', 'linkname', 'mode', 'size', 'uid', 'gid'] as const;
  for (const f of scalar)
    if (a[f] !== b[f]) fail(`mismatch of ${f}: ${show(String(a[f]))} != ${show(String(b[f]))} (${show(b.name)})`);
  for (const f of ['modTime', 'accessTime', 'changeTime'] as const)
    if (!sameTime(a[f], b[f])) fail(`mismatch of ${f}: ${a[f]} != ${b[f]} (${show(b.name)})`);
  for (const f of ['devmajor', 'devminor'] as const) if (a[f] !== b[f]) fail(`mismatch of ${f} (${show(b.name)})`);
  const sameXattrs = a.xattrs.size === b.xattrs.size && [...a.xattrs].every(([k, v]) => b.xattrs.get(k) === v);
  if (!sameXattrs) fail(`mismatch of xattrs (${show(b.name)})`);
}

/** Go's filepath.Clean, for tar-split's duplicate check. */
function cleanPath(p: string): string {
  const abs = p.startsWith('/');
  const out: string[] = [];
  for (const c of p.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') {
      if (out.length && out.at(-1) !== '..') out.pop();
      else if (!abs) out.push('..');
    } else out.push(c);
  }
  const s = (abs ? '/' : '') + out.join('/');
  return s === '' ? '.' : s;
}

// CRC-64/ISO (Go's hash/crc64 with crc64.ISO), reflected, table-driven on BigInt: test sizes only.
const CRC_TABLE = Array.from({ length: 256 }, (_, i) => {
  let c = BigInt(i);
  for (let k = 0; k < 8; k++) c = c & 1n ? (c >> 1n) ^ 0xd800000000000000n : c >> 1n;
  return c;
});
function crc64(b: Buffer): Buffer {
  let c = 0xffffffffffffffffn;
  for (const x of b) c = CRC_TABLE[Number((c ^ BigInt(x)) & 0xffn)]! ^ (c >> 8n);
  const out = Buffer.alloc(8);
  out.writeBigUInt64BE(c ^ 0xffffffffffffffffn);
  return out;
}

interface TarSplitEntry {
  type: number;
  name: string;
  size: number;
  payload: Buffer;
}

function readTarSplit(data: Buffer): TarSplitEntry[] {
  const out: TarSplitEntry[] = [];
  const seen = new Set<string>();
  const lines = data.toString('utf8').split('\n');
  if (lines.at(-1) === '') lines.pop();
  for (const [pos, line] of lines.entries()) {
    // encoding/json, as the tar-split unpacker reads it
    const e = JSON.parse(line) as {
      type?: number;
      name?: string;
      name_raw?: string;
      size?: number;
      payload?: string | null;
      position?: number;
    };
    if (e.position !== pos) fail(`tar-split: entry ${pos} has position ${e.position}`);
    const name =
      e.name_raw !== undefined
        ? bstr(Buffer.from(e.name_raw, 'base64'))
        : Buffer.from(e.name ?? '', 'utf8').toString('latin1');
    if (e.type === 1) {
      const clean = cleanPath(name);
      if (seen.has(clean)) fail(`tar-split: duplicates of file paths not supported (${show(name)})`);
      seen.add(clean);
    } else if (e.type !== 2) fail(`unexpected tar-split entry type ${e.type}`);
    out.push({ type: e.type ?? 0, name, size: e.size ?? 0, payload: Buffer.from(e.payload ?? '', 'base64') });
  }
  return out;
}

/** asm.IterateHeaders: one tar header per segment, after the previous file's padding. */
function iterateHeaders(entries: readonly TarSplitEntry[], handler: (hdr: GoTarHeader) => void): void {
  let pendingPadding = 0;
  for (const e of entries) {
    if (e.type !== 2) continue;
    if (e.payload.length < pendingPadding)
      fail(
        `expected ${pendingPadding} bytes of padding after previous file, but next SegmentType only has ${e.payload.length} bytes`,
      );
    const got = readGoTarHeader(e.payload.subarray(pendingPadding));
    pendingPadding = 0;
    if (!got) continue;
    handler(got.hdr);
    const t = String.fromCharCode(got.hdr.typeflag);
    const body = ['1', '2', '3', '4', '5', '6'].includes(t) ? 0 : Number(got.hdr.size);
    pendingPadding = pad(body);
  }
}

/** ensureTOCMatchesTarSplit. */
export function ensureTOCMatchesTarSplit(toc: readonly GoFileMetadata[], tarSplit: readonly TarSplitEntry[]): void {
  const pending = new Map<string, GoFileMetadata>();
  for (const e of toc) {
    if (e.type === 'chunk') continue;
    if (pending.has(e.name)) fail(`TOC contains duplicate entries for path ${show(e.name)}`);
    pending.set(e.name, e);
  }
  iterateHeaders(tarSplit, (hdr) => {
    const e = pending.get(hdr.name);
    if (!e) return fail(`tar-split contains an entry for ${show(hdr.name)} missing in TOC`);
    pending.delete(hdr.name);
    ensureFileMetadataAttributesMatch(e, newFileMetadata(hdr));
  });
  if (pending.size)
    fail(
      `TOC contains entries not present in tar-split, incl. ${[...pending.keys()].slice(0, 5).map(show).join(', ')}`,
    );
}

function skippableFrameAt(blob: Buffer, offset: number, length: number, what: string): Buffer {
  if (offset < 8 || offset + length > blob.length) fail(`${what} position is outside the blob`);
  if (blob.readUInt32LE(offset - 8) !== 0x184d2a50 || blob.readUInt32LE(offset - 4) !== length)
    fail(`${what} is not in a skippable frame`);
  return blob.subarray(offset, offset + length);
}

export interface CheckedLayer {
  entries: GoFileMetadata[];
  /** sha256 of the uncompressed tar: the layer's diff_id. */
  diffId: string;
}

/** Check one zstd:chunked layer blob with its descriptor annotations; throws StorageCheckError. */
export function checkLayer(blob: Buffer, annotations: Record<string, string> = {}): CheckedLayer {
  const pos = annotations['io.github.containers.zstd-chunked.manifest-position'];
  const checksum = annotations['io.github.containers.zstd-chunked.manifest-checksum'];
  const splitPos = annotations['io.github.containers.zstd-chunked.tarsplit-position'];
  if (!pos || !checksum || !splitPos) return fail('zstd:chunked annotations missing');
  const [tocOff, tocLen, tocUlen, type] = pos.split(':').map(Number) as [number, number, number, number];
  if (type !== 1) fail(`manifest type ${type} is not 1`);
  const tocFrame = skippableFrameAt(blob, tocOff, tocLen, 'TOC');
  if (sha256(tocFrame) !== checksum) fail('TOC digest does not match the manifest-checksum annotation');
  const tocJson = zstdDecompressSync(tocFrame);
  if (tocJson.length !== tocUlen) fail('TOC uncompressed length differs from the annotation');
  const toc = unmarshalToc(tocJson);
  const [splitOff, splitLen, splitUlen] = splitPos.split(':').map(Number) as [number, number, number];
  const splitFrame = skippableFrameAt(blob, splitOff, splitLen, 'tar-split');
  if (sha256(splitFrame) !== toc.tarSplitDigest) fail("tar-split digest differs from the TOC's tarSplitDigest");
  const splitData = zstdDecompressSync(splitFrame);
  if (splitData.length !== splitUlen) fail('tar-split uncompressed length differs from the annotation');
  const split = readTarSplit(splitData);

  ensureTOCMatchesTarSplit(toc.entries, split);

  // tiu: every regular file's digest and size are its content frame(s).
  const content = new Map<string, Buffer>();
  for (const [i, e] of toc.entries.entries()) {
    if (e.type !== 'reg' || e.size === 0n) continue;
    let end = e.endOffset;
    for (let k = i + 1; toc.entries[k]?.type === 'chunk'; k++) end = toc.entries[k]!.endOffset;
    if (!(e.offset > 0 && end > e.offset && end <= blob.length)) fail(`${show(e.name)}: no content frame`);
    const data = unzstdAll(blob.subarray(e.offset, end));
    if (BigInt(data.length) !== e.size) fail(`${show(e.name)}: frame holds ${data.length} bytes, TOC says ${e.size}`);
    if (sha256(data) !== e.digest) fail(`${show(e.name)}: TOC digest is not the sha256 of its content frame`);
    content.set(e.name, data);
  }

  // tiu: the tar-split gives back the layer's tar byte for byte.
  const parts: Buffer[] = [];
  for (const s of split) {
    if (s.type === 2) {
      parts.push(s.payload);
      continue;
    }
    const data = s.size > 0 ? content.get(s.name) : Buffer.alloc(0);
    if (!data || data.length !== s.size) return fail(`tar-split file ${show(s.name)} has no matching content`);
    if (s.size > 0 && !crc64(data).equals(s.payload)) fail(`tar-split CRC-64 of ${show(s.name)} differs`);
    parts.push(data);
  }
  const rebuilt = Buffer.concat(parts);
  const tar = unzstdAll(blob);
  if (!rebuilt.equals(tar)) fail('the tar-split does not reassemble the layer tar');

  // tiu: a layer pulled on its own has the parent directories of every entry.
  const dirs = new Set(toc.entries.filter((e) => e.type === 'dir').map((e) => cleanPath(e.name)));
  for (const e of toc.entries) {
    const parts2 = cleanPath(e.name).split('/');
    for (let k = 1; k < parts2.length; k++) {
      const parent = parts2.slice(0, k).join('/');
      if (!dirs.has(parent)) fail(`${show(e.name)}: parent directory ${show(parent)} is not in the layer`);
    }
  }
  return { entries: toc.entries, diffId: sha256(tar) };
}
