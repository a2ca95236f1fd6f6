/**
 * tiu build against independent tools: GNU tar + zstd and umoci unpack the bundle back into
 * the source tree (minus the documented rules), skopeo reads and copies it, the same tree
 * builds to the same digest, one changed file changes one layer, a file's bytes come out of a
 * layer by Range through the table of contents alone, and hostile tars are refused.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile, utimes, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { zstdDecompressSync } from 'node:zlib';
import { Readable } from 'node:stream';
import { createWriteStream } from 'node:fs';
import { run } from '../../src/host/exec.ts';
import { buildBundle, type BuildResult } from '../../src/bundle/build.ts';
import { readTocFromFooter } from '../../src/layer/toc.ts';
import { fetchTocFile } from '../helpers/toc-file.ts';
import { encodeHeader, END_OF_ARCHIVE } from '../../src/layer/tar.ts';
import type { TreeEntry } from '../../src/layer/entry.ts';
import { isTiuError } from '../../src/errors.ts';
import { requireRoot } from '../helpers/env.ts';
import { startRegistry } from '../helpers/registry.ts';
import { OciLayoutTarget } from '../../src/content/oci-layout.ts';
import { fetchManifest } from '../../src/content/graph.ts';
import { diffTrees, linkGroups, makeNastyTree, snapshotTree, type NodeInfo } from '../helpers/tree.ts';

const EXCLUDED = [
  'run',
  'tmp',
  'proc',
  'sys',
  'dev',
  '.snapshots',
  'home',
  'root',
  'opt',
  'srv',
  'usr/local',
  'boot/writable',
  'boot/grub2/x86_64-efi',
];

/** What the bundle should hold, from the source tree, by the rules of DESIGN.md §4. */
function expectedTree(src: Map<string, NodeInfo>): {
  tree: Map<string, NodeInfo>;
  map: (p: string) => string | undefined;
} {
  const map = (p: string): string | undefined => {
    if (EXCLUDED.some((d) => p.startsWith(d + '/'))) return undefined;
    if (p.startsWith('var/')) return `usr/share/factory/${p}`;
    return p;
  };
  const tree = new Map<string, NodeInfo>();
  for (const [p, i] of src) {
    const m = map(p);
    if (m !== undefined) tree.set(m, i);
    if (p === 'etc' || p.startsWith('etc/')) tree.set(`usr/lib/tiu/${p}`, i);
  }
  return { tree, map };
}

/** Paths tiu adds to the tree itself. */
const SYNTHESIZED = [
  'usr/share/factory',
  'usr/share/factory/var',
  'usr/lib/tiu',
  'usr/lib/tmpfiles.d',
  'usr/lib/tmpfiles.d/tiu-factory-var.conf',
];

function blob(layout: string, digest: string): string {
  return join(layout, 'blobs', 'sha256', digest.slice('sha256:'.length));
}

