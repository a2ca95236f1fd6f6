/**
 * Compare two directory trees file by file: type, content, mode, owner, mtime (seconds),
 * symlink target, device numbers, xattrs (every namespace) and hardlink groups. Returns the
 * differences as readable lines (empty when equal).
 */
import { createHash } from 'node:crypto';
import { lstat, opendir, readdir, readFile, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { dumpTreeXattrs } from '../../src/host/xattr.ts';

interface Info {
  kind: string;
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  size: number;
  sha?: string;
  link?: string;
  rdev: number;
  ino: number;
  xattrs: string;
}

export async function describeTree(root: string, skip: readonly string[] = []): Promise<Map<string, Info>> {
  const out = new Map<string, Info>();
  const xs = await dumpTreeXattrs(root);
  async function walk(rel: string): Promise<void> {
    const abs = rel === '' ? root : join(root, rel);
    const st = await lstat(abs);
    const kind = st.isFile()
      ? 'reg'
      : st.isDirectory()
        ? 'dir'
        : st.isSymbolicLink()
          ? 'symlink'
          : st.isCharacterDevice()
            ? 'char'
            : st.isBlockDevice()
              ? 'block'
              : st.isFIFO()
                ? 'fifo'
                : 'other';
    const x = xs.get(abs) ?? {};
    const info: Info = {
      kind,
      mode: st.mode & 0o7777,
      uid: st.uid,
      gid: st.gid,
      mtime: Math.floor(st.mtimeMs / 1000),
      size: kind === 'reg' ? st.size : 0,
      rdev: st.rdev,
      ino: st.ino,
      xattrs: Object.keys(x)
        .sort()
        .map((k) => `${k}=${x[k]!.toString('base64')}`)
        .join(','),
    };
    if (kind === 'reg')
      info.sha = createHash('sha256')
        .update(await readFile(abs))
        .digest('hex');
    if (kind === 'symlink') info.link = await readlink(abs);
    out.set(rel, info);
    if (kind === 'dir') {
      for await (const d of await opendir(abs)) {
        const p = rel === '' ? d.name : `${rel}/${d.name}`;
        if (skip.includes(p)) continue;
        await walk(p);
      }
    }
  }
  await walk('');
  return out;
}

function groups(t: Map<string, Info>): Map<string, string> {
  const byIno = new Map<number, string[]>();
  for (const [p, i] of t) {
    if (i.kind === 'dir') continue;
    const g = byIno.get(i.ino) ?? [];
    g.push(p);
    byIno.set(i.ino, g);
  }
  const out = new Map<string, string>();
  for (const g of byIno.values()) for (const p of g) out.set(p, [...g].sort().join('|'));
  return out;
}

export async function diffTrees(
  a: string,
  b: string,
  opts: { skip?: string[]; ignoreRootMeta?: boolean } = {},
): Promise<string[]> {
  const ta = await describeTree(a, opts.skip);
  const tb = await describeTree(b, opts.skip);
  const ga = groups(ta);
  const gb = groups(tb);
  const diffs: string[] = [];
  for (const p of new Set([...ta.keys(), ...tb.keys()])) {
    const x = ta.get(p);
    const y = tb.get(p);
    if (!x || !y) {
      diffs.push(`${p}: only in ${x ? 'first' : 'second'}`);
      continue;
    }
    if (p === '' && opts.ignoreRootMeta) continue;
    for (const k of ['kind', 'mode', 'uid', 'gid', 'mtime', 'size', 'sha', 'link', 'rdev', 'xattrs'] as const) {
      if (k === 'rdev' && x.kind !== 'char' && x.kind !== 'block') continue;
      if (x[k] !== y[k]) diffs.push(`${p}: ${k} ${String(x[k])} != ${String(y[k])}`);
    }
    if (x.kind !== 'dir' && ga.get(p) !== gb.get(p)) diffs.push(`${p}: hardlink group ${ga.get(p)} != ${gb.get(p)}`);
  }
  return diffs;
}

/** Every path below `dir`, regular files with their sha256, one a line, sorted: to see that nothing changed. */
export async function listing(dir: string): Promise<string> {
  const out: string[] = [];
  for (const d of await readdir(dir, { recursive: true, withFileTypes: true })) {
    const p = join(d.parentPath, d.name);
    out.push(
      d.isFile()
        ? `${p} ${createHash('sha256')
            .update(await readFile(p))
            .digest('hex')}`
        : p,
    );
  }
  return out.sort().join('\n');
}
