import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import {
  flattenLayers,
  planApply,
  normalizeEntryPath,
  tocToEntries,
  entriesFromTar,
  whiteoutOf,
  EMPTY_SHA256,
  type ExistingEntry,
  type TreeEntry,
  type OldTree,
  type ContentHasher,
} from '../../src/deploy/apply/index.ts';
import { indexOldTree } from '../../src/deploy/apply/scan.ts';
import { ScanEntries } from '../../src/deploy/apply/scan-entries.ts';
import { readTar } from '../../src/layer/tar.ts';
import { sha256 } from '../../src/oci/digest.ts';
import { isTiuError } from '../../src/errors.ts';
import { makeTar } from '../helpers/tarball.ts';

async function collect(it: AsyncIterable<Buffer>): Promise<string> {
  const parts: Buffer[] = [];
  for await (const b of it) parts.push(b);
  return Buffer.concat(parts).toString();
}

const T = 1_700_000_000_000_000_000n;
let ino = 100n;

function reg(path: string, content: string, extra: Partial<TreeEntry> = {}): TreeEntry {
  return {
    path,
    type: 'reg',
    mode: 0o644,
    uid: 0,
    gid: 0,
    mtimeNs: T,
    xattrs: {},
    size: Buffer.byteLength(content),
    digest: sha256(content),
    source: { layer: 0, offset: 10, endOffset: 20 },
    ...extra,
  };
}
function dir(path: string, extra: Partial<TreeEntry> = {}): TreeEntry {
  return { path, type: 'dir', mode: 0o755, uid: 0, gid: 0, mtimeNs: T, xattrs: {}, size: 0, ...extra };
}
function hl(path: string, target: string): TreeEntry {
  return { path, type: 'hardlink', mode: 0o644, uid: 0, gid: 0, mtimeNs: T, xattrs: {}, size: 0, linkname: target };
}

/** An old tree described in memory, with a hasher that counts what it hashes. */
function oldTree(
  files: Record<
    string,
    {
      content?: string;
      type?: ExistingEntry['type'];
      mode?: number;
      uid?: number;
      ino?: bigint;
      nlink?: number;
      link?: string;
      mtimeNs?: bigint;
    }
  >,
): { old: OldTree; hasher: ContentHasher & { hashed: string[] }; contents: Map<string, string> } {
  const entries = new Map<string, ExistingEntry>();
  const contents = new Map<string, string>();
  const mk = (
    path: string,
    type: ExistingEntry['type'],
    o: {
      content?: string;
      mode?: number;
      uid?: number;
      ino?: bigint;
      nlink?: number;
      link?: string;
      mtimeNs?: bigint;
    } = {},
  ): ExistingEntry => {
    const e: ExistingEntry = {
      path,
      type,
      mode: o.mode ?? (type === 'dir' ? 0o755 : 0o644),
      uid: o.uid ?? 0,
      gid: 0,
      size: o.content ? Buffer.byteLength(o.content) : 0,
      mtimeNs: o.mtimeNs ?? T,
      ctimeNs: T,
      ino: o.ino ?? ino++,
      dev: 1n,
      nlink: o.nlink ?? 1,
      rdev: 0n,
      xattrs: {},
    };
    if (o.link) e.linkname = o.link;
    return e;
  };
  entries.set('', mk('', 'dir'));
  for (const [p, o] of Object.entries(files)) {
    entries.set(p, mk(p, o.type ?? (o.content !== undefined ? 'reg' : 'dir'), o));
    if (o.content !== undefined) contents.set(p, o.content);
  }
  const hashed: string[] = [];
  const hasher = {
    hashed,
    digestOf(e: ExistingEntry): Promise<string> {
      hashed.push(e.path);
      return Promise.resolve(sha256(contents.get(e.path) ?? ''));
    },
  };
  return { old: indexOldTree('/nowhere', entries), hasher, contents };
}

function kinds(plan: Awaited<ReturnType<typeof planApply>>): Record<string, string> {
  return Object.fromEntries(
    [...plan.actions].map((a) => [a.entry.path, a.kind + (a.replace ? '+replace' : '') + (a.from ? `<${a.from}` : '')]),
  );
}

