import assert from 'node:assert/strict';
import { isDeepStrictEqual } from 'node:util';
import type { TreeEntry } from '../../src/layer/entry.ts';
import { findSorted, groupOf, largestFirst, layerOfGroup, planLayers } from '../../src/bundle/layers.ts';
import { ancestorsOf, compareBytes } from '../../src/layer/paths.ts';
import { parseOsRelease } from '../../src/bundle/os-release.ts';
import { applyTreeRules, TMPFILES_CONF } from '../../src/bundle/rules.ts';
import { isTiuError } from '../../src/errors.ts';

function e(path: string, over: Partial<TreeEntry> = {}): TreeEntry {
  const type = over.type ?? (path.endsWith('/') ? 'dir' : 'reg');
  const p = path.replace(/\/$/, '');
  return {
    path: p,
    type,
    mode: type === 'dir' ? 0o755 : 0o644,
    uid: 0,
    gid: 0,
    mtimeNs: 1000n * 1_000_000_000n,
    size: 0,
    xattrs: {},
    ...over,
  };
}

function tree(...paths: (string | TreeEntry)[]): TreeEntry[] {
  return paths.map((p) => (typeof p === 'string' ? e(p) : p));
}

describe('bundle tree rules', function () {
  it('leaves out runtime and subvolume contents but keeps the directories', function () {
    const out = applyTreeRules(
      tree(
        'run/',
        'run/x',
        'tmp/',
        'tmp/y',
        'home/',
        'home/u/',
        'home/u/f',
        'usr/',
        'usr/local/',
        'usr/local/bin/',
        'boot/',
        'boot/grub2/',
        'boot/grub2/x86_64-efi/',
        'boot/grub2/x86_64-efi/a.mod',
        'boot/grub2/grub.cfg',
        'dev/',
        'dev/null',
        '.snapshots/',
        '.snapshots/1/',
      ),
      { mtime: 0 },
    ).map((x) => x.path);
    assert.deepEqual(out, [
      '.snapshots',
      'boot',
      'boot/grub2',
      'boot/grub2/grub.cfg',
      'boot/grub2/x86_64-efi',
      'dev',
      'home',
      'run',
      'tmp',
      'usr',
      'usr/local',
    ]);
  });

  it('moves /var content to the factory with one tmpfiles.d line per top entry', function () {
    const out = applyTreeRules(
      tree(
        e('var/', { mtimeNs: 777_000_000_000n }),
        'var/lib/',
        'var/lib/a',
        e('var/run', { type: 'symlink', linkname: '../run' }),
        e('var/odd dir/', {}),
        'usr/',
      ),
      { mtime: 5 },
    );
    const paths = out.map((x) => x.path);
    assert.ok(paths.includes('var'));
    assert.ok(!paths.some((p) => p.startsWith('var/')));
    assert.ok(paths.includes('usr/share/factory/var/lib/a'));
    const conf = out.find((x) => x.path === TMPFILES_CONF)!;
    assert.equal(conf.mtimeNs, 777_000_000_000n);
    const text = (conf.content as { data: Buffer }).data.toString();
    assert.match(text, /^C \/var\/lib - - - - \/usr\/share\/factory\/var\/lib$/m);
    assert.match(text, /^C \/var\/odd\\x20dir - - - - \/usr\/share\/factory\/var\/odd\\x20dir$/m);
    assert.match(text, /^L \/var\/run - - - - \.\.\/run$/m);
    // synthesized parents take /var's mtime, so they only change when /var does
    assert.equal(out.find((x) => x.path === 'usr/share/factory')!.mtimeNs, 777_000_000_000n);
  });

  it('keeps /etc twice and honours --exclude', function () {
    const out = applyTreeRules(tree('etc/', 'etc/a', 'etc/secret/', 'etc/secret/k', 'usr/', 'usr/x'), {
      mtime: 0,
      exclude: ['/etc/secret', 'usr/x'],
    }).map((x) => x.path);
    assert.deepEqual(out, ['etc', 'etc/a', 'usr', 'usr/lib', 'usr/lib/tiu', 'usr/lib/tiu/etc', 'usr/lib/tiu/etc/a']);
    assert.throws(
      () => applyTreeRules([], { mtime: 0, exclude: ['/'] }),
      (err) => isTiuError(err, 'BUILD_OPTION_INVALID'),
    );
  });

  it('leads a hardlink group with its smallest path, and promotes a link whose target is left out', function () {
    const data = { data: Buffer.from('x') };
    const out = applyTreeRules(
      tree(
        'usr/',
        'usr/b',
        e('usr/b', { size: 1, content: data }),
        e('usr/a', { type: 'hardlink', linkname: 'usr/b', size: 1, content: data }),
        'opt/',
        e('opt/t', { size: 1, content: data }),
        e('usr/c', { type: 'hardlink', linkname: 'opt/t', size: 1, content: data }),
      ),
      { mtime: 0 },
    );
    const by = new Map(out.map((x) => [x.path, x]));
    assert.equal(by.get('usr/a')!.type, 'reg');
    assert.equal(by.get('usr/b')!.type, 'hardlink');
    assert.equal(by.get('usr/b')!.linkname, 'usr/a');
    assert.equal(by.get('usr/c')!.type, 'reg');
    assert.equal(by.get('usr/c')!.size, 1);
  });

  it('synthesizes missing parents and refuses a file where a directory must be', function () {
    assert.deepEqual(
      applyTreeRules(tree('usr/lib/x'), { mtime: 9 }).map((x) => [x.path, x.type, Number(x.mtimeNs / 1_000_000_000n)]),
      [
        ['usr', 'dir', 9],
        ['usr/lib', 'dir', 9],
        ['usr/lib/x', 'reg', 1000],
      ],
    );
    assert.throws(
      () => applyTreeRules(tree('usr', 'usr/x'), { mtime: 0 }),
      (err) => isTiuError(err, 'BUILD_SOURCE_UNSUPPORTED'),
    );
  });
});

