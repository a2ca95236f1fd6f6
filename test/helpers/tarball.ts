/**
 * A tiny tar writer for tests: ustar headers plus pax records with raw byte values, so tests
 * can build exactly the archives they need, hostile ones included (no name checks at all).
 */
export interface TarSpec {
  name: string;
  /** '0' file, '1' hardlink, '2' symlink, '3' char, '4' block, '5' dir, '6' fifo */
  type?: '0' | '1' | '2' | '3' | '4' | '5' | '6';
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  content?: Buffer | string;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  xattrs?: Record<string, Buffer | string>;
}

function octal(n: number, width: number): string {
  return n.toString(8).padStart(width - 1, '0') + '\0';
}

function header(name: string, type: string, size: number, s: TarSpec): Buffer {
  const h = Buffer.alloc(512);
  h.write(name.slice(0, 100), 0);
  h.write(octal(s.mode ?? (type === '5' ? 0o755 : 0o644), 8), 100);
  h.write(octal(s.uid ?? 0, 8), 108);
  h.write(octal(s.gid ?? 0, 8), 116);
  h.write(octal(size, 12), 124);
  h.write(octal(s.mtime ?? 1_700_000_000, 12), 136);
  h.write('        ', 148);
  h.write(type, 156);
  h.write((s.linkname ?? '').slice(0, 100), 157);
  h.write('ustar\0', 257);
  h.write('00', 263);
  h.write(octal(s.devmajor ?? 0, 8), 329);
  h.write(octal(s.devminor ?? 0, 8), 337);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148);
  return h;
}

function pad(b: Buffer): Buffer {
  const r = b.length % 512;
  return r === 0 ? b : Buffer.concat([b, Buffer.alloc(512 - r)]);
}

function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), value, Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

export function makeTar(entries: readonly TarSpec[]): Buffer {
  const parts: Buffer[] = [];
  for (const s of entries) {
    const type = s.type ?? '0';
    const content = type === '0' ? Buffer.from(s.content ?? '') : Buffer.alloc(0);
    const recs: Buffer[] = [];
    if (s.name.length > 100) recs.push(paxRecord('path', Buffer.from(s.name)));
    if ((s.linkname ?? '').length > 100) recs.push(paxRecord('linkpath', Buffer.from(s.linkname!)));
    for (const [k, v] of Object.entries(s.xattrs ?? {})) recs.push(paxRecord(`SCHILY.xattr.${k}`, Buffer.from(v)));
    if (recs.length) {
      const pax = Buffer.concat(recs);
      parts.push(header('PaxHeaders/x', 'x', pax.length, { name: '' }), pad(pax));
    }
    parts.push(header(s.name, type, content.length, s), pad(content));
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}