describe('tiu build (integration)', function () {
  this.timeout(120_000);
  let work: string;
  let src: string;
  let srcSnap: Map<string, NodeInfo>;
  let zstdBuild: BuildResult;
  let layoutA: OciLayoutTarget;
  let layoutADir: string;
  const layout = (dir: string) => OciLayoutTarget.open(dir, { create: true });

  before(async function () {
    requireRoot(this, 'needs root (device nodes, owners, security xattrs)');
    work = await mkdtemp(join(tmpdir(), 'tiu-build-it-'));
    src = join(work, 'src');
    await makeNastyTree(src);
    srcSnap = await snapshotTree(src);
    layoutADir = join(work, 'layout-a');
    layoutA = await layout(layoutADir);
    zstdBuild = await buildBundle({ kind: 'directory', path: src }, layoutA, 'v1', {});
  });
  after(async function () {
    if (work) await rm(work, { recursive: true, force: true });
  });

  function checkUnpacked(actual: Map<string, NodeInfo>, opts: Parameters<typeof diffTrees>[2] = {}): void {
    const { tree, map } = expectedTree(srcSnap);
    const extras = [...actual.keys()].filter((p) => !tree.has(p)).sort();
    assert.deepEqual(extras, [...SYNTHESIZED].sort());
    for (const p of SYNTHESIZED) actual.delete(p);
    assert.deepEqual(diffTrees(tree, actual, opts), []);
    // Hardlink groups survive (the /etc copy is a copy, not a link).
    const expectedLinks = linkGroups(new Map([...srcSnap].filter(([p]) => map(p) !== undefined)), (p) => map(p)!);
    assert.deepEqual(linkGroups(actual), expectedLinks);
    assert.ok(expectedLinks.size >= 3, 'the test tree has hardlinks');
  }

  it('zstd layers unpack with zstd -dc | GNU tar, layer by layer, to the source tree', async function () {
    const out = join(work, 'unpack-zstd');
    await mkdir(out);
    assert.ok(zstdBuild.manifest.layers.length > 3 && zstdBuild.manifest.layers.length <= 8);
    for (const l of zstdBuild.manifest.layers) {
      assert.equal(l.mediaType, 'application/vnd.oci.image.layer.v1.tar+zstd');
      const file = blob(layoutADir, l.digest);
      await run('sh', [
        '-c',
        `zstd -dc "$1" | tar --xattrs --xattrs-include='*' --numeric-owner -xpf - -C "$2"`,
        'sh',
        file,
        out,
      ]);
    }
    const actual = await snapshotTree(out);
    const conf = await readFile(join(out, 'usr/lib/tmpfiles.d/tiu-factory-var.conf'), 'utf8');
    assert.match(conf, /^C \/var\/lib - - - - \/usr\/share\/factory\/var\/lib$/m);
    assert.match(conf, /^L \/var\/run - - - - \.\.\/run$/m);
    checkUnpacked(actual);
  });

  it('config and manifest carry os-release labels, diff_ids and tiu annotations', async function () {
    const a = zstdBuild.manifest.annotations!;
    assert.equal(a['org.opensuse.tiu.bundle.version'], '1');
    assert.equal(a['org.opensuse.tiu.os-release.ID'], 'opensuse-microos');
    assert.equal(a['org.opencontainers.image.version'], '20261126.1');
    assert.equal(zstdBuild.config.config?.Labels?.['org.opensuse.tiu.os-release.VERSION_ID'], '20261126');
    // diff_id = sha256 of the uncompressed tar, as zstd -dc gives it
    const first = zstdBuild.manifest.layers[0]!;
    const r = await run('sh', ['-c', 'zstd -dc "$1" | sha256sum', 'sh', blob(layoutADir, first.digest)]);
    assert.equal(`sha256:${r.stdout.split(' ')[0]}`, zstdBuild.config.rootfs.diff_ids[0]);
  });

  it('skopeo inspects and copies the bundle', async function () {
    const r = await run('skopeo', ['inspect', `oci:${layoutADir}:v1`]);
    const info = JSON.parse(r.stdout) as { Digest: string; Layers: string[]; Labels: Record<string, string> };
    assert.equal(info.Digest, zstdBuild.descriptor.digest);
    assert.deepEqual(
      info.Layers,
      zstdBuild.manifest.layers.map((l) => l.digest),
    );
    assert.equal(info.Labels['org.opensuse.tiu.os-release.ID'], 'opensuse-microos');
    const copy = join(work, 'layout-copy');
    await run('skopeo', ['copy', '--preserve-digests', `oci:${layoutADir}:v1`, `oci:${copy}:v1`]);
    const r2 = await run('skopeo', ['inspect', `oci:${copy}:v1`]);
    assert.equal((JSON.parse(r2.stdout) as { Digest: string }).Digest, zstdBuild.descriptor.digest);
  });

  it('the same tree builds to the same digest; one changed file changes one layer', async function () {
    const again = await buildBundle({ kind: 'directory', path: src }, await layout(join(work, 'layout-b')), 'v1', {});
    assert.equal(again.descriptor.digest, zstdBuild.descriptor.digest);
    const file = join(src, 'usr/lib/libfoo.so.1');
    await writeFile(file, 'library v2');
    await utimes(file, 1_700_000_000, 1_700_000_000);
    try {
      const changed = await buildBundle(
        { kind: 'directory', path: src },
        await layout(join(work, 'layout-c')),
        'v1',
        {},
      );
      const before = zstdBuild.manifest.layers.map((l) => l.digest);
      const after = changed.manifest.layers.map((l) => l.digest);
      assert.equal(after.length, before.length);
      assert.equal(after.filter((d, i) => d !== before[i]).length, 1);
    } finally {
      await writeFile(file, 'library v1');
      const orig = srcSnap.get('usr/lib/libfoo.so.1')!;
      const t = Number(orig.mtimeNs) / 1e9;
      await utimes(file, t, t);
    }
  });

  it('fetches one file by Range through the verified table of contents', async function () {
    const fetches: [number, number][] = [];
    for (const layer of zstdBuild.manifest.layers) {
      const fetch = async (start: number, end: number) => {
        fetches.push([start, end]);
        const chunks: Buffer[] = [];
        for await (const c of await layoutA.fetchRange(layer, start, end)) chunks.push(c as Buffer);
        return Buffer.concat(chunks);
      };
      const toc = await readTocFromFooter(fetch, layer.size, layer.annotations);
      const e = toc.entries.find((x) => x.name === 'usr/lib/modules/6.1.0/kernel/big.ko');
      if (!e) continue;
      fetches.length = 0;
      const data = await fetchTocFile(fetch, e);
      const want = await readFile(join(src, 'usr/lib/modules/6.1.0/kernel/big.ko'));
      assert.equal(createHash('sha256').update(data).digest('hex'), createHash('sha256').update(want).digest('hex'));
      assert.equal(fetches.length, 1);
      assert.ok(fetches[0]![1] - fetches[0]![0] < layer.size / 2, 'only the file frame is fetched');
      // the footer agrees with the annotations
      const viaFooter = await readTocFromFooter(fetch, layer.size);
      assert.deepEqual(viaFooter, toc);
      // a non-UTF-8 name is kept byte-exact: its raw bytes are the TOC name
      const all = await Promise.all(
        zstdBuild.manifest.layers.map((l) =>
          readTocFromFooter(
            async (s, en) => (await readFile(join(layoutADir, 'blobs/sha256', l.digest.slice(7)))).subarray(s, en),
            l.size,
            l.annotations,
          ),
        ),
      );
      const oddName = Buffer.from('usr/share/odd/latin1-\xe9\xff-name', 'latin1');
      const odd = all.flatMap((t) => t.entries).find((x) => Buffer.from(x.name, 'latin1').equals(oddName));
      assert.ok(odd, 'the TOC names the file by its raw bytes');
      assert.equal(Object.keys(odd).includes('nameRaw'), false);
      // a tampered annotation is caught
      await assert.rejects(
        readTocFromFooter(fetch, layer.size, {
          ...layer.annotations,
          'io.github.containers.zstd-chunked.manifest-checksum': `sha256:${'0'.repeat(64)}`,
        }),
        (err) => isTiuError(err, 'TOC_CHECKSUM_MISMATCH'),
      );
      return;
    }
    assert.fail('big.ko is in no layer TOC');
  });

  it('frames compressed in parallel: the same bytes with 1 or 4 pool threads, and every frame the TOC names holds its file', async function () {
    // Thousands of frames of mixed sizes and compressibility, and files large enough to stream:
    // how the frames spread over the compression contexts must not depend on timing.
    const tree = join(work, 'many');
    let seed = 7;
    const rand = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    for (let d = 0; d < 20; d++) {
      await mkdir(join(tree, 'usr/lib/modules/6.1.0/kernel', `d${d}`), { recursive: true });
      for (let f = 0; f < 100; f++) {
        const size = Math.floor(rand() ** 3 * 256 * 1024);
        const data =
          rand() < 0.5
            ? Buffer.alloc(size, `${d}/${f} `)
            : createHash('sha256')
                .update(`${d}/${f}`)
                .digest()
                .toString('hex')
                .repeat(Math.ceil(size / 64))
                .slice(0, size);
        await writeFile(join(tree, 'usr/lib/modules/6.1.0/kernel', `d${d}`, `m${f}.ko`), data);
      }
    }
    for (let k = 0; k < 3; k++)
      await writeFile(
        join(tree, `usr/lib/modules/6.1.0/big${k}.bin`),
        Buffer.alloc(5 * 1024 * 1024 + k * 333, `big ${k} `),
      );
    const tiu = join(import.meta.dirname, '../../bin/tiu');
    const digests: string[] = [];
    for (const threads of ['1', '4']) {
      const dir = join(work, `many-${threads}`);
      const r = await run(tiu, ['build', tree, '--tag', `oci:${dir}:v1`, '--json'], {
        env: { UV_THREADPOOL_SIZE: threads, SOURCE_DATE_EPOCH: '1700000000' },
      });
      digests.push((JSON.parse(r.stdout) as { digest: string }).digest);
    }
    assert.equal(digests[0], digests[1]);
    const dir = join(work, 'many-1');
    const target = await OciLayoutTarget.open(dir);
    const parsed = (await fetchManifest(target, await target.resolve('v1'))).parsed;
    assert.ok(parsed.kind === 'manifest');
    const manifest = parsed.manifest;
    let frames = 0;
    for (const l of manifest.layers) {
      const data = await readFile(blob(dir, l.digest));
      const toc = await readTocFromFooter((a, b) => Promise.resolve(data.subarray(a, b)), l.size, l.annotations);
      for (const e of toc.entries) {
        if (e.offset === undefined) continue;
        const content = zstdDecompressSync(data.subarray(e.offset, e.endOffset));
        assert.equal(`sha256:${createHash('sha256').update(content).digest('hex')}`, e.digest, e.name);
        assert.ok(content.equals(await readFile(join(tree, e.name))), e.name);
        frames++;
      }
    }
    assert.ok(frames > 1900, `${frames} frames checked`);
  });

  it('gzip bundles unpack with umoci to the source tree', async function () {
    const gzDir = join(work, 'layout-gz');
    const r = await buildBundle({ kind: 'directory', path: src }, await layout(gzDir), 'v1', { compression: 'gzip' });
    assert.ok(r.manifest.layers.every((l) => l.mediaType === 'application/vnd.oci.image.layer.v1.tar+gzip'));
    const bundle = join(work, 'umoci-bundle');
    await run('umoci', ['unpack', '--image', `${gzDir}:v1`, bundle]);
    const actual = await snapshotTree(join(bundle, 'rootfs'));
    // umoci 0.4.7 deliberately drops security.selinux (GNU tar above shows the layer carries it).
    checkUnpacked(actual, { ignoreXattrs: ['security.selinux'] });
  });

  it('a tar archive (xz, as kiwi writes it) builds to the same bundle as the directory', async function () {
    const tarFile = join(work, 'tree.tar.xz');
    await run('tar', [
      '--xattrs',
      '--xattrs-include=*',
      '--numeric-owner',
      '--format=posix',
      '-C',
      src,
      '-cJf',
      tarFile,
      '.',
    ]);
    const r = await buildBundle({ kind: 'archive', path: tarFile }, await layout(join(work, 'layout-tar')), 'v1', {});
    assert.equal(r.descriptor.digest, zstdBuild.descriptor.digest);
  });

  it('an image re-layered gives the same bundle', async function () {
    const r = await buildBundle(
      { kind: 'image', target: layoutA, reference: 'v1' },
      await layout(join(work, 'layout-relayer')),
      'v1',
      {},
    );
    assert.equal(r.descriptor.digest, zstdBuild.descriptor.digest);
  });

  it('refuses tars that try to leave the tree', async function () {
    const base: TreeEntry = {
      path: '',
      type: 'reg',
      mode: 0o644,
      uid: 0,
      gid: 0,
      mtimeNs: 0n,
      size: 0,
      xattrs: {},
    };
    for (const [name, bad] of [
      ['dotdot', '../../etc/evil'],
      ['inner', 'usr/../../evil'],
      ['absolute', '/etc/evil'],
    ]) {
      const file = join(work, `${name}.tar`);
      await pipeline(
        Readable.from([
          encodeHeader({ ...base, path: 'usr', type: 'dir', mode: 0o755 }),
          encodeHeader({ ...base, path: bad! }),
          END_OF_ARCHIVE,
        ]),
        createWriteStream(file),
      );
      await assert.rejects(
        buildBundle({ kind: 'archive', path: file }, await layout(join(work, `layout-${name}`)), 'v1', {}),
        (err) => isTiuError(err, 'PATH_UNSAFE') && /leaves the tree|absolute/.test((err as Error).message),
      );
    }
  });

  describe('the tiu build command', function () {
    const tiu = (args: string[]) => run(join(import.meta.dirname, '../../bin/tiu'), args, { okExitCodes: [0, 1, 2] });

    it('builds into an oci-archive with options and prints the digest as JSON', async function () {
      const archive = join(work, 'bundle.tar');
      const r = await tiu([
        'build',
        src,
        '--tag',
        `oci-archive:${archive}:v7`,
        '--compression',
        'gzip',
        '--layers',
        '3',
        '--annotation',
        'org.example.build=42',
        '--exclude',
        '/usr/share/odd',
        '--json',
      ]);
      assert.equal(r.exitCode, 0, r.stderr);
      const out = JSON.parse(r.stdout) as { digest: string; layers: unknown[]; annotations: Record<string, string> };
      assert.ok(out.layers.length <= 3);
      assert.equal(out.annotations['org.example.build'], '42');
      const info = JSON.parse((await run('skopeo', ['inspect', `oci-archive:${archive}:v7`])).stdout) as {
        Digest: string;
      };
      assert.equal(info.Digest, out.digest);
    });

    it('reads .tar.zst and .tbz archives to the same bundle as the directory', async function () {
      const dirDigest = (await tiu(['build', src, '--tag', `oci:${join(work, 'cli-dir')}:v1`])).stdout.trim();
      assert.match(dirDigest, /^sha256:[0-9a-f]{64}$/);
      assert.equal(dirDigest, zstdBuild.descriptor.digest);
      for (const [name, flag] of [
        ['tree.tar.zst', '--zstd'],
        ['tree.tbz', '--bzip2'],
      ]) {
        const file = join(work, name!);
        await run('tar', [
          '--xattrs',
          '--xattrs-include=*',
          '--numeric-owner',
          '--format=posix',
          flag!,
          '-C',
          src,
          '-cf',
          file,
          '.',
        ]);
        const r = await tiu(['build', file, '--tag', `oci:${join(work, 'cli-' + name)}:v1`]);
        assert.equal(r.exitCode, 0, r.stderr);
        assert.equal(r.stdout.trim(), dirDigest, name);
      }
    });

    it('says exactly what is wrong, with a code', async function () {
      const cases: [string[], string][] = [
        [['build', join(work, 'nope'), '--tag', `oci:${join(work, 'x')}:v1`], 'BUILD_SOURCE_NOT_FOUND'],
        [['build', src, '--tag', `oci:${join(work, 'x')}:v1`, '--compression', 'lz4'], 'BUILD_OPTION_INVALID'],
        [['build', src, '--tag', `oci:${join(work, 'x')}:v1`, '--layers', 'many'], 'BUILD_OPTION_INVALID'],
        [['build', src, '--tag', `oci:${join(work, 'x')}:v1`, '--annotation', 'novalue'], 'BUILD_OPTION_INVALID'],
        [['build', src], 'BUILD_OPTION_INVALID'],
      ];
      for (const [args, code] of cases) {
        const r = await tiu([...args, '--json']);
        assert.equal(r.exitCode, 1, args.join(' '));
        assert.equal((JSON.parse(r.stdout) as { error: { code: string } }).error.code, code, args.join(' '));
      }
    });

    it('pushes to a registry, which skopeo reads and copies, and re-layers from it', async function () {
      const reg = await startRegistry();
      try {
        const ref = `docker://${reg.host}/os/microos:v1`;
        const r = await tiu(['build', src, '--tag', ref, '--tls-verify=false']);
        assert.equal(r.exitCode, 0, r.stderr);
        assert.equal(r.stdout.trim(), zstdBuild.descriptor.digest);
        const info = JSON.parse((await run('skopeo', ['inspect', '--tls-verify=false', ref])).stdout) as {
          Digest: string;
          Layers: string[];
        };
        assert.equal(info.Digest, zstdBuild.descriptor.digest);
        assert.equal(info.Layers.length, zstdBuild.manifest.layers.length);
        const copyDir = join(work, 'from-registry');
        await run('skopeo', ['copy', '--src-tls-verify=false', '--preserve-digests', ref, `oci:${copyDir}:v1`]);
        assert.equal(
          (JSON.parse((await run('skopeo', ['inspect', `oci:${copyDir}:v1`])).stdout) as { Digest: string }).Digest,
          zstdBuild.descriptor.digest,
        );
        const again = await tiu([
          'build',
          ref,
          '--tag',
          `oci:${join(work, 'relayer-registry')}:v1`,
          '--tls-verify=false',
        ]);
        assert.equal(again.exitCode, 0, again.stderr);
        assert.equal(again.stdout.trim(), zstdBuild.descriptor.digest);
      } finally {
        await reg.stop();
      }
    });
  });
});

