import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from '../../src/host/exec.ts';
import { MemoryTarget } from '../../src/content/memory.ts';
import { buildBundle, type BuildResult } from '../../src/bundle/build.ts';
import { applyImage } from '../../src/deploy/apply/index.ts';
import { requireRoot } from '../helpers/env.ts';
import { makeBtrfs, snapshot, subvolume, exclusiveBytes, type TestBtrfs } from '../helpers/btrfs.ts';
import { makeTar, type TarSpec } from '../helpers/tarball.ts';
import { diffTrees } from '../helpers/treecmp.ts';

const T = 1_700_000_000;
const big = randomBytes(768 * 1024);
const lib = randomBytes(96 * 1024);
const f = (name: string, content: Buffer | string, extra: Partial<TarSpec> = {}): TarSpec => ({ name, content, mtime: T, ...extra });
const d = (name: string): TarSpec => ({ name, type: '5', mode: 0o755, mtime: T });
const common: TarSpec[] = [d('etc'), d('usr'), d('usr/bin'), d('usr/lib'), d('var'), d('var/lib'), f('usr/lib/libc.so', lib), f('usr/bin/sh', 'shell', { mode: 0o755 })];
const v1: TarSpec[] = [...common, f('etc/os-release', 'ID=test\nVERSION_ID=1\n'), f('etc/motd', 'hello v1\n'), f('usr/lib/data.bin', big), f('var/lib/state', 'factory\n')];
const v2: TarSpec[] = [...common, f('etc/os-release', 'ID=test\nVERSION_ID=2\n'), f('etc/motd', 'hello v2!\n'), d('usr/share'), f('usr/share/data.bin', big), f('usr/bin/new', randomBytes(10_000), { mode: 0o755 }), f('var/lib/state', 'factory\n')];

describe('deploy/apply: whole images from a Target (integration)', function () {
  this.timeout(180_000);
  let fs: TestBtrfs;
  const target = new MemoryTarget();
  let b1: BuildResult;
  let b2: BuildResult;
  let b2gz: BuildResult;

  async function extractRef(b: BuildResult, into: string): Promise<void> {
    await mkdir(into, { recursive: true });
    for (const [i, l] of b.manifest.layers.entries()) {
      const file = join(fs.dir, `layer-${i}-${l.digest.slice(7, 19)}`);
      const chunks: Buffer[] = [];
      for await (const c of await target.fetch(l)) chunks.push(c as Buffer);
      await writeFile(file, Buffer.concat(chunks));
      await run('tar', [l.mediaType.endsWith('gzip') ? '-z' : '--zstd', '--xattrs', '--xattrs-include=*', '--numeric-owner', '-xpf', file, '-C', into]);
    }
  }

  before(async function () {
    requireRoot(this);
    fs = await makeBtrfs(384);
    for (const [name, spec] of [['src1', v1], ['src2', v2]] as const) {
      const dir = join(fs.dir, name);
      await mkdir(dir);
      await writeFile(dir + '.tar', makeTar(spec));
      await run('tar', ['--numeric-owner', '-xpf', dir + '.tar', '-C', dir]);
    }
    b1 = await buildBundle({ kind: 'directory', path: join(fs.dir, 'src1') }, target, 'v1', { layers: 3, sourceDateEpoch: T });
    b2 = await buildBundle({ kind: 'directory', path: join(fs.dir, 'src2') }, target, 'v2', { layers: 3, sourceDateEpoch: T });
    b2gz = await buildBundle({ kind: 'directory', path: join(fs.dir, 'src2') }, target, 'v2gz', { layers: 3, sourceDateEpoch: T, compression: 'gzip' });
    await extractRef(b1, join(fs.mnt, 'ref1'));
    await extractRef(b2, join(fs.mnt, 'ref2'));
  });
  after(async () => {
    await fs?.cleanup();
  });

  it('installs v1 into an empty subvolume, then updates a snapshot of it to v2 fetching only the changed files by range', async () => {
    const sys1 = join(fs.mnt, 'sys1');
    await subvolume(sys1);
    const r1 = await applyImage(sys1, target, b1.manifest);
    assert.equal(r1.mode, 'toc');
    assert.deepEqual(await diffTrees(sys1, join(fs.mnt, 'ref1'), { ignoreRootMeta: true }), []);

    const sys2 = join(fs.mnt, 'sys2');
    await snapshot(sys1, sys2);
    const r2 = await applyImage(sys2, target, b2.manifest);
    assert.equal(r2.mode, 'toc');
    assert.deepEqual(await diffTrees(sys2, join(fs.mnt, 'ref2'), { ignoreRootMeta: true }), []);
    const layerBytes = b2.manifest.layers.reduce((a, l) => a + l.size, 0);
    assert.ok(r2.fetchedBytes < layerBytes / 3, `fetched ${r2.fetchedBytes} of ${layerBytes}`);
    assert.ok(r2.report!.reflinked.bytes >= big.length, 'the moved data.bin is a reflink');
    assert.ok((await exclusiveBytes(sys2)) < 256 * 1024);
    // v1 is untouched
    assert.deepEqual(await diffTrees(sys1, join(fs.mnt, 'ref1'), { ignoreRootMeta: true }), []);
  });

  it('whole-layer mode and an ordinary gzip image (tar mode) give the same tree; an identical image writes nothing', async () => {
    const sys3 = join(fs.mnt, 'sys3');
    await snapshot(join(fs.mnt, 'sys1'), sys3);
    const r3 = await applyImage(sys3, target, b2.manifest, { ranged: false });
    assert.equal(r3.mode, 'toc');
    assert.deepEqual(await diffTrees(sys3, join(fs.mnt, 'ref2'), { ignoreRootMeta: true }), []);

    const sys4 = join(fs.mnt, 'sys4');
    await snapshot(join(fs.mnt, 'sys1'), sys4);
    const r4 = await applyImage(sys4, target, b2gz.manifest);
    assert.equal(r4.mode, 'tar');
    assert.deepEqual(await diffTrees(sys4, join(fs.mnt, 'ref2'), { ignoreRootMeta: true }), []);

    const sys5 = join(fs.mnt, 'sys5');
    await snapshot(sys4, sys5);
    const r5 = await applyImage(sys5, target, b2gz.manifest);
    assert.equal(r5.report!.written.count, 0);
    const sys6 = join(fs.mnt, 'sys6');
    await snapshot(sys4, sys6);
    const r6 = await applyImage(sys6, target, b2.manifest);
    assert.equal(r6.report!.written.count + r6.report!.reflinked.count + r6.report!.deleted.count, 0);
    assert.equal(r6.fetchedBytes, 0);
    assert.ok((await exclusiveBytes(sys5)) < 64 * 1024);
    assert.ok((await exclusiveBytes(sys6)) < 64 * 1024);
  });

  it('a layer whose bytes do not match its digest is refused in tar mode', async () => {
    const bad = structuredClone(b2gz.manifest);
    bad.layers[0] = { ...bad.layers[0]!, digest: b2gz.manifest.layers[1]!.digest, size: b2gz.manifest.layers[1]!.size };
    bad.layers[1] = { ...b2gz.manifest.layers[1]!, size: b2gz.manifest.layers[1]!.size + 1 };
    const sys7 = join(fs.mnt, 'sys7');
    await subvolume(sys7);
    await assert.rejects(applyImage(sys7, target, bad), (e: unknown) => (e as { code?: string }).code === 'SIZE_MISMATCH');
  });
});
