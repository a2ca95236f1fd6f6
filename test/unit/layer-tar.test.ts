import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { bstr, type TreeEntry } from '../../src/layer/entry.ts';
import { compareBytes, comparePaths, MAX_COMPONENT, MAX_PATH, normalizeEntryPath } from '../../src/layer/paths.ts';
import {
  BLOCK,
  ByteReader,
  encodeHeader,
  END_OF_ARCHIVE,
  headerLength,
  headerOf,
  memberEntry,
  paddingFor,
  readTar,
  type TarMember,
  writeHeader,
} from '../../src/layer/tar.ts';
import { isTiuError } from '../../src/errors.ts';

function entry(over: Partial<TreeEntry>): TreeEntry {
  return {
    path: 'x',
    type: 'reg',
    mode: 0o644,
    uid: 0,
    gid: 0,
    mtimeNs: 1_700_000_000n * 1_000_000_000n,
    size: 0,
    xattrs: {},
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
    for await (const p of m.body()) pieces.push(p);
    out.push([m, Buffer.concat(pieces)]);
  }
  return out;
}

/** One pax 'x' header with these records, then a ustar header for `name`. */
function paxTar(records: Record<string, Buffer>, name = 'f', typeflag = '0'): Buffer {
  const rec = (k: string, v: Buffer): Buffer => {
    const body = Buffer.concat([Buffer.from(` ${k}=`), v, Buffer.from('\n')]);
    let n = body.length + 1;
    while (String(n).length + body.length !== n) n = String(n).length + body.length;
    return Buffer.concat([Buffer.from(String(n)), body]);
  };
  const body = Buffer.concat(Object.entries(records).map(([k, v]) => rec(k, v)));
  const header = (n: string, flag: string, size: number): Buffer => {
    const h = Buffer.alloc(BLOCK);
    h.write(n, 0, 'latin1');
    h.write('0000644\0', 100);
    h.write('0000000\0', 108);
    h.write('0000000\0', 116);
    h.write(size.toString(8).padStart(11, '0') + '\0', 124);
    h.write('00000000000\0', 136);
    h.write(flag, 156);
    h.write('ustar\x0000', 257, 'latin1');
    h.fill(0x20, 148, 156);
    let sum = 0;
    for (const b of h) sum += b;
    h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148);
    return h;
  };
  return Buffer.concat([
    header('PaxHeaders/f', 'x', body.length),
    body,
    Buffer.alloc(paddingFor(body.length)),
    header(name, typeflag, 0),
    END_OF_ARCHIVE,
  ]);
}