describe('deploy/apply paths and layers', () => {
  it('normalises names and refuses escapes', () => {
    assert.equal(normalizeEntryPath('./usr//bin/'), 'usr/bin');
    assert.equal(normalizeEntryPath('.'), '');
    for (const bad of ['../x', 'a/../../x', '/etc/passwd', 'a/..', 'x\0y']) {
      assert.throws(
        () => normalizeEntryPath(bad),
        (e: unknown) => isTiuError(e, 'PATH_UNSAFE'),
        bad,
      );
    }
  });
  it('knows whiteouts and opaque markers', () => {
    assert.deepEqual(whiteoutOf('a/.wh.b'), { kind: 'whiteout', path: 'a/b' });
    assert.deepEqual(whiteoutOf('a/.wh..wh..opq'), { kind: 'opaque', dir: 'a' });
    assert.equal(whiteoutOf('a/b'), null);
  });
  it('flattens layers: whiteouts hide lower entries, opaque dirs hide lower content, same-layer entries survive', () => {
    const l0 = [dir('a'), reg('a/1', '1'), reg('a/2', '2'), dir('b'), reg('b/x', 'x'), dir('c'), reg('c/deep', 'd')];
    const l1 = [
      reg('a/.wh.1', ''),
      reg('b/y', 'y'),
      reg('b/.wh..wh..opq', ''),
      reg('c', 'file now'),
      reg('.wh.zzz', ''),
    ];
    const t = flattenLayers([l0, l1]);
    assert.deepEqual([...t.keys()].sort(), ['a', 'a/2', 'b', 'b/y', 'c']);
    assert.equal(t.get('c')!.type, 'reg');
  });
  it('resolves hardlink chains and refuses dangling or directory targets', () => {
    const t = flattenLayers([[reg('f', 'x'), hl('g', 'f'), hl('h', 'g')]]);
    assert.equal(t.get('h')!.linkname, 'f');
    assert.throws(
      () => flattenLayers([[hl('g', 'missing')]]),
      (e: unknown) => isTiuError(e, 'HARDLINK_INVALID'),
    );
    assert.throws(
      () => flattenLayers([[dir('d'), hl('g', 'd')]]),
      (e: unknown) => isTiuError(e, 'HARDLINK_INVALID'),
    );
    // a whiteout in an upper layer removes the target
    assert.throws(
      () => flattenLayers([[reg('f', 'x'), hl('g', 'f')], [reg('.wh.f', '')]]),
      (e: unknown) => isTiuError(e, 'HARDLINK_INVALID'),
    );
  });
});

