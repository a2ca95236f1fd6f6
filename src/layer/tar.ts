/**
 * The tar format, both ways, byte-exact: tiu writes its own headers so names with any bytes,
 * binary xattr values (security.capability) and large numbers come through unchanged, and
 * reads tars with the same care: the one reader for the build's tar sources (kiwi archives,
 * image layers) and the device's whole-layer path. POSIX pax (ustar + 'x' records) out;
 * ustar, pax (SCHILY.xattr.*, LIBARCHIVE.xattr.*) and GNU long names in. Names stay binary
 * strings; whatever is not understood is refused (TAR_INVALID, TAR_ENTRY_UNSUPPORTED), never
 * guessed.
 *
 * Writer conventions: ustar fields whenever a value fits (raw bytes, as GNU tar and Go read
 * them), a pax record only where needed (long or non-ASCII-unsafe names, big numbers,
 * sub-second mtimes, xattrs as SCHILY.xattr.*), `hdrcharset=BINARY` when a pax name is not
 * UTF-8. uname/gname stay empty so every reader uses the numeric owners.
 */
import { LayerFormatError } from './errors.ts';
import { normalizeLinkTarget } from './paths.ts';
import { bbuf, bstr, isUtf8, mtimeParts, showPath, sortedXattrs, type EntryType, type TreeEntry } from './entry.ts';

export const BLOCK = 512;
export const END_OF_ARCHIVE = Buffer.alloc(2 * BLOCK);

const TYPEFLAG: Record<EntryType, string> = {
  reg: '0',
  hardlink: '1',
  symlink: '2',
  char: '3',
  block: '4',
  dir: '5',
  fifo: '6',
};

export function paddingFor(size: number): number {
  return (BLOCK - (size % BLOCK)) % BLOCK;
}

function octal(buf: Buffer, off: number, len: number, value: number): boolean {
  const s = value.toString(8);
  if (value < 0 || !Number.isSafeInteger(value) || s.length > len - 1) return false;
  buf.write(s.padStart(len - 1, '0'), off, 'ascii');
  buf[off + len - 1] = 0;
  return true;
}

const EMPTY = Buffer.alloc(0);

