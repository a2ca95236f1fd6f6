/**
 * Bounded resources and one clear line for every refusal, through the real CLI on a
 * MicroOS-layout btrfs (test/helpers/hostile.ts: every refusal is checked for its exit code, one
 * `tiu: error: ... [CODE]` line, the same code with --json, the default subvolume, the
 * snapshots, every hash below the sysroot, the marker outside it and the mount table as before):
 *
 *   a TOC frame declared as 2 GiB (peak RSS of `tiu update` measured), a layer that expands to
 *   fill the disk (DISK_FULL with the reserve still free, watched while it runs), a registry
 *   that drips (update and copy: REGISTRY_TOO_SLOW in bounded time), corrupt gzip and zstd
 *   (LAYER_CORRUPT naming the layer), a blob failing its digest on copy (DIGEST_MISMATCH), no
 *   usr (IMAGE_NOT_OS), a 300-byte name (ENTRY_INVALID), no layers (IMAGE_LAYERS_MISSING); names that are not
 *   UTF-8 are not refused but written byte-exact.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readdir, readFile, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync, zstdCompressSync } from 'node:zlib';
import { requireRoot } from '../helpers/env.ts';
import { baseOs } from '../helpers/microos.ts';
import { makeTar, type TarSpec } from '../helpers/tarball.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import { reserveBytes } from '../../src/deploy/apply/space.ts';
import {
  TIU,
  cliError,
  createHostileEnv,
  imageFiles,
  imageOf,
  jsonError,
  osTarEntries,
  osTocEntries,
  rawLayer,
  runTiu,
  startHostileRegistry,
  tarLayer,
  tocLayer,
  writeImage,
  zstdZeros,
  gzipTarWithFill,
  type HostileEnv,
  type HostileRegistry,
} from '../helpers/hostile.ts';

const sha = (b: Uint8Array | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const MiB = 1 << 20;
const GiB = 1024 ** 3;
const T = 1_767_225_600;

/** `bin/tiu ARGS` with its peak RSS (VmHWM of the node process, polled from /proc). */
function runMeasured(
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<{ code: number | null; stdout: string; stderr: string; hwmKiB: number }> {
  return new Promise((resolve, reject) => {
    const p = spawn(TIU, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let out = '';
    let err = '';
    let hwm = 0;
    const poll = setInterval(() => {
      readFile(`/proc/${p.pid}/status`, 'utf8')
        .then((s) => {
          const m = /VmHWM:\s+(\d+) kB/.exec(s);
          if (m) hwm = Math.max(hwm, Number(m[1]));
        })
        .catch(() => undefined);
    }, 50);
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('error', reject);
    p.on('close', (code) => {
      clearInterval(poll);
      resolve({ code, stdout: out, stderr: err, hwmKiB: hwm });
    });
  });
}

describe('bounded resources and one clear line per refusal (tiu update / tiu copy CLI, MicroOS btrfs)', function () {
  this.timeout(600_000);
  let env: HostileEnv;
  let base: Awaited<ReturnType<typeof imageFiles>>;
  let n = 0;
  const tag = () => `r${++n}`;
  const tarImage = async (entries: TarSpec[], compression: 'gzip' | 'zstd' | 'none' = 'gzip') => {
    const t = tag();
    await writeImage(env.layout, t, [tarLayer(entries, compression)]);
    return env.ref(t);
  };

  before(async function () {
    requireRoot(this);
    // 120 MiB of incompressible files in the booted tree: content the new tree could share.
    const ballast = [
      { path: 'usr/share/ballast/a', content: randomBytes(60 * MiB) },
      { path: 'usr/share/ballast/b', content: randomBytes(60 * MiB) },
    ];
    env = await createHostileEnv({ sizeMiB: 400, files: [...(await baseOs()), ...ballast] });
    base = await imageFiles();
  });
  after(async () => {
    await env?.teardown();
  });

  it('TOC path: a 64 KiB frame declared (and expanding) as 2 GiB on a 400 MiB disk -> DISK_FULL before anything is downloaded', async () => {
    const frame = await zstdZeros(2 * GiB);
    assert.ok(frame.length < 256 * 1024, `a small frame (${frame.length} bytes)`);
    const t = tag();
    await writeImage(env.layout, t, [
      tocLayer([
        ...osTocEntries(base),
        {
          toc: { type: 'reg', name: 'usr/share/fake/bomb', mode: 0o644, size: 2 * GiB, digest: sha('not these bytes') },
          frame,
        },
      ]),
    ]);
    const e = await env.expectRefused(env.ref(t), 'DISK_FULL', { message: /2\.0 GiB to write/ });
    assert.match(e.message, /reserve/);
  });

  it('TOC path: a small frame declared (and expanding) as 256 MiB streams to disk, not into memory: DELTA_FILE_MISMATCH naming the file, peak RSS low', async () => {
    const size = 256 * MiB;
    const frame = await zstdZeros(size);
    assert.ok(frame.length < 64 * 1024, `a small frame (${frame.length} bytes)`);
    const t = tag();
    await writeImage(env.layout, t, [
      tocLayer([
        ...osTocEntries(base),
        { toc: { type: 'reg', name: 'usr/share/fake/bomb', mode: 0o644, size, digest: sha('not these bytes') }, frame },
      ]),
    ]);
    const before = await env.world();
    const r = await runMeasured(['update', env.ref(t), '--sysroot', env.os.sysroot, '--json']);
    assert.notEqual(r.code, 0);
    const e = jsonError({ code: r.code, signal: null, stdout: r.stdout, stderr: r.stderr, ms: 0, timedOut: false });
    assert.equal(e.code, 'DELTA_FILE_MISMATCH', e.message);
    assert.match(e.message, /usr\/share\/fake\/bomb/);
    assert.deepEqual(env.compare(before, await env.world()), []);
    console.log(`      peak RSS (VmHWM) of tiu update: ${Math.round(r.hwmKiB / 1024)} MiB`);
    // Decompressed into one buffer (and joined), it would be 256-512 MiB.
    assert.ok(r.hwmKiB > 0 && r.hwmKiB < 200 * 1024, `peak RSS ${r.hwmKiB} KiB`);
  });

  it('TOC path: a frame that expands past its declared size stops there: DELTA_FILE_MISMATCH, peak RSS low', async () => {
    const frame = await zstdZeros(GiB);
    const content = Buffer.alloc(20 * MiB, 1); // declared: 20 MiB (streams, above the in-memory limit)
    const t = tag();
    await writeImage(env.layout, t, [
      tocLayer([
        ...osTocEntries(base),
        {
          toc: { type: 'reg', name: 'usr/share/fake/grows', mode: 0o644, size: content.length, digest: sha(content) },
          frame,
        },
      ]),
    ]);
    const r = await runMeasured(['update', env.ref(t), '--sysroot', env.os.sysroot, '--json']);
    const e = jsonError({ code: r.code, signal: null, stdout: r.stdout, stderr: r.stderr, ms: 0, timedOut: false });
    assert.equal(e.code, 'DELTA_FILE_MISMATCH');
    assert.match(e.message, /usr\/share\/fake\/grows.*more than/);
    assert.ok(r.hwmKiB < 400 * 1024, `peak RSS ${r.hwmKiB} KiB`);
  });

  it('tar path: a ~200 KB layer that expands into a file bigger than the free space stops with DISK_FULL while the reserve is still free', async () => {
    const st0 = await statfs(env.os.sysroot);
    const free0 = st0.bavail * st0.bsize;
    const reserve = reserveBytes(undefined, st0.blocks * st0.bsize);
    // Zero-ish: one byte in every 4 KiB block is not zero, so no block becomes a hole. Its size
    // fits under the old tree's files plus the free space (the header check passes), so the
    // writes meet the reserve.
    const block = Buffer.alloc(4096);
    block[0] = 1;
    const size = Math.floor((free0 - reserve + 60 * MiB) / 4096) * 4096;
    const layer = await gzipTarWithFill(osTarEntries(base), 'usr/share/fake/fill', size, { block, level: 9 });
    assert.ok(layer.data.length < 2 * MiB, `a small layer (${layer.data.length} bytes)`);
    const t = tag();
    await writeImage(env.layout, t, [layer]);
    // Watch the free space while the update runs.
    let minFree = free0;
    let watching = true;
    const watch = (async () => {
      while (watching) {
        const s = await statfs(env.os.sysroot);
        minFree = Math.min(minFree, s.bavail * s.bsize);
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    try {
      const e = await env.expectRefused(env.ref(t), 'DISK_FULL', { message: /reserve/ });
      assert.match(e.message, /no space left/);
    } finally {
      watching = false;
      await watch;
    }
    // The check runs every 4 MiB written; btrfs's estimate moves by a few MiB more.
    assert.ok(minFree > reserve - 16 * MiB, `free space went down to ${minFree} bytes, the reserve is ${reserve}`);
  });

  it('tar path: a file of zeros larger than the filesystem (a ~1 MB layer) -> DISK_FULL before writing it', async () => {
    const layer = await gzipTarWithFill(osTarEntries(base), 'usr/share/fake/zeros', GiB, {
      block: Buffer.alloc(MiB),
      level: 9,
    });
    const t = tag();
    await writeImage(env.layout, t, [layer]);
    const t0 = Date.now();
    await env.expectRefused(env.ref(t), 'DISK_FULL', { json: false });
    assert.ok(Date.now() - t0 < 60_000);
  });

  it('corrupt gzip and zstd layers -> LAYER_CORRUPT naming the layer (index and digest)', async () => {
    const tarBytes = makeTar(osTarEntries(base));
    const flip = (b: Buffer) => {
      const c = Buffer.from(b);
      for (let i = Math.floor(c.length / 2); i < Math.floor(c.length / 2) + 64; i++) c[i] = c[i]! ^ 0xa5;
      return c;
    };
    for (const layer of [
      rawLayer(flip(gzipSync(tarBytes)), MediaType.OciLayerGzip),
      rawLayer(flip(zstdCompressSync(tarBytes)), MediaType.OciLayerZstd),
    ]) {
      const t = tag();
      await writeImage(env.layout, t, [layer]);
      const e = await env.expectRefused(env.ref(t), 'LAYER_CORRUPT');
      assert.match(e.message, new RegExp(`layer 1 \\(${layer.desc.digest}\\)`));
      assert.doesNotMatch(e.message, /INTERNAL/);
    }
    // A gzip that holds no tar: the same code, the layer named.
    const t = tag();
    const junk = rawLayer(gzipSync(Buffer.from('not a tar\n'.repeat(200))), MediaType.OciLayerGzip);
    await writeImage(env.layout, t, [junk]);
    const e = await env.expectRefused(env.ref(t), 'LAYER_CORRUPT');
    assert.match(e.message, new RegExp(junk.desc.digest));
  });

  it('no usr in the tree -> IMAGE_NOT_OS before any snapshot (tar and TOC path)', async () => {
    const files = base.filter((f) => !f.path.startsWith('usr/'));
    await env.expectRefused(await tarImage(osTarEntries(files, { omitDirs: ['usr', 'usr/local'] })), 'IMAGE_NOT_OS');
    const t = tag();
    await writeImage(env.layout, t, [tocLayer(osTocEntries(files, { omitDirs: ['usr', 'usr/local'] }))]);
    await env.expectRefused(env.ref(t), 'IMAGE_NOT_OS');
  });

  it('a 300-byte name component -> ENTRY_INVALID naming it and the layer', async () => {
    const long = 'n'.repeat(300);
    const e = await env.expectRefused(
      await tarImage([...osTarEntries(base), { name: `usr/share/${long}`, content: 'x', mtime: T }]),
      'ENTRY_INVALID',
    );
    assert.match(e.message, /300 bytes/);
    assert.match(e.message, /layer 1/);
  });

  it('two names that differ only in bytes that are not UTF-8 -> two files, byte-exact, inside the new snapshot', async () => {
    const tar = makeTar([
      ...osTarEntries(base),
      { name: 'usr/share/fake/n-A', content: 'one', mtime: T },
      { name: 'usr/share/fake/n-B', content: 'two', mtime: T },
    ]);
    // Replace the A and B by 0xff and 0xfe in the header name fields, checksums fixed.
    for (let off = 0; off + 512 <= tar.length; off += 512) {
      const name = tar.subarray(off, off + 100).toString('latin1');
      if (!name.startsWith('usr/share/fake/n-')) continue;
      tar[off + 17] = name[17] === 'A' ? 0xff : 0xfe;
      tar.write('        ', off + 148, 'latin1');
      let sum = 0;
      for (let i = 0; i < 512; i++) sum += tar[off + i]!;
      tar.write(sum.toString(8).padStart(6, '0') + '\0 ', off + 148, 'latin1');
    }
    const t = tag();
    await writeImage(env.layout, t, [rawLayer(gzipSync(tar), MediaType.OciLayerGzip)]);
    const done = await env.expectSkipped(env.ref(t));
    const dir = Buffer.from(join(done.root, 'usr/share/fake'));
    const names = (await readdir(dir, { encoding: 'buffer' }))
      .map((n) => n.toString('latin1'))
      .filter((n) => n.startsWith('n-'))
      .sort();
    assert.deepEqual(names, ['n-\xfe', 'n-\xff']);
    const read = (b: number) => readFile(Buffer.concat([dir, Buffer.from('/n-'), Buffer.from([b])]), 'utf8');
    assert.equal(await read(0xff), 'one');
    assert.equal(await read(0xfe), 'two');
  });

  it('a manifest with no layers -> IMAGE_LAYERS_MISSING', async () => {
    const t = tag();
    await writeImage(env.layout, t, []);
    await env.expectRefused(env.ref(t), 'IMAGE_LAYERS_MISSING');
  });

  describe('a hostile registry on 127.0.0.1', () => {
    let reg: HostileRegistry;
    const slow = { TIU_MIN_SPEED: '1K', TIU_SPEED_TIME: '3' };
    before(async () => {
      reg = await startHostileRegistry();
    });
    after(async () => {
      await reg?.stop();
    });

    it('tiu update: a blob that drips a byte every 5 s -> REGISTRY_TOO_SLOW naming the registry and the blob, in bounded time', async () => {
      const img = imageOf([tarLayer(osTarEntries(base))]);
      reg.put('hostile/os', 'drip', img);
      reg.faults.set(img.layers[0]!.desc.digest, { kind: 'drip', everyMs: 5000 });
      const before = await env.world();
      const r = await env.update(`docker://${reg.host}/hostile/os:drip`, { env: slow, timeoutMs: 60_000 });
      assert.equal(r.timedOut, false);
      const e = cliError(r);
      assert.equal(e.code, 'REGISTRY_TOO_SLOW', e.line);
      assert.match(e.message, new RegExp(reg.host.replace(/\./g, '\\.')));
      assert.match(e.message, new RegExp(img.layers[0]!.desc.digest));
      assert.ok(r.ms < 30_000, `took ${r.ms} ms`);
      assert.deepEqual(env.compare(before, await env.world()), []);
    });

    it('tiu copy: a 598-byte blob that drips -> REGISTRY_TOO_SLOW at the top, in bounded time', async () => {
      const small = rawLayer(randomBytes(598), MediaType.OciLayerTar);
      const img = imageOf([small]);
      reg.put('hostile/small', 'drip', img);
      reg.faults.set(small.desc.digest, { kind: 'drip', everyMs: 5000 });
      const dst = join(env.os.dir, 'copy-drip');
      const r = await runTiu(['copy', '--json', `docker://${reg.host}/hostile/small:drip`, `oci:${dst}:t`], {
        env: slow,
        timeoutMs: 60_000,
      });
      assert.equal(r.timedOut, false);
      assert.equal(r.code, 1);
      const e = jsonError(r);
      assert.equal(e.code, 'REGISTRY_TOO_SLOW', e.message);
      assert.match(e.message, new RegExp(reg.host.replace(/\./g, '\\.')));
      assert.match(e.message, new RegExp(small.desc.digest));
      assert.ok(r.ms < 30_000, `took ${r.ms} ms`);
      const plain = await runTiu(['copy', `docker://${reg.host}/hostile/small:drip`, `oci:${dst}:t`], {
        env: slow,
        timeoutMs: 60_000,
      });
      assert.equal(cliError(plain).code, 'REGISTRY_TOO_SLOW');
    });

    it('tiu copy: a blob that fails its digest -> DIGEST_MISMATCH at the top', async () => {
      const layer = tarLayer(osTarEntries(base));
      const img = imageOf([layer]);
      reg.put('hostile/os', 'wrong', img);
      reg.faults.set(layer.desc.digest, { kind: 'wrong-bytes' });
      const dst = join(env.os.dir, 'copy-wrong');
      const r = await runTiu(['copy', '--json', `docker://${reg.host}/hostile/os:wrong`, `oci:${dst}:t`]);
      assert.equal(r.code, 1);
      const e = jsonError(r);
      assert.equal(e.code, 'DIGEST_MISMATCH', e.message);
      assert.match(e.message, new RegExp(layer.desc.digest));
      const plain = await runTiu(['copy', `docker://${reg.host}/hostile/os:wrong`, `oci:${dst}:t`]);
      assert.equal(cliError(plain).code, 'DIGEST_MISMATCH');
      // and tiu update of the same
      await env.expectRefused(`docker://${reg.host}/hostile/os:wrong`, 'DIGEST_MISMATCH');
    });

    it('tiu update: a manifest with no layers from a registry -> IMAGE_LAYERS_MISSING', async () => {
      reg.put('hostile/os', 'empty', imageOf([]));
      await env.expectRefused(`docker://${reg.host}/hostile/os:empty`, 'IMAGE_LAYERS_MISSING');
    });
  });
});