describe('deploy/apply table of contents and tar reading', () => {
  it('reads zstd:chunked TOC entries', () => {
    const e = tocToEntries(
      {
        version: 1,
        entries: [
          { type: 'dir', name: 'usr/', mode: 0o755, modtime: '2024-01-02T03:04:05Z' },
          {
            type: 'reg',
            name: './usr/bin/ping',
            mode: 0o4755,
            uid: 0,
            gid: 0,
            size: 3,
            digest: sha256('abc'),
            offset: 100,
            endOffset: 150,
            modtime: '2024-01-02T03:04:05.123456789Z',
            xattrs: { 'security.capability': Buffer.from([1, 2]).toString('base64') },
          },
          { type: 'chunk', name: 'usr/bin/ping', offset: 150, endOffset: 170 },
          { type: 'reg', name: 'empty' },
          { type: 'symlink', name: 'lib', linkName: 'usr/lib' },
          { type: 'hardlink', name: 'usr/bin/ping2', linkName: '/usr/bin/ping' },
          { type: 'char', name: 'dev/null', devMajor: 1, devMinor: 3, mode: 0o666 },
        ],
      },
      2,
    );
    assert.equal(e.length, 6);
    assert.equal(e[1]!.path, 'usr/bin/ping');
    assert.equal(e[1]!.mode, 0o4755);
    assert.equal(e[1]!.mtimeNs, 1704164645123456789n);
    assert.deepEqual(e[1]!.source, { layer: 2, offset: 100, endOffset: 170 }, 'the chunk widened the range');
    assert.deepEqual(e[1]!.xattrs['security.capability'], Buffer.from([1, 2]));
    assert.equal(e[2]!.digest, EMPTY_SHA256);
    assert.equal(e[4]!.linkname, 'usr/bin/ping');
    assert.equal(e[5]!.devmajor, 1);
    assert.throws(
      () => tocToEntries({ version: 1, entries: [{ type: 'reg', name: '../x', size: 0 }] }, 0),
      (x: unknown) => isTiuError(x, 'PATH_UNSAFE'),
    );
    assert.throws(
      () => tocToEntries({ version: 1, entries: [{ type: 'reg', name: 'x', size: 5 }] }, 0),
      (x: unknown) => isTiuError(x, 'ENTRY_INVALID'),
    );
    assert.throws(
      () => tocToEntries({ version: 1, entries: [{ type: 'socket', name: 'x' } as never] }, 0),
      (x: unknown) => isTiuError(x, 'ENTRY_INVALID'),
    );
    assert.throws(
      () => tocToEntries({ version: 1, entries: [{ type: 'chunk', name: 'x', offset: 1, endOffset: 2 }] }, 0),
      (x: unknown) => isTiuError(x, 'ENTRY_INVALID'),
    );
  });
  it('takes TOC names that are not UTF-8 byte-exact, as two different entries', () => {
    const entries = tocToEntries(
      {
        version: 1,
        entries: [
          { type: 'reg', name: './caf\xe9', size: 0 },
          { type: 'reg', name: './caf\xe8', size: 0 },
          { type: 'symlink', name: 'l\n', linkName: '\xff' },
        ],
      },
      0,
    );
    assert.deepEqual(
      entries.map((e) => [e.path, e.linkname]),
      [
        ['caf\xe9', undefined],
        ['caf\xe8', undefined],
        ['l\n', '\xff'],
      ],
    );
  });
  it('reads tar with long names and raw binary pax xattrs', async () => {
    const long = 'd/' + 'n'.repeat(150);
    const cap = Buffer.from([1, 0, 0, 2, 0xff, 0xfe, 0, 0x80]);
    const tar = makeTar([
      { name: long, content: 'hello', xattrs: { 'security.capability': cap }, mode: 0o4755, uid: 7, gid: 8 },
      { name: 'l', type: '2', linkname: 'x'.repeat(120) },
    ]);
    const got = [];
    for await (const t of readTar(Readable.from([tar.subarray(0, 700), tar.subarray(700)])))
      got.push({
        name: t.name,
        type: t.type,
        mode: t.mode,
        uid: t.uid,
        x: t.xattrs,
        link: t.linkname,
        body: await collect(t.body()),
      });
    assert.equal(got[0]!.name, long);
    assert.equal(got[0]!.body, 'hello');
    assert.equal(got[0]!.mode, 0o4755);
    assert.deepEqual(got[0]!.x['security.capability'], cap);
    assert.equal(got[1]!.link, 'x'.repeat(120));
  });
  it('refuses corrupt and truncated tar streams with TAR_INVALID', async () => {
    const tar = makeTar([{ name: 'f', content: 'x'.repeat(2000) }]);
    const bad = Buffer.from(tar);
    bad[10] = 0x41;
    await assert.rejects(entriesFromTar(Readable.from([bad]), 0), (e: unknown) => isTiuError(e, 'TAR_INVALID'));
    await assert.rejects(entriesFromTar(Readable.from([tar.subarray(0, 1024)]), 0), (e: unknown) =>
      isTiuError(e, 'TAR_INVALID'),
    );
  });
});

