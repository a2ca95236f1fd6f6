import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import type { TreeEntry } from '../../src/layer/entry.ts';
import { normalizeTreePath } from '../../src/layer/entry.ts';
import {
  ByteReader,
  encodeHeader,
  END_OF_ARCHIVE,
  paddingFor,
  readTar,
  type TarMember,
} from '../../src/layer/tar.ts';
import { isTiuError } from '../../src/errors.ts';

function entry(over: Partial<TreeEntry>): TreeEntry {
  return {
    path: 'x',
    type: 'reg',
    mode: 0o644,
    uid: 0,
    gid: 0,
    mtime: 1_700_000_000,
    mtimeNsec: 0,
    size: 0,
    xattrs: [],
    ...over,
  };
}

function tarOf(entries: TreeEntry[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    parts.push(encodeHeader(e));
    if (e.type === 'reg' && e.size > 0) {
      parts.push((e.content as { data: Buffer }).data, Buffer.alloc(paddingFor(e.size)));
    }
  }
  parts.push(END_OF_ARCHIVE);
  return Buffer.concat(parts);
}

async function readAll(buf: Buffer): Promise<[TarMember, Buffer][]> {
  const r = new ByteReader(Readable.from([buf.subarray(0, 700), buf.subarray(700)]));
  const out: [TarMember, Buffer][] = [];
  for await (const m of readTar(r, 'test')) {
    const pieces: Buffer[] = [];
    if (m.typeflag === '0') for await (const p of r.pieces(m.size)) pieces.push(p);
    out.push([m, Buffer.concat(pieces)]);
  }
  return out;
}

describe('bundle tar format', function () {
  it('round-trips names, owners, times, devices and binary xattrs byte-exact', async function () {
    const odd = Buffer.from('usr/share/latin1-\xe9\xff\n', 'latin1').toString('latin1');
    const long = 'usr/' + 'a'.repeat(120) + '/' + 'b'.repeat(90);
    const unsplittable = 'usr/' + 'c'.repeat(200);
    const cap = Buffer.from('0100000200200000000000000000000000000000', 'hex');
    const entries: TreeEntry[] = [
      entry({ path: 'usr', type: 'dir', mode: 0o755 }),
      entry({
        path: odd,
        size: 3,
        content: { data: Buffer.from('abc') },
        xattrs: [
          ['security.capability', cap],
          ['user.x', Buffer.from([0, 0xff, 10])],
        ],
      }),
      entry({ path: long, uid: 3_000_000, gid: 12345, mtime: 315_532_800, mtimeNsec: 123_456_789 }),
      entry({ path: unsplittable, type: 'symlink', link: 'l'.repeat(150) + '\xff', mode: 0o777 }),
      entry({ path: 'usr/dev', type: 'char', devMajor: 240, devMinor: 300_000, mode: 0o620 }),
      entry({ path: 'usr/su', mode: 0o4755 }),
      entry({ path: 'usr/link', type: 'hardlink', link: odd }),
    ];
    const got = await readAll(tarOf(entries));
    assert.equal(got.length, entries.length);
    const [dir, file, big, sym, dev, su, hl] = got.map(([m]) => m);
    assert.equal(dir!.name, 'usr/');
    assert.equal(dir!.typeflag, '5');
    assert.equal(file!.name, odd);
    assert.deepEqual(file!.xattrs, entries[1]!.xattrs);
    assert.equal(got[1]![1].toString(), 'abc');
    assert.equal(big!.name, long);
    assert.equal(big!.uid, 3_000_000);
    assert.equal(big!.gid, 12345);
    assert.equal(big!.mtime, 315_532_800);
    assert.equal(big!.mtimeNsec, 123_456_789);
    assert.equal(sym!.name, unsplittable);
    assert.equal(sym!.linkname, 'l'.repeat(150) + '\xff');
    assert.equal(dev!.devMajor, 240);
    assert.equal(dev!.devMinor, 300_000);
    assert.equal(su!.mode, 0o4755);
    assert.equal(hl!.typeflag, '1');
    assert.equal(hl!.linkname, odd);
  });

  it('is deterministic', function () {
    const e = entry({
      path: 'a/b',
      xattrs: [
        ['user.b', Buffer.from('2')],
        ['user.a', Buffer.from('1')],
      ],
      mtimeNsec: 5,
    });
    assert.ok(encodeHeader(e).equals(encodeHeader({ ...e })));
  });

  it('refuses a corrupt header with TAR_INVALID', async function () {
    const t = tarOf([entry({ path: 'a' })]);
    t[10] = t[10]! ^ 0xff;
    await assert.rejects(readAll(t), (e) => isTiuError(e, 'TAR_INVALID'));
  });

  it('normalises member paths and refuses escapes', function () {
    assert.equal(normalizeTreePath('./usr//bin/./x', 't'), 'usr/bin/x');
    assert.equal(normalizeTreePath('./', 't'), '');
    for (const bad of ['../x', 'a/../../x', '/etc/passwd', 'a/..']) {
      assert.throws(
        () => normalizeTreePath(bad, 't'),
        (e) => isTiuError(e, 'TAR_UNSAFE_PATH'),
      );
    }
  });
});