describe('layer tar format', function () {
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
        xattrs: { 'security.capability': cap, 'user.x': Buffer.from([0, 0xff, 10]) },
      }),
      entry({ path: long, uid: 3_000_000, gid: 12345, mtimeNs: 315_532_800_123_456_789n }),
      entry({ path: unsplittable, type: 'symlink', linkname: 'l'.repeat(150) + '\xff', mode: 0o777 }),
      entry({ path: 'usr/dev', type: 'char', devmajor: 240, devminor: 300_000, mode: 0o620 }),
      entry({ path: 'usr/su', mode: 0o4755 }),
      entry({ path: 'usr/link', type: 'hardlink', linkname: odd }),
      entry({ path: 'usr/old', mtimeNs: -1_500_000_000n }),
    ];
    const got = await readAll(tarOf(entries));
    assert.equal(got.length, entries.length);
    const [dir, file, big, sym, dev, su, hl, old] = got.map(([m]) => m);
    assert.equal(dir!.name, 'usr/');
    assert.equal(dir!.type, 'dir');
    assert.equal(file!.name, odd);
    assert.deepEqual(file!.xattrs, entries[1]!.xattrs);
    assert.equal(got[1]![1].toString(), 'abc');
    assert.equal(big!.name, long);
    assert.equal(big!.uid, 3_000_000);
    assert.equal(big!.gid, 12345);
    assert.equal(big!.mtimeNs, 315_532_800_123_456_789n);
    assert.equal(sym!.name, unsplittable);
    assert.equal(sym!.linkname, 'l'.repeat(150) + '\xff');
    assert.equal(dev!.devmajor, 240);
    assert.equal(dev!.devminor, 300_000);
    assert.equal(su!.mode, 0o4755);
    assert.equal(hl!.type, 'hardlink');
    assert.equal(hl!.linkname, odd);
    assert.equal(old!.mtimeNs, -1_500_000_000n);
  });

  it('round-trips awkward names: not UTF-8, a newline, a 255-byte component, a 4096-byte path', async function () {
    const notUtf8 = bstr(Buffer.from([0x63, 0x61, 0x66, 0xe9])); // "caf\xe9"
    const component = 'n'.repeat(MAX_COMPONENT);
    // 17 components of 240 bytes and 16 slashes: exactly PATH_MAX.
    const full = Array.from({ length: 17 }, (_, i) => String(i % 10).repeat(240)).join('/');
    assert.equal(full.length, MAX_PATH);
    const names = [notUtf8, 'with\nnewline', `d/${component}`, full, `${notUtf8}/\xff\xfe`];
    const entries = names.map((path, i) =>
      entry({ path, size: 1, content: { data: Buffer.from([i]) }, xattrs: { 'user.v': Buffer.from([0xff, i]) } }),
    );
    const got = await readAll(tarOf(entries));
    assert.deepEqual(
      got.map(([m]) => m.name),
      names,
    );
    for (const [i, [m, data]] of got.entries()) {
      assert.equal(normalizeEntryPath(m.name), names[i]);
      assert.deepEqual(data, Buffer.from([i]));
      assert.deepEqual(m.xattrs['user.v'], Buffer.from([0xff, i]));
      assert.deepEqual(memberEntry(m, names[i]!).path, names[i]);
    }
  });

  it('reads LIBARCHIVE.xattr records (URL-encoded names, base64 values) and refuses a malformed one', async function () {
    const cap = Buffer.from([1, 0, 0, 2, 0xff]);
    const [[m]] = (await readAll(
      paxTar({ 'LIBARCHIVE.xattr.security.capability': Buffer.from(cap.toString('base64')) }),
    )) as [[TarMember, Buffer]];
    assert.deepEqual(m.xattrs['security.capability'], cap);
    await assert.rejects(readAll(paxTar({ 'LIBARCHIVE.xattr.user.%zz': Buffer.from('eA==') })), (e) =>
      isTiuError(e, 'TAR_INVALID'),
    );
  });

  it('takes a pax path over the header name, bytes as they are', async function () {
    const [[m]] = (await readAll(paxTar({ path: Buffer.from([0x61, 0x2f, 0xe9, 0x0a]) }, 'lossy'))) as [
      [TarMember, Buffer],
    ];
    assert.equal(m.name, 'a/\xe9\n');
  });

  it('reports an unknown type for the consumer to refuse (TAR_ENTRY_UNSUPPORTED) and refuses sparse members', async function () {
    const [[m]] = (await readAll(paxTar({}, 'v', 'V'))) as [[TarMember, Buffer]];
    assert.equal(m.type, undefined);
    assert.throws(
      () => memberEntry(m, 'v'),
      (e) => isTiuError(e, 'TAR_ENTRY_UNSUPPORTED'),
    );
    await assert.rejects(readAll(paxTar({ 'GNU.sparse.major': Buffer.from('1') })), (e) =>
      isTiuError(e, 'TAR_ENTRY_UNSUPPORTED'),
    );
  });

  it('is deterministic', function () {
    const e = entry({
      path: 'a/b',
      xattrs: { 'user.b': Buffer.from('2'), 'user.a': Buffer.from('1') },
      mtimeNs: 5n,
    });
    const again = entry({
      path: 'a/b',
      xattrs: { 'user.a': Buffer.from('1'), 'user.b': Buffer.from('2') },
      mtimeNs: 5n,
    });
    assert.ok(encodeHeader(e).equals(encodeHeader(again)));
  });

  it('writes a header into a used buffer at an offset exactly as encodeHeader makes it', function () {
    const long = 'usr/share/' + 'd'.repeat(120) + '/' + 'n'.repeat(90);
    const cases = [
      entry({ path: 'etc/hostname', size: 9 }),
      entry({ path: 'usr/lib', type: 'dir', mode: 0o755 }),
      entry({ path: long }),
      entry({ path: 'x'.repeat(300), xattrs: { 'security.capability': Buffer.from([1, 2, 3]) }, mtimeNs: 7n }),
      entry({ path: 'dev/null', type: 'char', devmajor: 1, devminor: 3 }),
      entry({ path: 'l', type: 'symlink', linkname: 'target/' + 't'.repeat(150) }),
    ];
    for (const e of cases) {
      const h = headerOf(e);
      const into = Buffer.alloc(100 + headerLength(h) + 100, 0xa5);
      const end = writeHeader(h, into, 100);
      assert.equal(end, 100 + headerLength(h));
      assert.ok(into.subarray(100, end).equals(encodeHeader(e)), e.path.slice(0, 40));
      assert.ok(into.subarray(0, 100).every((b) => b === 0xa5) && into.subarray(end).every((b) => b === 0xa5));
    }
  });

  it('refuses a corrupt header and truncated content with TAR_INVALID', async function () {
    const t = tarOf([entry({ path: 'a' })]);
    t[10] = t[10]! ^ 0xff;
    await assert.rejects(readAll(t), (e) => isTiuError(e, 'TAR_INVALID'));
    const whole = tarOf([entry({ path: 'a', size: 1000, content: { data: Buffer.alloc(1000, 1) } })]);
    await assert.rejects(readAll(whole.subarray(0, 1000)), (e) => isTiuError(e, 'TAR_INVALID'));
  });
});

