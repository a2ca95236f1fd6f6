/**
 * The apply engine with names as bytes: a name that is not UTF-8, a name with a newline, a
 * 255-byte component, a binary security.capability, on the tar path, the TOC path (a layer
 * tiu's writer made) and from an old tree that has such names (update, delete, xattr removal).
 * The reference is GNU tar's extraction of the same tar; trees are compared byte-exact.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, mkdir, open, readdir, readFile, readlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { applyFromToc, applyTarLayers, tarLayerProvider, tocToEntries } from '../../src/deploy/apply/index.ts';
import { writeLayer } from '../../src/bundle/layer-writer.ts';
import { run } from '../../src/host/exec.ts';
import { readTreeXattrs } from '../../src/host/xattr.ts';
import { bbuf, bstr, type TreeEntry } from '../../src/layer/entry.ts';
import { encodeHeader, END_OF_ARCHIVE, paddingFor } from '../../src/layer/tar.ts';
import { readTocFromFooter } from '../../src/layer/toc.ts';
import { zstdDecompressStream } from '../../src/layer/zstd-frames.ts';
import { requireRoot } from '../helpers/env.ts';
import { makeBtrfs, snapshot, subvolume, type TestBtrfs } from '../helpers/btrfs.ts';

const T = 1_700_000_000n * 1_000_000_000n;
const CAP = Buffer.from([1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
const CAFE = bstr(Buffer.from([0x63, 0x61, 0x66, 0xe9])); // caf\xe9: Latin-1, not UTF-8
const LONG = 'n'.repeat(255);

function ent(path: string, over: Partial<TreeEntry> = {}): TreeEntry {
  return { path, type: 'reg', mode: 0o644, uid: 0, gid: 0, mtimeNs: T, size: 0, xattrs: {}, ...over };
}
function file(path: string, text: string, over: Partial<TreeEntry> = {}): TreeEntry {
  const data = Buffer.from(text);
  return ent(path, { size: data.length, content: { data }, ...over });
}
const dir = (path: string, over: Partial<TreeEntry> = {}) => ent(path, { type: 'dir', mode: 0o755, ...over });

const v1: TreeEntry[] = [
  dir('usr'),
  dir(`usr/${CAFE}`),
  file(`usr/${CAFE}/f\n`, 'one\n', { xattrs: { 'user.old': Buffer.from([0xff, 0]) } }),
  file(`usr/${CAFE}/gone\xff`, 'gone\n'),
  file(`usr/${LONG}`, 'long\n'),
];
const v2: TreeEntry[] = [
  dir('usr'),
  dir(`usr/${CAFE}`, { mode: 0o750 }),
  file(`usr/${CAFE}/f\n`, 'one\n'),
  file(`usr/${CAFE}/caf\xe8`, 'a different name, not the same file\n'),
  ent(`usr/${CAFE}/h\xfe`, { type: 'hardlink', linkname: `usr/${CAFE}/f\n` }),
  file(`usr/${LONG}`, 'long, changed\n', { mode: 0o4755, xattrs: { 'security.capability': CAP } }),
  ent(`usr/l\xff`, { type: 'symlink', linkname: `${CAFE}/f\n`, mode: 0o777 }),
  ent(`usr/${CAFE}/p\xfd`, { type: 'fifo', mode: 0o600 }),
];

function tarOf(entries: TreeEntry[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    parts.push(encodeHeader(e));
    if (e.type === 'reg' && e.size > 0)
      parts.push((e.content as { data: Buffer }).data, Buffer.alloc(paddingFor(e.size)));
  }
  parts.push(END_OF_ARCHIVE);
  return Buffer.concat(parts);
}

/** Every path below `root` by its bytes: type, mode, owner, mtime, content or link, inode group, xattrs. */
async function describe_(root: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const xattrs = await readTreeXattrs(root);
  const inodes = new Map<bigint, string>();
  const walk = async (rel: string): Promise<void> => {
    const abs = Buffer.concat([Buffer.from(root), rel ? bbuf('/' + rel) : Buffer.alloc(0)]);
    for (const name of await readdir(abs, { encoding: 'buffer' })) {
      const p = rel ? `${rel}/${bstr(name)}` : bstr(name);
      const pabs = Buffer.concat([Buffer.from(root), bbuf('/' + p)]);
      const st = await lstat(pabs, { bigint: true });
      let what = '';
      if (st.isFile()) {
        what = createHash('sha256')
          .update(await readFile(pabs))
          .digest('hex');
        if (st.nlink > 1n) what += ` group ${inodes.get(st.ino) ?? (inodes.set(st.ino, p), p)}`;
      } else if (st.isSymbolicLink()) what = bstr(await readlink(pabs, { encoding: 'buffer' }));
      const x = (xattrs.get(p) ?? []).map(([k, v]) => `${k}=${v.toString('hex')}`).join(',');
      const mtime = st.isDirectory() ? '' : String(st.mtimeNs / 1_000_000n);
      out.set(p, `${st.mode.toString(8)} ${st.uid}:${st.gid} ${mtime} ${what} ${x}`);
      if (st.isDirectory()) await walk(p);
    }
  };
  await walk('');
  return out;
}

