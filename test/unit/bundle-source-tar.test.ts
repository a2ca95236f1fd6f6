import assert from 'node:assert/strict';
import { mkdtemp, open, rm, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type { TreeEntry } from '../../src/layer/entry.ts';
import { TreeBuilder } from '../../src/bundle/source-tar.ts';
import { encodeHeader, END_OF_ARCHIVE, paddingFor } from '../../src/layer/tar.ts';
import { isTiuError } from '../../src/errors.ts';

function ent(path: string, over: Partial<TreeEntry> = {}): TreeEntry {
  return { path, type: 'reg', mode: 0o644, uid: 0, gid: 0, mtimeNs: 1_000_000_000n, size: 0, xattrs: {}, ...over };
}
function file(path: string, text: string): TreeEntry {
  const data = Buffer.from(text);
  return ent(path, { size: data.length, content: { data } });
}
function tar(...entries: TreeEntry[]): Readable {
  const parts: Buffer[] = [];
  for (const e of entries) {
    parts.push(encodeHeader(e));
    if (e.type === 'reg' && e.size) parts.push((e.content as { data: Buffer }).data, Buffer.alloc(paddingFor(e.size)));
  }
  parts.push(END_OF_ARCHIVE);
  return Readable.from([Buffer.concat(parts)]);
}
const dir = (p: string) => ent(p, { type: 'dir', mode: 0o755 });

describe('bundle tar and image sources', function () {
  let work: string;
  let spool: FileHandle;
  let tb: TreeBuilder;
  beforeEach(async function () {
    work = await mkdtemp(join(tmpdir(), 'tiu-src-'));
    spool = await open(join(work, 'spool'), 'w+');
    tb = new TreeBuilder(spool, join(work, 'spool'));
  });
  afterEach(async function () {
    await spool.close();
    await rm(work, { recursive: true, force: true });
  });

  async function content(path: string): Promise<string> {
    const e = tb.entries.get(path)!;
    const c = e.content as { offset: number };
    const buf = Buffer.alloc(e.size);
    await spool.read(buf, 0, e.size, c.offset);
    return buf.toString();
  }

  it('applies layers in order with whiteouts and opaque directories', async function () {
    await tb.addTar(
      tar(
        dir('etc'),
        file('etc/a', 'A1'),
        file('etc/b', 'B'),
        dir('opt'),
        dir('opt/x'),
        file('opt/x/y', 'Y'),
        dir('srv'),
        file('srv/old', 'O'),
      ),
      'l1',
      { whiteouts: true },
    );
    await tb.addTar(
      tar(
        file('etc/a', 'A2'),
        ent('etc/.wh.b'),
        ent('.wh.opt'),
        dir('srv'),
        file('srv/new', 'N'),
        ent('srv/.wh..wh..opq'),
      ),
      'l2',
      { whiteouts: true },
    );
    assert.deepEqual([...tb.entries.keys()].sort(), ['etc', 'etc/a', 'srv', 'srv/new']);
    assert.equal(await content('etc/a'), 'A2');
    assert.equal(await content('srv/new'), 'N');
  });

  it('without whiteouts (a kiwi tar) .wh. files are ordinary files', async function () {
    await tb.addTar(tar(dir('etc'), file('etc/.wh.b', 'x')), 'kiwi.tar');
    assert.ok(tb.entries.has('etc/.wh.b'));
  });

  it('resolves hardlinks to the file they name, and refuses dangling ones', async function () {
    await tb.addTar(tar(dir('usr'), file('usr/a', 'data'), ent('usr/b', { type: 'hardlink', linkname: 'usr/a' })), 't');
    const b = tb.entries.get('usr/b')!;
    assert.equal(b.type, 'hardlink');
    assert.equal(b.linkname, 'usr/a');
    assert.equal(b.size, 4);
    await assert.rejects(tb.addTar(tar(ent('usr/c', { type: 'hardlink', linkname: 'usr/missing' })), 't'), (e) =>
      isTiuError(e, 'TAR_INVALID'),
    );
    await assert.rejects(tb.addTar(tar(ent('usr/d', { type: 'hardlink', linkname: '../../etc/shadow' })), 't'), (e) =>
      isTiuError(e, 'PATH_UNSAFE'),
    );
  });

  it('a directory replaced by a file loses its children', async function () {
    await tb.addTar(tar(dir('a'), file('a/x', '1')), 't');
    await tb.addTar(tar(file('a', 'now a file')), 't');
    assert.deepEqual([...tb.entries.keys()], ['a']);
  });

  it('refuses a truncated archive', async function () {
    const whole = Buffer.concat((await tar(file('big', 'x'.repeat(3000))).toArray()) as Buffer[]);
    await assert.rejects(tb.addTar(Readable.from([whole.subarray(0, 1500)]), 't'), (e) => isTiuError(e, 'TAR_INVALID'));
  });
});