describe('tiu build of a tree that changes while it is read', function () {
  let work: string;
  before(async function () {
    work = await mkdtemp(join(tmpdir(), 'tiu-build-change-'));
  });
  after(async function () {
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('fails with BUILD_SOURCE_CHANGED when a file vanishes or grows after the scan', async function () {
    const { scanDirectory } = await import('../../src/bundle/source-dir.ts');
    const { writeLayer } = await import('../../src/bundle/layer-writer.ts');
    await mkdir(join(work, 'tree/usr'), { recursive: true });
    await writeFile(join(work, 'tree/usr/a'), 'aaaa');
    await writeFile(join(work, 'tree/usr/b'), 'bbbb');
    const entries = await scanDirectory(join(work, 'tree'));
    await rm(join(work, 'tree/usr/a'));
    await assert.rejects(
      writeLayer(entries, join(work, 'l1'), { compression: 'zstd' }),
      (err) => isTiuError(err, 'BUILD_SOURCE_CHANGED') && /usr\/a/.test((err as Error).message),
    );
    await writeFile(join(work, 'tree/usr/a'), 'aaaa');
    await writeFile(join(work, 'tree/usr/b'), 'bbbb and more');
    await assert.rejects(
      writeLayer(entries, join(work, 'l2'), { compression: 'gzip' }),
      (err) => isTiuError(err, 'BUILD_SOURCE_CHANGED') && /usr\/b/.test((err as Error).message),
    );
  });
});