describe('bundle layers', function () {
  const base = applyTreeRules(
    tree(
      'etc/',
      'etc/ssh/',
      'etc/ssh/c',
      'usr/',
      'usr/lib/',
      'usr/lib/modules/',
      'usr/lib/modules/k',
      'usr/share/',
      'usr/share/doc/',
      'usr/share/doc/d',
      'usr/bin/',
      'usr/bin/sh',
      'var/',
      'var/lib/',
      'var/lib/s',
      'boot/',
      'boot/vmlinuz',
    ),
    { mtime: 0 },
  );

  it('groups entries by their parent directory, folding the /etc copy and the factory /var', function () {
    assert.equal(groupOf('usr/lib/modules/6.1/kernel/x.ko'), 'usr/lib/modules');
    assert.equal(groupOf('usr/bin/perl'), 'usr/bin');
    assert.equal(groupOf('usr/lib/os-release'), 'usr/lib');
    assert.equal(groupOf('etc/ssh/sshd_config'), 'etc');
    assert.equal(groupOf('usr/lib/tiu/etc/ssh/sshd_config'), 'etc');
    assert.equal(groupOf('usr/share/factory/var/lib/dpkg/status'), 'var/lib/dpkg');
    assert.equal(groupOf('boot/vmlinuz'), 'boot');
    assert.ok(layerOfGroup('usr/bin', 8) >= 0 && layerOfGroup('usr/bin', 8) < 8);
  });

  /** Paths of the ancestors of `p`, outermost first. */
  const ancestors = (p: string) =>
    p
      .split('/')
      .slice(0, -1)
      .map((_, i, a) => a.slice(0, i + 1).join('/'));

  it('puts every non-directory in exactly one layer with all its parent directories, at most N layers', function () {
    const withEmptyDirs = [...base, e('usr/share/empty/', {}), e('usr/share/empty/deeper/', {}), e('mnt/', {})];
    for (const n of [1, 3, 8]) {
      const layers = planLayers(withEmptyDirs, n);
      assert.ok(layers.length <= n && layers.length >= 1);
      for (const x of withEmptyDirs) {
        const holders = layers.filter((l) => l.some((y) => y.path === x.path)).length;
        if (x.type === 'dir') assert.ok(holders >= 1, x.path);
        else assert.equal(holders, 1, x.path);
      }
      for (const l of layers) {
        const paths = new Set(l.map((x) => x.path));
        for (const x of l) for (const a of ancestors(x.path)) assert.ok(paths.has(a), `${a}/ missing for ${x.path}`);
        // The very same entry (metadata) wherever a directory appears.
        for (const x of l)
          assert.equal(
            x,
            withEmptyDirs.find((y) => y.path === x.path),
          );
        assert.deepEqual(
          l.map((x) => x.path),
          l.map((x) => x.path).sort(),
        );
      }
      // An empty directory's parents come with it, not in a layer of their own.
      const empty = layers.filter((l) => l.some((x) => x.path === 'usr/share/empty'));
      assert.equal(empty.length, 1);
      assert.ok(empty[0]!.some((x) => x.path === 'usr/share/empty/deeper'));
    }
  });

  it('a changed file changes only the layer that holds it; a changed directory only the layers below it', function () {
    const before = planLayers(base, 8);
    const changedFile = planLayers(
      base.map((x) => (x.path === 'usr/bin/sh' ? { ...x, mtimeNs: 2000_000_000_000n } : x)),
      8,
    );
    const changedDir = planLayers(
      base.map((x) => (x.path === 'usr/bin' ? { ...x, mtimeNs: 2000_000_000_000n } : x)),
      8,
    );
    for (const after of [changedFile, changedDir]) {
      assert.equal(after.length, before.length);
      const differ = after.filter((l, i) => !isDeepStrictEqual(l, before[i]));
      assert.equal(differ.length, 1);
      assert.ok(differ[0]!.some((x) => x.path === 'usr/bin/sh'));
    }
  });

  /** The plan as the rule says it, with maps and sets of paths (planLayers records it in typed arrays). */
  function referencePlan(entries: readonly TreeEntry[], n: number): TreeEntry[][] {
    const sorted = [...entries].sort((a, b) => compareBytes(a.path, b.path));
    const byPath = new Map(sorted.map((x) => [x.path, x]));
    const index = new Map<string, number>();
    const assign = (x: TreeEntry): number => {
      const known = index.get(x.path);
      if (known !== undefined) return known;
      const target = x.type === 'hardlink' && x.linkname !== undefined ? byPath.get(x.linkname) : undefined;
      const i = target && target !== x ? assign(target) : layerOfGroup(groupOf(x.path), n);
      index.set(x.path, i);
      return i;
    };
    const members: Set<string>[] = Array.from({ length: n }, () => new Set());
    const held = new Set<string>();
    const place = (x: TreeEntry, i: number) => {
      for (const p of [...ancestorsOf(x.path), x.path])
        if (byPath.has(p)) {
          members[i]!.add(p);
          held.add(p);
        }
    };
    for (const x of sorted) if (x.type !== 'dir') place(x, assign(x));
    for (const x of sorted.toReversed()) if (x.type === 'dir' && !held.has(x.path)) place(x, assign(x));
    return members.map((m) => sorted.filter((x) => m.has(x.path))).filter((l) => l.length > 0);
  }

  it('plans exactly as the rule says on random trees: missing parents, empty directories, hardlinks, 1 to 127 layers', function () {
    let seed = 7;
    const rand = (k: number) => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % k;
    };
    const names = ['usr', 'lib', 'bin', 'etc', 'var', 'a', 'a-b', 'a.b', 'x\xff', 'share', 'doc'];
    for (let round = 0; round < 40; round++) {
      const byPath = new Map<string, TreeEntry>();
      for (let k = 0; k < 300; k++) {
        const depth = 1 + rand(5);
        const parts = Array.from({ length: depth }, () => names[rand(names.length)]!);
        const path = parts.join('/');
        // Some parents are left out (planLayers takes what the tree has), some paths stay empty directories.
        if (rand(3) > 0) for (const a of ancestorsOf(path)) if (!byPath.has(a)) byPath.set(a, e(a + '/'));
        if (!byPath.has(path)) byPath.set(path, rand(6) === 0 ? e(path + '/') : e(path, { size: rand(100) }));
      }
      const files = [...byPath.values()].filter((x) => x.type === 'reg');
      // Links to files of the first half (as normalizeHardlinks leaves them: no link to a link), some to a path the tree lacks.
      const half = files.length >> 1;
      for (let k = 0; k < 20 && half > 0; k++) {
        const link = files[half + rand(files.length - half)]!;
        const target = rand(5) === 0 ? 'not/there' : files[rand(half)]!.path;
        byPath.set(link.path, { ...link, type: 'hardlink', linkname: target });
      }
      const entries = [...byPath.values()];
      for (const n of [1, 2, 3, 8, 33, 127]) {
        const got = planLayers(entries, n);
        assert.deepEqual(
          got.map((l) => l.map((x) => x.path)),
          referencePlan(entries, n).map((l) => l.map((x) => x.path)),
          `round ${round}, ${n} layers`,
        );
      }
    }
    const sorted = planLayers(tree('a/', 'a/b', 'a-b', 'b'), 1)[0]!;
    assert.equal(findSorted(sorted, 'a-b'), 1); // 'a' < 'a-b' < 'a/b' < 'b'
    assert.equal(findSorted(sorted, 'a/c'), -1);
  });

  it('keeps a hardlink with the file it links to', function () {
    const t = applyTreeRules(
      tree(
        'usr/',
        'usr/bin/',
        e('usr/bin/a', { size: 1, content: { data: Buffer.from('x') } }),
        e('var/', {}),
        e('var/z', { type: 'hardlink', linkname: 'usr/bin/a' }),
      ),
      { mtime: 0 },
    );
    const layers = planLayers(t, 16);
    const holder = layers.find((l) => l.some((x) => x.path === 'usr/bin/a'))!;
    assert.ok(holder.some((x) => x.path === 'usr/share/factory/var/z' && x.type === 'hardlink'));
  });

  it('writes the layers with the most content bytes first, ties in layer order, directories and links weigh nothing', function () {
    const file = (p: string, size: number) => e(p, { type: 'reg', size });
    const plan = [
      [e('a/', {}), file('a/x', 10)],
      [file('b/x', 300), e('b/l', { type: 'hardlink', linkname: 'b/x', size: 300 })],
      [file('c/x', 10)],
      [e('d/', {}), e('d/y', { type: 'symlink', linkname: 'x' })],
      [file('e/x', 200), file('e/y', 200)],
    ];
    assert.deepEqual(largestFirst(plan), [4, 1, 0, 2, 3]);
    assert.deepEqual(largestFirst([]), []);
  });
});

describe('os-release', function () {
  it('parses quoted and unquoted values', function () {
    const r = parseOsRelease(
      '# c\nNAME="openSUSE MicroOS"\nID=opensuse-microos\nVERSION_ID=\'2026\'\nX="a \\"q\\""\nbad line\n',
    );
    assert.deepEqual(r, { NAME: 'openSUSE MicroOS', ID: 'opensuse-microos', VERSION_ID: '2026', X: 'a "q"' });
  });
});
