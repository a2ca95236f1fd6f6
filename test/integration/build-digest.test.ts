/**
 * The bytes of `tiu build` are pinned: a tree made here, the same on every run, built with a fixed
 * SOURCE_DATE_EPOCH, must give exactly these manifest digests (zstd:chunked and gzip). A change
 * to how a build reads, frames, compresses or hashes may make it faster or smaller in memory; it
 * must not change a byte, or every device would download every layer again for nothing.
 * When the format is changed on purpose, the literals change in the same commit, with the reason.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { chmod, link, lutimes, mkdir, mkdtemp, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildBundle } from '../../src/bundle/build.ts';
import { OciLayoutTarget } from '../../src/content/oci-layout.ts';
import { run } from '../../src/host/exec.ts';
import { requireRoot } from '../helpers/env.ts';
import { makeNastyTree, snapshotTree } from '../helpers/tree.ts';

const EPOCH = 1_750_000_000;

/** Pinned: computed by the code before the issue-19 build changes (commit 691d2c5). */
const PINNED = {
  zstd8: 'sha256:6b4db24ac58f3b573ab668030551e910daf7c42f39b1713d54e6c42bff23c969',
  zstd1: 'sha256:aa8adb808b0c79150ba2a4182ca6cc9bb7200a974455c809c2e253ca9d8c4447',
  gzip8: 'sha256:f3ea318fb534f69ec8ae893a7e87a81231a02cfed0f6cd139f90420da2e2d863',
};

/** Deterministic pseudo-random bytes (incompressible content). */
function noise(seed: string, size: number): Buffer {
  const out = Buffer.alloc(size);
  let block = createHash('sha256').update(seed).digest();
  for (let off = 0; off < size; off += block.length) {
    block.copy(out, off);
    block = createHash('sha256').update(block).digest();
  }
  return out;
}

/**
 * Content on every path of the layer writer: empty files, small ones read whole, a 3 MiB one
 * (still one piece), files above the 4 MiB streaming limit (compressible and not), thousands of
 * small frames spread over the compression contexts, and more than 1 MiB of tar headers in a row
 * (a directory of empty files) so header frames are cut.
 */
async function addBulk(root: string): Promise<void> {
  const mods = join(root, 'usr/lib/modules/6.1.0/kernel');
  for (let d = 0; d < 12; d++) {
    await mkdir(join(mods, `d${d}`), { recursive: true });
    for (let f = 0; f < 80; f++) {
      const size = ((d * 80 + f) * 7919) % (96 * 1024);
      const data = f % 3 === 0 ? noise(`${d}/${f}`, size) : Buffer.alloc(size, `module ${d}/${f} `);
      await writeFile(join(mods, `d${d}`, `m${f}.ko`), data);
    }
  }
  await mkdir(join(root, 'usr/lib/firmware'), { recursive: true });
  await writeFile(join(root, 'usr/lib/firmware/three.bin'), noise('three', 3 * 1024 * 1024 + 11));
  await writeFile(join(root, 'usr/lib/firmware/big-noise.bin'), noise('big', 9 * 1024 * 1024 + 5));
  await writeFile(join(root, 'usr/lib/firmware/big-text.bin'), Buffer.alloc(4 * 1024 * 1024 + 1, 'firmware '));
  await writeFile(join(root, 'usr/lib/firmware/exactly-4m.bin'), Buffer.alloc(4 * 1024 * 1024, 'four '));
  await link(join(root, 'usr/lib/firmware/three.bin'), join(root, 'usr/lib/firmware/three-again.bin'));
  await symlink('three.bin', join(root, 'usr/lib/firmware/three-link.bin'));
  await mkdir(join(root, 'usr/share/empties'), { recursive: true });
  for (let i = 0; i < 2600; i++) await writeFile(join(root, 'usr/share/empties', `e${i}`), '');
  await mkdir(join(root, 'etc/many.d'), { recursive: true });
  for (let i = 0; i < 40; i++) await writeFile(join(root, 'etc/many.d', `conf${i}`), `key=${i}\n`);
  await mkdir(join(root, 'var/lib/pkgdb'), { recursive: true });
  await writeFile(join(root, 'var/lib/pkgdb/db'), noise('db', 200_000));
  await chmod(join(root, 'var/lib/pkgdb/db'), 0o600);
}

/** mtimes by sorted path: readdir order (and so makeNastyTree's) depends on the filesystem. */
async function pinTimes(root: string): Promise<void> {
  const all = [...(await snapshotTree(root))].sort(([a], [b]) => (a < b ? 1 : a > b ? -1 : 0));
  for (const [i, [p, info]] of all.entries()) {
    const abs = Buffer.concat([Buffer.from(root + '/'), Buffer.from(p, 'latin1')]);
    const t = EPOCH - 86_400 + (i % 97) * 600 + (i % 3 === 0 ? 0.5 : 0);
    if (info.type === 'symlink') await lutimes(abs, t, t);
    else await utimes(abs, t, t);
  }
  await utimes(root, EPOCH - 86_400, EPOCH - 86_400);
}

describe('tiu build digest (pinned bytes)', function () {
  this.timeout(300_000);
  let work: string;
  let src: string;

  before(async function () {
    requireRoot(this, 'needs root (device nodes, owners, security xattrs)');
    work = await mkdtemp(join(tmpdir(), 'tiu-build-pin-'));
    src = join(work, 'src');
    await mkdir(src);
    await addBulk(src);
    await makeNastyTree(src);
    await pinTimes(src);
  });
  after(async function () {
    if (work) await rm(work, { recursive: true, force: true });
  });

  const build = async (name: string, opts: Parameters<typeof buildBundle>[3]) => {
    const dir = join(work, name);
    const r = await buildBundle(
      { kind: 'directory', path: src },
      await OciLayoutTarget.open(dir, { create: true }),
      'v1',
      {
        sourceDateEpoch: EPOCH,
        ...opts,
      },
    );
    return r.descriptor.digest;
  };

  it('zstd:chunked, 8 layers (the default)', async function () {
    assert.equal(await build('zstd8', {}), PINNED.zstd8);
  });

  it('zstd:chunked, one layer (every frame of the tree through one writer)', async function () {
    assert.equal(await build('zstd1', { layers: 1 }), PINNED.zstd1);
  });

  it('gzip, 8 layers', async function () {
    assert.equal(await build('gzip8', { compression: 'gzip' }), PINNED.gzip8);
  });

  it('one last-resort collection once every layer is written (bin/tiu exposes gc), the same bytes', async function () {
    const calls: unknown[] = [];
    const saved = globalThis.gc;
    // What V8's gc() receives; a regular collection would leave the freed pages resident (util/collect.ts).
    globalThis.gc = ((options?: unknown) => void calls.push(options)) as NodeJS.GCFunction;
    try {
      assert.equal(await build('gc', {}), PINNED.zstd8);
    } finally {
      globalThis.gc = saved;
    }
    assert.deepEqual(calls, [{ type: 'major', execution: 'sync', flavor: 'last-resort' }]);
  });

  it('the command line with SOURCE_DATE_EPOCH gives the pinned zstd digest', async function () {
    const dir = join(work, 'cli');
    const r = await run(
      join(import.meta.dirname, '../../bin/tiu'),
      ['build', src, '--tag', `oci:${dir}:v1`, '--json'],
      {
        env: { SOURCE_DATE_EPOCH: String(EPOCH) },
      },
    );
    assert.equal((JSON.parse(r.stdout) as { digest: string }).digest, PINNED.zstd8);
  });
});
