/**
 * Extended attributes of a whole tree. Node has no xattr API, so this asks `getfattr` (the
 * attr package) once for the tree, and parses its dump. Symlinks are not followed; their own
 * attributes are read.
 */
import { run } from './exec.ts';

/** getfattr prints names with \ooo escapes for control bytes and the backslash. */
function unescapeName(s: Buffer): Buffer {
  const out: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (c === 0x5c && i + 3 < s.length + 0 && /^[0-7]{3}$/.test(s.subarray(i + 1, i + 4).toString('latin1'))) {
      out.push(parseInt(s.subarray(i + 1, i + 4).toString('latin1'), 8));
      i += 3;
    } else {
      out.push(c);
    }
  }
  return Buffer.from(out);
}

/**
 * Every xattr under `root` (absolute), keyed by the path relative to root as a binary string
 * ('' for root itself). Values are raw bytes.
 */
export async function readTreeXattrs(root: string, opts: { signal?: AbortSignal } = {}): Promise<Map<string, [string, Buffer][]>> {
  const r = await run('getfattr', ['--recursive', '--no-dereference', '--physical', '--dump', '--match=-', '--encoding=base64', '--absolute-names', root], {
    binary: true,
    signal: opts.signal,
    timeout: 3_600_000,
  });
  const out = new Map<string, [string, Buffer][]>();
  const text = Buffer.from(r.stdoutBytes ?? new Uint8Array());
  const rootBytes = Buffer.from(root.replace(/\/+$/, ''), 'utf8');
  let current: [string, Buffer][] | undefined;
  let start = 0;
  while (start < text.length) {
    let end = text.indexOf(0x0a, start);
    if (end < 0) end = text.length;
    const line = text.subarray(start, end);
    start = end + 1;
    if (line.length === 0) continue;
    if (line.subarray(0, 8).toString('latin1') === '# file: ') {
      const abs = unescapeName(line.subarray(8));
      let rel = abs.equals(rootBytes) ? Buffer.alloc(0) : abs.subarray(rootBytes.length + 1);
      while (rel.length && rel[rel.length - 1] === 0x2f) rel = rel.subarray(0, rel.length - 1);
      current = [];
      out.set(rel.toString('latin1'), current);
      continue;
    }
    const eq = line.indexOf(0x3d);
    if (!current || eq < 0) continue;
    const name = line.subarray(0, eq).toString('utf8');
    const v = line.subarray(eq + 1).toString('latin1');
    let value: Buffer;
    if (v.startsWith('0s')) value = Buffer.from(v.slice(2), 'base64');
    else if (v.startsWith('0x')) value = Buffer.from(v.slice(2), 'hex');
    else if (v.startsWith('"')) value = Buffer.from(v.slice(1, -1), 'latin1');
    else value = Buffer.from(v, 'latin1');
    current.push([name, value]);
  }
  for (const list of out.values()) list.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return out;
}