async function assertSameTree(a: string, b: string): Promise<void> {
  const [x, y] = [await describe_(a), await describe_(b)];
  assert.deepEqual([...x.keys()].sort(), [...y.keys()].sort());
  for (const [p, d] of x) assert.equal(d, y.get(p), JSON.stringify(p));
}

describe('deploy/apply: names as bytes (integration)', function () {
  this.timeout(120_000);
  let fs: TestBtrfs;
  let ref1: string;
  let ref2: string;
  const tar1 = tarOf(v1);
  const tar2 = tarOf(v2);

  before(async function () {
    requireRoot(this);
    fs = await makeBtrfs(256);
    for (const [name, tar] of [
      ['ref1', tar1],
      ['ref2', tar2],
    ] as const) {
      const into = join(fs.mnt, name);
      await mkdir(into);
      await writeFile(into + '.tar', tar);
      await run('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-xpf', into + '.tar', '-C', into]);
    }
    [ref1, ref2] = [join(fs.mnt, 'ref1'), join(fs.mnt, 'ref2')];
  });
  after(async () => {
    await fs?.cleanup();
  });

  it('GNU tar reads the awkward names the way tiu wrote them', async () => {
    const names = (await readdir(Buffer.from(join(ref2, 'usr', '')), { encoding: 'buffer' })).map(bstr).sort();
    assert.deepEqual(names, [CAFE, 'l\xff', LONG].sort());
  });

  it('tar path: an empty subvolume, then v1 -> v2 on a snapshot, byte-exact', async () => {
    const t1 = join(fs.mnt, 'tar1');
    await subvolume(t1);
    await applyTarLayers(t1, [() => Readable.from([tar1])]);
    await assertSameTree(t1, ref1);
    const t2 = join(fs.mnt, 'tar2');
    await snapshot(t1, t2);
    const rep = await applyTarLayers(t2, [() => Readable.from([tar2])]);
    await assertSameTree(t2, ref2);
    assert.ok(rep.deleted.count >= 1, JSON.stringify(rep.deleted));
  });

  it("TOC path: tiu's own zstd:chunked layer, v1 -> v2 on a snapshot, byte-exact", async () => {
    const layerOf = async (entries: TreeEntry[], name: string) => {
      const f = join(fs.dir, name);
      const built = await writeLayer(entries, f, { compression: 'zstd' });
      const fh = await open(f);
      try {
        const fetch = async (s: number, e: number) => {
          const b = Buffer.alloc(e - s);
          await fh.read(b, 0, e - s, s);
          return b;
        };
        const toc = await readTocFromFooter(fetch, built.descriptor.size, built.descriptor.annotations);
        return {
          entries: tocToEntries(toc, 0),
          f,
          toc,
        };
      } finally {
        await fh.close();
      }
    };
    const l1 = await layerOf(v1, 'v1.layer');
    const l2 = await layerOf(v2, 'v2.layer');
    // The TOC names the files by their raw bytes.
    assert.ok(l2.toc.entries.some((e) => e.name === `usr/${CAFE}/h\xfe`));
    const provider = (f: string) => tarLayerProvider(() => Promise.resolve(zstdDecompressStream(createReadStream(f))));
    const t1 = join(fs.mnt, 'toc1');
    await subvolume(t1);
    await applyFromToc(t1, [l1.entries], provider(l1.f));
    await assertSameTree(t1, ref1);
    const t2 = join(fs.mnt, 'toc2');
    await snapshot(t1, t2);
    const res = await applyFromToc(t2, [l2.entries], provider(l2.f));
    await assertSameTree(t2, ref2);
    assert.ok(res.report!.deleted.count >= 1, JSON.stringify(res.report!.deleted));
  });
});