describe('deploy/apply planner', () => {
  it('keeps matching files, fixes metadata, reflinks moved content, writes only new content, deletes the rest', async () => {
    const { old, hasher } = oldTree({
      etc: {},
      'etc/same': { content: 'same' },
      'etc/chmod': { content: 'chmod', mode: 0o600 },
      'etc/changed': { content: 'v1' },
      usr: {},
      'usr/old-place': { content: 'moved content' },
      'usr/gone': { content: 'bye' },
      olddir: {},
      'olddir/x': { content: 'x' },
      'was-file': { content: 'f' },
    });
    const tree = flattenLayers([
      [
        dir('etc'),
        reg('etc/same', 'same'),
        reg('etc/chmod', 'chmod'),
        reg('etc/changed', 'v2'),
        dir('usr'),
        reg('usr/new-place', 'moved content'),
        reg('usr/brand-new', 'fresh!'),
        reg('usr/twice-a', 'dup content'),
        reg('usr/twice-b', 'dup content'),
        dir('was-file'),
      ],
    ]);
    const plan = await planApply(tree, old, hasher);
    assert.deepEqual(kinds(plan), {
      '': 'keep',
      etc: 'keep',
      'etc/changed': 'write+replace',
      'etc/chmod': 'meta',
      'etc/same': 'keep',
      usr: 'keep',
      'usr/brand-new': 'write',
      'usr/new-place': 'reflink<usr/old-place',
      'usr/twice-a': 'write',
      'usr/twice-b': 'reflink<usr/twice-a',
      'was-file': 'create+replace',
    });
    assert.deepEqual(plan.deletes, ['olddir', 'usr/gone', 'usr/old-place']);
    assert.deepEqual(
      plan.fetch.map((e) => e.path),
      ['etc/changed', 'usr/brand-new', 'usr/twice-a'],
    );
    assert.deepEqual(plan.fetch[0]!.source, { layer: 0, offset: 10, endOffset: 20 });
    assert.equal(plan.summary.write.bytes, 2 + 6 + 11);
    assert.equal(plan.summary.delete.count, 4);
    assert.deepEqual([...plan.actions].find((a) => a.entry.path === 'etc/chmod')!.fix, { mode: true });
    // The apply after its download takes content by action: the same plan without the list.
    const unlisted = await planApply(tree, old, hasher, { noFetchList: true });
    assert.deepEqual(unlisted.fetch, []);
    assert.deepEqual(kinds(unlisted), kinds(plan));
    assert.deepEqual(unlisted.summary, plan.summary);
  });

  it('decides from the digests a hasher knows without reading, and hashes only the files it does not know', async () => {
    const files = {
      etc: {},
      'etc/same': { content: 'same' },
      'etc/changed': { content: 'v1' },
      'usr/old-place': { content: 'moved content' },
      'usr/other': { content: 'other content' },
    };
    const newTree = () =>
      flattenLayers([
        [
          reg('etc/same', 'same'),
          reg('etc/changed', 'v2'),
          reg('usr/new-place', 'moved content'),
          reg('usr/twice-a', 'dup content'),
          reg('usr/twice-b', 'dup content'),
        ],
      ]);
    const plain = oldTree(files);
    const expected = kinds(await planApply(newTree(), plain.old, plain.hasher));
    assert.equal(expected['usr/new-place'], 'reflink<usr/old-place');
    assert.equal(expected['usr/twice-b'], 'reflink<usr/twice-a');
    // A hasher that knows every digest is never asked to read one.
    const all = oldTree(files);
    const knowing: ContentHasher = {
      digestOf: (e) => Promise.reject(new Error(`read ${e.path}`)),
      knownMatch: (e, digest) => sha256(all.contents.get(e.path) ?? '') === digest,
    };
    assert.deepEqual(kinds(await planApply(newTree(), all.old, knowing)), expected);
    // One it does not know is read (through digestOf), the others are not; the plan is the same.
    const some = oldTree(files);
    const partly: ContentHasher = {
      digestOf: (e) => some.hasher.digestOf(e),
      knownMatch: (e, digest) =>
        e.path === 'usr/old-place' ? undefined : sha256(some.contents.get(e.path) ?? '') === digest,
    };
    assert.deepEqual(kinds(await planApply(newTree(), some.old, partly)), expected);
    assert.deepEqual(some.hasher.hashed, ['usr/old-place']);
    // From a real scan's rows (the planner peeks at them through one reused object): the same plan.
    const rows = oldTree(files);
    const scan = new ScanEntries();
    for (const e of rows.old.entries.values()) scan.set(e);
    assert.deepEqual(kinds(await planApply(newTree(), indexOldTree('/nowhere', scan), rows.hasher)), expected);
  });

  it('an mtime within the microsecond utimes can set is kept, so a tree the executor wrote plans as unchanged', async () => {
    // utimes takes float seconds: 1795702796.850619938 s is set as ...850620031 ns.
    const set = 1_795_702_796_850_619_938n;
    const { old, hasher } = oldTree({
      d: { mtimeNs: set + 93n },
      'd/a': { content: 'a', mtimeNs: set - 400n },
      'd/b': { content: 'b', mtimeNs: set + 1500n },
    });
    const plan = await planApply(
      flattenLayers([
        [dir('d', { mtimeNs: set }), reg('d/a', 'a', { mtimeNs: set }), reg('d/b', 'b', { mtimeNs: set })],
      ]),
      old,
      hasher,
    );
    assert.deepEqual(kinds(plan), { '': 'keep', d: 'keep', 'd/a': 'keep', 'd/b': 'meta' });
    assert.deepEqual([...plan.actions].find((a) => a.entry.path === 'd/b')!.fix, { mtime: true });
  });

  it('hashes only old files whose size matches a new entry', async () => {
    const { old, hasher } = oldTree({ a: { content: '12345' }, b: { content: '1234567890' }, c: { content: 'abcde' } });
    await planApply(flattenLayers([[reg('x', 'zzzzz')]]), old, hasher);
    assert.deepEqual(hasher.hashed.sort(), ['a', 'c']);
  });

  it('gives a file its own inode when its hardlink group changes, and keeps unchanged groups', async () => {
    const { old, hasher } = oldTree({
      a: { content: 'A', ino: 7n, nlink: 2 },
      b: { content: 'A', ino: 7n, nlink: 2 },
      c: { content: 'C', ino: 9n, nlink: 2 },
      d: { content: 'C', ino: 9n, nlink: 2 },
    });
    const tree = flattenLayers([[reg('a', 'A'), reg('b', 'A'), reg('c', 'C'), hl('d', 'c')]]);
    const plan = await planApply(tree, old, hasher);
    const k = kinds(plan);
    assert.equal(k.a, 'clone<a');
    assert.equal(k.b, 'clone<b');
    assert.equal(k.c, 'keep');
    assert.equal(k.d, 'keep');
  });

  it('owner changes re-set setuid bits and security.capability', async () => {
    const { old, hasher } = oldTree({ ping: { content: 'P', mode: 0o4755, uid: 0 } });
    old.entries.get('ping')!.xattrs = { 'security.capability': Buffer.from([1]) };
    const plan = await planApply(
      flattenLayers([
        [reg('ping', 'P', { mode: 0o4755, uid: 5, xattrs: { 'security.capability': Buffer.from([1]) } })],
      ]),
      old,
      hasher,
    );
    assert.deepEqual(plan.actions.at(1)!.fix, { owner: true, mode: true, xattrSet: ['security.capability'] });
  });

  it('refuses entries below a non-directory of the image and keeps preserved paths', async () => {
    const { old, hasher } = oldTree({ '.snapshots': {}, '.snapshots/1': {}, var: {}, 'var/log': {} });
    await assert.rejects(
      planApply(
        flattenLayers([[{ ...reg('l', ''), type: 'symlink', linkname: '/etc' }, reg('l/passwd', 'x')]]),
        old,
        hasher,
      ),
      (e: unknown) => isTiuError(e, 'PATH_UNSAFE'),
    );
    const plan = await planApply(flattenLayers([[dir('usr')]]), old, hasher, { preserve: ['.snapshots', 'var'] });
    assert.deepEqual(plan.deletes, []);
  });
});
