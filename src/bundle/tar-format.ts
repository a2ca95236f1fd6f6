/**
 * The tar format, both ways, byte-exact: tiu writes its own headers so names with any bytes,
 * binary xattr values (security.capability) and large numbers come through unchanged, and
 * reads tars (kiwi archives, image layers) with the same care. POSIX pax (ustar + 'x'
 * records) out; ustar, pax and GNU long names in.
 *
 * Writer conventions: ustar fields whenever a value fits (raw bytes, as GNU tar and Go read
 * them), a pax record only where needed (long or non-ASCII-unsafe names, big numbers,
 * sub-second mtimes, xattrs as SCHILY.xattr.*), `hdrcharset=BINARY` when a pax name is not
 * UTF-8. uname/gname stay empty so every reader uses the numeric owners.
 */
import { BuildError } from './errors.ts';
import { bbuf, bstr, isUtf8, showPath, type EntryType, type TreeEntry } from './entry.ts';

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

function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`, 'utf8'), value, Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len), 'ascii'), body]);
}

/** Split a name into ustar prefix (<=155) and name (<=100) at a '/', or undefined. */
function splitUstar(name: Buffer): [Buffer, Buffer] | undefined {
  if (name.length <= 100) return [Buffer.alloc(0), name];
  for (let i = Math.min(name.length - 1, 155); i > 0; i--) {
    if (name[i] === 0x2f && name.length - i - 1 <= 100 && name.length - i - 1 > 0)
      return [name.subarray(0, i), name.subarray(i + 1)];
  }
  return undefined;
}

function rawHeader(fields: {
  name: Buffer;
  prefix?: Buffer;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  typeflag: string;
  linkname?: Buffer;
  devMajor?: number;
  devMinor?: number;
}): Buffer {
  const h = Buffer.alloc(BLOCK);
  fields.name.copy(h, 0, 0, 100);
  octal(h, 100, 8, fields.mode);
  octal(h, 108, 8, fields.uid);
  octal(h, 116, 8, fields.gid);
  octal(h, 124, 12, fields.size);
  octal(h, 136, 12, fields.mtime);
  h.write(fields.typeflag, 156, 'ascii');
  fields.linkname?.copy(h, 157, 0, 100);
  h.write('ustar\x0000', 257, 'latin1');
  if (fields.devMajor !== undefined) octal(h, 329, 8, fields.devMajor);
  if (fields.devMinor !== undefined) octal(h, 337, 8, fields.devMinor);
  fields.prefix?.copy(h, 345, 0, 155);
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'ascii');
  return h;
}

/**
 * The header block(s) of one entry: an optional pax 'x' header with its records, then the
 * ustar header. Content and its padding follow separately.
 */
export function encodeHeader(e: TreeEntry): Buffer {
  const records: [string, Buffer][] = [];
  const nameBuf = bbuf(e.type === 'dir' ? e.path + '/' : e.path);
  let binaryName = false;
  const split = splitUstar(nameBuf);
  if (!split) {
    records.push(['path', nameBuf]);
    if (!isUtf8(bstr(nameBuf))) binaryName = true;
  }
  const linkBuf = e.link !== undefined ? bbuf(e.link) : undefined;
  if (linkBuf && linkBuf.length > 100) {
    records.push(['linkpath', linkBuf]);
    if (!isUtf8(e.link!)) binaryName = true;
  }
  if (binaryName) records.push(['hdrcharset', Buffer.from('BINARY')]);
  const small = (v: number, digits: number) => v >= 0 && Number.isSafeInteger(v) && v.toString(8).length <= digits;
  if (!small(e.uid, 7)) records.push(['uid', Buffer.from(String(e.uid))]);
  if (!small(e.gid, 7)) records.push(['gid', Buffer.from(String(e.gid))]);
  const size = e.type === 'reg' ? e.size : 0;
  if (!small(size, 11)) records.push(['size', Buffer.from(String(size))]);
  if (e.mtimeNsec !== 0 || !small(e.mtime, 11)) {
    const frac = e.mtimeNsec !== 0 ? '.' + String(e.mtimeNsec).padStart(9, '0').replace(/0+$/, '') : '';
    // pax spells negative times as -sec.frac meaning -(sec+frac); keep it exact for e.mtime>=0,
    // and for negative seconds with a fraction express the value the same way.
    const t =
      e.mtime < 0 && e.mtimeNsec !== 0
        ? `-${-e.mtime - 1}.${String(1e9 - e.mtimeNsec)
            .padStart(9, '0')
            .replace(/0+$/, '')}`
        : `${e.mtime}${frac}`;
    records.push(['mtime', Buffer.from(t)]);
  }
  for (const [k, v] of e.xattrs) records.push([`SCHILY.xattr.${k}`, v]);

  const out: Buffer[] = [];
  if (records.length > 0) {
    records.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    const body = Buffer.concat(records.map(([k, v]) => paxRecord(k, v)));
    const base = nameBuf.subarray(nameBuf.lastIndexOf(0x2f, nameBuf.length - 2) + 1);
    const paxName = Buffer.concat([Buffer.from('PaxHeaders/'), base]).subarray(0, 100);
    out.push(rawHeader({ name: paxName, mode: 0o644, uid: 0, gid: 0, size: body.length, mtime: 0, typeflag: 'x' }));
    out.push(body, Buffer.alloc(paddingFor(body.length)));
  }
  const [prefix, name] = split ?? [Buffer.alloc(0), nameBuf.subarray(0, 100)];
  out.push(
    rawHeader({
      name,
      prefix,
      mode: e.mode & 0o7777,
      uid: small(e.uid, 7) ? e.uid : 0,
      gid: small(e.gid, 7) ? e.gid : 0,
      size: small(size, 11) ? size : 0,
      mtime: small(e.mtime, 11) ? e.mtime : 0,
      typeflag: TYPEFLAG[e.type],
      linkname: linkBuf && linkBuf.length <= 100 ? linkBuf : undefined,
      devMajor: e.type === 'char' || e.type === 'block' ? (e.devMajor ?? 0) : undefined,
      devMinor: e.type === 'char' || e.type === 'block' ? (e.devMinor ?? 0) : undefined,
    }),
  );
  return Buffer.concat(out);
}

// ---------------------------------------------------------------------------------------------
// Reading

/** One member as read from a tar: the header facts, with paths still raw (binary strings). */
export interface TarMember {
  /** Raw name as in the archive (binary string), before normalisation. */
  name: string;
  typeflag: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  mtimeNsec: number;
  linkname: string;
  devMajor: number;
  devMinor: number;
  xattrs: [string, Buffer][];
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

function parseNumber(h: Buffer, off: number, len: number, what: string): number {
  const f = h.subarray(off, off + len);
  if ((f[0]! & 0x80) !== 0) {
    // GNU base-256: big-endian two's complement with the top bit as marker.
    let v = BigInt(f[0]! & 0x7f);
    const negative = (f[0]! & 0x40) !== 0;
    if (negative) v = BigInt(f[0]!) - 256n;
    for (let i = 1; i < f.length; i++) v = (v << 8n) | BigInt(f[i]!);
    const n = Number(v);
    if (!Number.isSafeInteger(n)) throw new BuildError('TAR_INVALID', `tar header field ${what} is out of range`);
    return n;
  }
  const s = f.toString('latin1').replace(/\0.*$/s, '').trim();
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s))
    throw new BuildError('TAR_INVALID', `tar header field ${what} is not an octal number: ${JSON.stringify(s)}`);
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
    if (!Number.isSafeInteger(len) || len <= 0 || p + len > body.length || body[p + len - 1] !== 0x0a) {
      throw new BuildError('TAR_INVALID', `malformed pax record in ${what}`);
    }
    const rec = body.subarray(sp + 1, p + len - 1);
    const eq = rec.indexOf(0x3d);
    if (eq < 0) throw new BuildError('TAR_INVALID', `malformed pax record in ${what}`);
    out.set(rec.subarray(0, eq).toString('utf8'), Buffer.from(rec.subarray(eq + 1)));
    p += len;
  }
  return out;
}

function parsePaxTime(v: string): [number, number] {
  const m = /^(-?)(\d+)(?:\.(\d+))?$/.exec(v);
  if (!m) throw new BuildError('TAR_INVALID', `bad pax time ${JSON.stringify(v)}`);
  const sec = Number(m[2]);
  const nsec = Number((m[3] ?? '').slice(0, 9).padEnd(9, '0'));
  if (m[1] === '-') return nsec === 0 ? [-sec, 0] : [-sec - 1, 1e9 - nsec];
  return [sec, nsec];
}

const MAX_META = 1 << 20;

/**
 * Iterate the members of a tar stream. For each member the consumer must consume or skip its
 * content through `reader.pieces(member.size)` before asking for the next one; the generator
 * skips whatever is left and the padding.
 */
export async function* readTar(reader: ByteReader, what: string): AsyncGenerator<TarMember> {
  let global = new Map<string, Buffer>();
  let pending = new Map<string, Buffer>();
  let longName: string | undefined;
  let longLink: string | undefined;
  for (;;) {
    const h = await reader.read(BLOCK);
    if (h.length === 0) return; // tolerate a missing end-of-archive marker
    if (h.length < BLOCK)
      throw new BuildError('TAR_INVALID', `${what}: truncated tar header at byte ${reader.position - h.length}`);
    if (h.every((b) => b === 0)) return;
    let sum = 0;
    for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : h[i]!;
    if (parseNumber(h, 148, 8, 'chksum') !== sum)
      throw new BuildError('TAR_INVALID', `${what}: bad tar header checksum at byte ${reader.position - BLOCK}`);
    const typeflag = String.fromCharCode(h[156] || 0x30);
    const size = parseNumber(h, 124, 12, 'size');
    const meta = async (): Promise<Buffer> => {
      if (size > MAX_META)
        throw new BuildError('TAR_INVALID', `${what}: metadata record of ${size} bytes is too large`);
      const body = await reader.read(size);
      if (body.length < size) throw new BuildError('TAR_INVALID', `${what}: truncated tar`);
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
    const magic = h.subarray(257, 263).toString('latin1');
    let name = cstring(h, 0, 100);
    if (magic.startsWith('ustar')) {
      const prefix = cstring(h, 345, 155);
      if (prefix) name = prefix + '/' + name;
    }
    if (longName !== undefined) name = longName;
    let linkname = longLink ?? cstring(h, 157, 100);
    const px = (k: string) => pax.get(k);
    if (px('path')) name = bstr(px('path')!);
    if (px('linkpath')) linkname = bstr(px('linkpath')!);
    let mtime = parseNumber(h, 136, 12, 'mtime');
    let mtimeNsec = 0;
    if (px('mtime')) [mtime, mtimeNsec] = parsePaxTime(px('mtime')!.toString('ascii'));
    const num = (k: string, fallback: number) => {
      const v = px(k);
      if (!v) return fallback;
      const n = Number(v.toString('ascii'));
      if (!Number.isSafeInteger(n) || n < 0) throw new BuildError('TAR_INVALID', `${what}: bad pax ${k}`);
      return n;
    };
    const xattrs: [string, Buffer][] = [];
    for (const [k, v] of pax) if (k.startsWith('SCHILY.xattr.')) xattrs.push([k.slice('SCHILY.xattr.'.length), v]);
    xattrs.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    const member: TarMember = {
      name,
      typeflag,
      mode: parseNumber(h, 100, 8, 'mode') & 0o7777,
      uid: num('uid', parseNumber(h, 108, 8, 'uid')),
      gid: num('gid', parseNumber(h, 116, 8, 'gid')),
      size: num('size', size),
      mtime,
      mtimeNsec,
      linkname,
      devMajor: parseNumber(h, 329, 8, 'devmajor'),
      devMinor: parseNumber(h, 337, 8, 'devminor'),
      xattrs,
    };
    pending = new Map();
    longName = longLink = undefined;
    if (typeflag === 'S' || px('GNU.sparse.major') || px('GNU.sparse.map')) {
      throw new BuildError(
        'TAR_ENTRY_UNSUPPORTED',
        `${what}: ${JSON.stringify(showPath(name))} is a GNU sparse member, which tiu does not read; create the tar without --sparse`,
      );
    }
    const before = reader.position;
    yield member;
    const dataSize = ['1', '2', '3', '4', '5', '6'].includes(typeflag) ? 0 : member.size;
    const consumed = reader.position - before;
    for await (const _ of reader.pieces(dataSize - consumed));
    await reader.read(paddingFor(dataSize));
  }
}