function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`, 'utf8'), value, Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len), 'ascii'), body]);
}

/**
 * Split a name (binary string) into ustar prefix (<=155 bytes) and name (<=100) at a '/', or
 * undefined. Binary strings are one char per byte, so char positions are byte positions.
 */
function splitUstar(name: string): [string, string] | undefined {
  if (name.length <= 100) return ['', name];
  for (let i = Math.min(name.length - 1, 155); i > 0; i--) {
    if (name.charCodeAt(i) === 0x2f && name.length - i - 1 <= 100 && name.length - i - 1 > 0)
      return [name.slice(0, i), name.slice(i + 1)];
  }
  return undefined;
}

/**
 * The ustar block. Names are binary strings written as latin1, which gives back each char's
 * byte: no Buffer is made for a header (46,000 in the larger bench tree; small Buffers come from
 * Node's shared 64 KiB slabs, which outlive young collections and wait for a full one).
 */
function rawHeader(
  fields: {
    name: string;
    prefix?: string;
    mode: number;
    uid: number;
    gid: number;
    size: number;
    mtime: number;
    typeflag: string;
    linkname?: string;
    devMajor?: number;
    devMinor?: number;
  },
  into: Buffer = Buffer.alloc(BLOCK),
  at = 0,
): Buffer {
  // The block is written in place (a view of `into` at `at`), whatever `into` held before.
  const h = into.subarray(at, at + BLOCK).fill(0);
  h.write(fields.name, 0, 100, 'latin1');
  octal(h, 100, 8, fields.mode);
  octal(h, 108, 8, fields.uid);
  octal(h, 116, 8, fields.gid);
  octal(h, 124, 12, fields.size);
  octal(h, 136, 12, fields.mtime);
  h.write(fields.typeflag, 156, 'ascii');
  if (fields.linkname !== undefined) h.write(fields.linkname, 157, 100, 'latin1');
  h.write('ustar\x0000', 257, 'latin1');
  if (fields.devMajor !== undefined) octal(h, 329, 8, fields.devMajor);
  if (fields.devMinor !== undefined) octal(h, 337, 8, fields.devMinor);
  if (fields.prefix !== undefined) h.write(fields.prefix, 345, 155, 'latin1');
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += h[i]!;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'ascii');
  return h;
}

/**
 * The header block(s) of one entry: an optional pax 'x' header with its records, then the
 * ustar header. Content and its padding follow separately.
 */
export function encodeHeader(e: TreeEntry): Buffer {
  const h = headerOf(e);
  const out = Buffer.allocUnsafe(headerLength(h));
  writeHeader(h, out, 0);
  return out;
}

/** An entry's header, encoded but for its ustar block (headerOf, then headerLength and writeHeader). */
export interface PreparedHeader {
  /** The pax header block, records and padding, when the entry needs them (rare); else empty. */
  readonly pax: Buffer;
  readonly ustar: Parameters<typeof rawHeader>[0];
}

/** The bytes writeHeader writes. */
export function headerLength(h: PreparedHeader): number {
  return h.pax.length + BLOCK;
}

/**
 * Write the header block(s) into `into` at `at` (headerLength(h) bytes must fit); returns the
 * end. A layer writer puts headers straight into its frame's buffer, no Buffer made for one.
 */
export function writeHeader(h: PreparedHeader, into: Buffer, at: number): number {
  at += h.pax.copy(into, at);
  rawHeader(h.ustar, into, at);
  return at + BLOCK;
}

/** What encodeHeader writes, all but the ustar block (whose fields are small) prepared. */
export function headerOf(e: TreeEntry): PreparedHeader {
  const records: [string, Buffer][] = [];
  const name = e.type === 'dir' ? e.path + '/' : e.path;
  let binaryName = false;
  const split = splitUstar(name);
  if (!split) {
    records.push(['path', bbuf(name)]);
    if (!isUtf8(name)) binaryName = true;
  }
  const link = e.linkname;
  if (link !== undefined && link.length > 100) {
    records.push(['linkpath', bbuf(link)]);
    if (!isUtf8(link)) binaryName = true;
  }
  if (binaryName) records.push(['hdrcharset', Buffer.from('BINARY')]);
  const small = (v: number, digits: number) => v >= 0 && Number.isSafeInteger(v) && v.toString(8).length <= digits;
  if (!small(e.uid, 7)) records.push(['uid', Buffer.from(String(e.uid))]);
  if (!small(e.gid, 7)) records.push(['gid', Buffer.from(String(e.gid))]);
  const size = e.type === 'reg' ? e.size : 0;
  if (!small(size, 11)) records.push(['size', Buffer.from(String(size))]);
  const { sec: mtime, nsec: mtimeNsec } = mtimeParts(e.mtimeNs);
  if (mtimeNsec !== 0 || !small(mtime, 11)) {
    const frac = mtimeNsec !== 0 ? '.' + String(mtimeNsec).padStart(9, '0').replace(/0+$/, '') : '';
    // pax spells negative times as -sec.frac meaning -(sec+frac); keep it exact for mtime>=0,
    // and for negative seconds with a fraction express the value the same way.
    const t =
      mtime < 0 && mtimeNsec !== 0
        ? `-${-mtime - 1}.${String(1e9 - mtimeNsec)
            .padStart(9, '0')
            .replace(/0+$/, '')}`
        : `${mtime}${frac}`;
    records.push(['mtime', Buffer.from(t)]);
  }
  for (const [k, v] of sortedXattrs(e.xattrs)) records.push([`SCHILY.xattr.${k}`, v]);

  let pax = EMPTY;
  if (records.length > 0) {
    records.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    const body = Buffer.concat(records.map(([k, v]) => paxRecord(k, v)));
    const base = name.slice(name.lastIndexOf('/', name.length - 2) + 1);
    const paxName = ('PaxHeaders/' + base).slice(0, 100);
    pax = Buffer.concat([
      rawHeader({ name: paxName, mode: 0o644, uid: 0, gid: 0, size: body.length, mtime: 0, typeflag: 'x' }),
      body,
      Buffer.alloc(paddingFor(body.length)),
    ]);
  }
  const [prefix, ustarName] = split ?? ['', name.slice(0, 100)];
  return {
    pax,
    ustar: {
      name: ustarName,
      prefix,
      mode: e.mode & 0o7777,
      uid: small(e.uid, 7) ? e.uid : 0,
      gid: small(e.gid, 7) ? e.gid : 0,
      size: small(size, 11) ? size : 0,
      mtime: small(mtime, 11) ? mtime : 0,
      typeflag: TYPEFLAG[e.type],
      linkname: link !== undefined && link.length <= 100 ? link : undefined,
      devMajor: e.type === 'char' || e.type === 'block' ? (e.devmajor ?? 0) : undefined,
      devMinor: e.type === 'char' || e.type === 'block' ? (e.devminor ?? 0) : undefined,
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Reading

/** One member as read from a tar: the header facts, with names still raw (binary strings, not normalised). */
export interface TarMember {
  /** Raw name as in the archive (binary string), before normalisation. */
  name: string;
  typeflag: string;
  /** undefined for a typeflag tiu does not apply (the consumer refuses it with TAR_ENTRY_UNSUPPORTED). */
  type: EntryType | undefined;
  mode: number;
  uid: number;
  gid: number;
  /** Content size of a regular file; 0 for the header-only types. */
  size: number;
  mtimeNs: bigint;
  /** Raw link target (binary string). */
  linkname: string;
  devmajor: number;
  devminor: number;
  /** Values are raw bytes. */
  xattrs: Record<string, Buffer>;
  /** The content, in pieces; what is not consumed before the next member is skipped. */
  body(): AsyncGenerator<Buffer>;
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
/** Types whose size field says nothing about data (Go's archive/tar reads no content for them). */
const HEADER_ONLY = new Set(['1', '2', '3', '4', '5', '6']);

/** A member the consumer refuses for its type, said the same way by every reader of tars. */
export function unsupportedMember(what: string, m: TarMember): LayerFormatError {
  return new LayerFormatError(
    'TAR_ENTRY_UNSUPPORTED',
    `${what}: member ${JSON.stringify(showPath(m.name))} has tar type ${JSON.stringify(m.typeflag)}, which tiu does not support`,
    { path: showPath(m.name), typeflag: m.typeflag },
  );
}

/** Pulls exact byte counts out of an async stream of chunks. */
export class ByteReader {
  readonly #it: AsyncIterator<Buffer | Uint8Array | string>;
  #buf: Buffer = Buffer.alloc(0);
  #done = false;
  position = 0;
  constructor(source: AsyncIterable<Buffer | Uint8Array | string>) {
    this.#it = source[Symbol.asyncIterator]();
  }
  async #fill(): Promise<boolean> {
    if (this.#done) return false;
    const r = await this.#it.next();
    if (r.done) {
      this.#done = true;
      return false;
    }
    const chunk =
      typeof r.value === 'string'
        ? Buffer.from(r.value)
        : Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength);
    this.#buf = this.#buf.length ? Buffer.concat([this.#buf, chunk]) : chunk;
    return true;
  }
  /** Exactly n bytes, or fewer at the end of the stream. */
  async read(n: number): Promise<Buffer> {
    while (this.#buf.length < n && (await this.#fill()));
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(out.length);
    this.position += out.length;
    return out;
  }
  /** Up to n bytes, as many as have arrived (at least 1 unless the stream has ended). */
  async some(n: number): Promise<Buffer> {
    if (this.#buf.length === 0) await this.#fill();
    const out = this.#buf.subarray(0, Math.min(n, this.#buf.length));
    this.#buf = this.#buf.subarray(out.length);
    this.position += out.length;
    return out;
  }
  /** n bytes in pieces as they arrive (bounded memory); fewer if the stream ends. */
  async *pieces(n: number): AsyncGenerator<Buffer> {
    let left = n;
    while (left > 0) {
      if (this.#buf.length === 0 && !(await this.#fill())) return;
      const out = this.#buf.subarray(0, Math.min(left, this.#buf.length));
      this.#buf = this.#buf.subarray(out.length);
      this.position += out.length;
      left -= out.length;
      yield out;
    }
  }
  /** Let go of the source before its end: its iterator's return() (a Readable's destroys it). */
  async close(): Promise<void> {
    this.#buf = Buffer.alloc(0);
    this.#done = true;
    await this.#it.return?.();
  }
  /** Drain the rest of the source (so a producer like a decompressor can finish). */
  async drain(): Promise<void> {
    this.#buf = Buffer.alloc(0);
    while (await this.#fill()) this.#buf = Buffer.alloc(0);
  }
}

const invalid = (why: string, details: Record<string, unknown> = {}) =>
  new LayerFormatError('TAR_INVALID', why, details);

function parseNumber(h: Buffer, off: number, len: number, what: string): number {
  const f = h.subarray(off, off + len);
  if ((f[0]! & 0x80) !== 0) {
    // GNU base-256: big-endian two's complement with the top bit as marker.
    let v = BigInt(f[0]! & 0x7f);
    const negative = (f[0]! & 0x40) !== 0;
    if (negative) v = BigInt(f[0]!) - 256n;
    for (let i = 1; i < f.length; i++) v = (v << 8n) | BigInt(f[i]!);
    const n = Number(v);
    if (!Number.isSafeInteger(n)) throw invalid(`tar header field ${what} is out of range`);
    return n;
  }
  const s = f.toString('latin1').replace(/\0.*$/s, '').trim();
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw invalid(`tar header field ${what} is not an octal number: ${JSON.stringify(s)}`);
  return parseInt(s, 8);
}

function cstring(h: Buffer, off: number, len: number): string {
  const f = h.subarray(off, off + len);
  const z = f.indexOf(0);
  return bstr(z < 0 ? f : f.subarray(0, z));
}

function parsePax(body: Buffer, what: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let p = 0;
  while (p < body.length) {
    if (body[p] === 0) break;
    const sp = body.indexOf(0x20, p);
    const len = sp > p ? parseInt(body.subarray(p, sp).toString('ascii'), 10) : NaN;
    if (!Number.isSafeInteger(len) || len <= sp - p || p + len > body.length || body[p + len - 1] !== 0x0a)
      throw invalid(`${what}: malformed pax record`);
    const rec = body.subarray(sp + 1, p + len - 1);
    const eq = rec.indexOf(0x3d);
    if (eq < 0) throw invalid(`${what}: malformed pax record`);
    out.set(rec.subarray(0, eq).toString('utf8'), Buffer.from(rec.subarray(eq + 1)));
    p += len;
  }
  return out;
}

/** A pax time: `-sec.frac` means -(sec + frac). */
function parsePaxTime(v: string, what: string): bigint {
  const m = /^(-?)(\d+)(?:\.(\d+))?$/.exec(v);
  if (!m) throw invalid(`${what}: bad pax time ${JSON.stringify(v.slice(0, 40))}`);
  const ns = BigInt(m[2]!) * 1_000_000_000n + BigInt((m[3] ?? '').slice(0, 9).padEnd(9, '0'));
  return m[1] === '-' ? -ns : ns;
}

/** LIBARCHIVE.xattr. keys are URL-encoded and their values base64; a malformed escape is a bad tar. */
function libarchiveXattrName(k: string, what: string): string {
  try {
    return decodeURIComponent(k);
  } catch {
    throw invalid(`${what}: malformed LIBARCHIVE.xattr. name ${JSON.stringify(k.slice(0, 100))}`);
  }
}

const MAX_META = 1 << 20;

/**
 * Iterate the members of a tar stream (`what` names it in errors). A member's content is read
 * through `member.body()` before the next member is asked for; the generator skips whatever is
 * left and the padding. It stops at the end-of-archive blocks: the caller drains or closes the
 * source (`ByteReader.drain`), so a verifying stream below can finish its check.
 */
export async function* readTar(
  source: ByteReader | AsyncIterable<Buffer | Uint8Array>,
  what = 'tar',
): AsyncGenerator<TarMember> {
  const reader = source instanceof ByteReader ? source : new ByteReader(source);
  let global = new Map<string, Buffer>();
  let pending = new Map<string, Buffer>();
  let longName: string | undefined;
  let longLink: string | undefined;
  for (;;) {
    const h = await reader.read(BLOCK);
    if (h.length === 0) return; // tolerate a missing end-of-archive marker
    if (h.length < BLOCK) throw invalid(`${what}: truncated tar header at byte ${reader.position - h.length}`);
    if (h.every((b) => b === 0)) return;
    let sum = 0;
    for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : h[i]!;
    if (parseNumber(h, 148, 8, 'chksum') !== sum)
      throw invalid(`${what}: bad tar header checksum at byte ${reader.position - BLOCK}`);
    const typeflag = String.fromCharCode(h[156]!);
    const size = parseNumber(h, 124, 12, 'size');
    const meta = async (): Promise<Buffer> => {
      if (size > MAX_META) throw invalid(`${what}: metadata record of ${size} bytes is too large`);
      const body = await reader.read(size);
      if (body.length < size) throw invalid(`${what}: truncated tar`);
      await reader.read(paddingFor(size));
      return body;
    };
    if (typeflag === 'x' || typeflag === 'g') {
      const recs = parsePax(await meta(), what);
      if (typeflag === 'g') global = new Map([...global, ...recs]);
      else pending = new Map([...pending, ...recs]);
      continue;
    }
    if (typeflag === 'L' || typeflag === 'K') {
      const body = await meta();
      const z = body.indexOf(0);
      const s = bstr(z < 0 ? body : body.subarray(0, z));
      if (typeflag === 'L') longName = s;
      else longLink = s;
      continue;
    }
    const pax = new Map([...global, ...pending]);
    pending = new Map();
    // The header's own fields only where no pax record or GNU long name replaces them.
    let name = longName ?? cstring(h, 0, 100);
    if (longName === undefined && h.subarray(257, 262).toString('latin1') === 'ustar') {
      const prefix = cstring(h, 345, 155);
      if (prefix) name = prefix + '/' + name;
    }
    let linkname = longLink ?? cstring(h, 157, 100);
    longName = longLink = undefined;
    let mtimeNs = BigInt(parseNumber(h, 136, 12, 'mtime')) * 1_000_000_000n;
    let uid = parseNumber(h, 108, 8, 'uid');
    let gid = parseNumber(h, 116, 8, 'gid');
    let realSize = size;
    const xattrs: Record<string, Buffer> = {};
    const paxNumber = (k: string, v: Buffer): number => {
      const s = v.toString('latin1');
      const n = /^\d+$/.test(s) ? Number(s) : NaN;
      if (!Number.isSafeInteger(n)) throw invalid(`${what}: bad pax ${k} of ${JSON.stringify(showPath(name))}`);
      return n;
    };
    for (const [k, v] of pax) {
      if (k === 'path') name = bstr(v);
      else if (k === 'linkpath') linkname = bstr(v);
      else if (k === 'mtime') mtimeNs = parsePaxTime(v.toString('latin1'), what);
      else if (k === 'uid') uid = paxNumber(k, v);
      else if (k === 'gid') gid = paxNumber(k, v);
      else if (k === 'size') realSize = paxNumber(k, v);
      else if (k.startsWith('SCHILY.xattr.')) xattrs[k.slice('SCHILY.xattr.'.length)] = v;
      else if (k.startsWith('LIBARCHIVE.xattr.'))
        xattrs[libarchiveXattrName(k.slice('LIBARCHIVE.xattr.'.length), what)] = Buffer.from(
          v.toString('latin1'),
          'base64',
        );
    }
    if (typeflag === 'S' || pax.has('GNU.sparse.major') || pax.has('GNU.sparse.map') || pax.has('GNU.sparse.size'))
      throw new LayerFormatError(
        'TAR_ENTRY_UNSUPPORTED',
        `${what}: ${JSON.stringify(showPath(name))} is a GNU sparse member, which tiu does not read; create the tar without --sparse`,
        { path: showPath(name) },
      );
    const dataSize = HEADER_ONLY.has(typeflag) ? 0 : realSize;
    const type = FLAG_TYPES[typeflag];
    let remaining = dataSize;
    const shown = name;
    async function* body(): AsyncGenerator<Buffer> {
      while (remaining > 0) {
        const b = await reader.some(Math.min(remaining, 1 << 20));
        if (b.length === 0)
          throw invalid(`${what}: truncated tar in the content of ${JSON.stringify(showPath(shown))}`);
        remaining -= b.length;
        yield b;
      }
    }
    yield {
      name,
      typeflag,
      type,
      mode: parseNumber(h, 100, 8, 'mode') & 0o7777,
      uid,
      gid,
      size: type === 'reg' ? realSize : 0,
      mtimeNs,
      linkname,
      devmajor: parseNumber(h, 329, 8, 'devmajor'),
      devminor: parseNumber(h, 337, 8, 'devminor'),
      xattrs,
      body,
    };
    for await (const _ of body());
    if ((await reader.read(paddingFor(dataSize))).length < paddingFor(dataSize))
      throw invalid(`${what}: truncated tar after ${JSON.stringify(showPath(name))}`);
  }
}

/**
 * The TreeEntry a member describes, at its normalised `path` (paths.ts): no content, no
 * digest. A hardlink's target is normalised like a path; a symlink's target is kept as stored.
 * An unknown type is TAR_ENTRY_UNSUPPORTED, a symlink without a target TAR_INVALID.
 */
export function memberEntry(m: TarMember, path: string, what = 'tar'): TreeEntry {
  if (!m.type) throw unsupportedMember(what, m);
  const e: TreeEntry = {
    path,
    type: m.type,
    mode: m.mode,
    uid: m.uid,
    gid: m.gid,
    mtimeNs: m.mtimeNs,
    xattrs: m.xattrs,
    size: m.size,
  };
  if (m.type === 'symlink') {
    if (m.linkname === '') throw invalid(`${what}: symlink ${JSON.stringify(showPath(m.name))} without a target`);
    e.linkname = m.linkname;
  }
  if (m.type === 'hardlink') e.linkname = normalizeLinkTarget(path, m.linkname);
  if (m.type === 'char' || m.type === 'block') {
    e.devmajor = m.devmajor;
    e.devminor = m.devminor;
  }
  return e;
}