describe('layer path rules', function () {
  it('normalises member paths and refuses escapes, NUL, absolute names and over-long names', function () {
    assert.equal(normalizeEntryPath('./usr//bin/./x/'), 'usr/bin/x');
    assert.equal(normalizeEntryPath('./'), '');
    assert.equal(normalizeEntryPath('/etc/x', { allowAbsolute: true }), 'etc/x');
    for (const bad of ['../x', 'a/../../x', '/etc/passwd', 'a/..', 'a\0b', 'x/'.repeat(2049)]) {
      assert.throws(
        () => normalizeEntryPath(bad),
        (e) => isTiuError(e, 'PATH_UNSAFE'),
        JSON.stringify(bad.slice(0, 20)),
      );
    }
    assert.equal(normalizeEntryPath('a/' + 'n'.repeat(255)), 'a/' + 'n'.repeat(255));
    assert.throws(
      () => normalizeEntryPath('a/' + 'n'.repeat(256)),
      (e) => isTiuError(e, 'ENTRY_INVALID'),
    );
  });

  it('returns a name that is normal already as it is, and anything else as the long way makes it', function () {
    // The long way, as normalizeEntryPath did it for every name before it kept normal ones whole.
    const longWay = (name: string) =>
      name
        .split('/')
        .filter((p) => p !== '' && p !== '.')
        .join('/');
    for (const name of [
      '',
      'a',
      'usr/bin/x',
      '.a/..b/...',
      'a/.../b',
      'x/.wh..wh..opq',
      '\xe9/\xff',
      'a/' + 'n'.repeat(255),
    ]) {
      assert.equal(normalizeEntryPath(name), name);
      assert.equal(longWay(name), name);
    }
    for (const name of ['./a', 'a/.', 'a//b', 'a/', '/a', './', '.', 'a/./b/']) {
      const abs = name.startsWith('/');
      assert.equal(normalizeEntryPath(name, { allowAbsolute: abs }), longWay(name), JSON.stringify(name));
    }
    for (const bad of ['..', 'a/..', '../a', 'a/../b'])
      assert.throws(
        () => normalizeEntryPath(bad),
        (e) => isTiuError(e, 'PATH_UNSAFE'),
        bad,
      );
    assert.throws(
      () => normalizeEntryPath('n'.repeat(256) + '/a'),
      (e) => isTiuError(e, 'ENTRY_INVALID'),
    );
  });

  it('orders by bytes (the build) and parents first (the apply)', function () {
    assert.equal(compareBytes('a.b', 'a/b'), -1);
    assert.equal(comparePaths('a.b', 'a/b'), 1);
    assert.equal(compareBytes('\xe9', 'z'), 1);
  });

  it('orders paths as comparing them component by component does, without splitting them', function () {
    // The order by components, as comparePaths was written before it compared characters.
    const byComponents = (a: string, b: string): number => {
      const aa = a === '' ? [] : a.split('/');
      const bb = b === '' ? [] : b.split('/');
      for (let i = 0; i < Math.min(aa.length, bb.length); i++) if (aa[i] !== bb[i]) return aa[i]! < bb[i]! ? -1 : 1;
      return aa.length - bb.length;
    };
    let seed = 7;
    const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) >>> 8) % n;
    const names = ['a', 'b', 'a-b', 'a.b', 'ab', '\x01', '\xe9', 'z', 'a b'];
    const path = () => Array.from({ length: rand(4) }, () => names[rand(names.length)]!).join('/');
    for (let i = 0; i < 20_000; i++) {
      const a = path();
      const b = rand(5) === 0 ? a : path();
      assert.equal(
        Math.sign(comparePaths(a, b)),
        Math.sign(byComponents(a, b)),
        `${JSON.stringify(a)} vs ${JSON.stringify(b)}`,
      );
    }
  });
});
