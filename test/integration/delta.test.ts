/**
 * File-level delta updates (issue 9) end to end: a MicroOS-layout btrfs with snapper running a
 * v1 tree, a v2 bundle built by `tiu build` (zstd:chunked, hundreds of files, a few percent
 * changed, a package directory moved), served by a real docker-registry behind a loopback
 * byte-counting proxy.
 *
 * Checked: `tiu update --check` writes nothing and predicts the layer bytes within 1%; the
 * delta update downloads at most 1.25 x (zstd size of the changed files + TOCs) and gives the
 * same snapshot, file by file, as the whole-layer path; a registry that ignores Range (the
 * proxy strips it) and gzip layers take the whole-layer path and say so; an OCI layout source
 * is read by range too; a TOC or a frame that does not match its digest is refused before a
 * snapshot exists.
 */
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { zstdCompressSync } from 'node:zlib';
import { buildBundle } from '../../src/bundle/build.ts';
import {
  encodeFooter,
  MANIFEST_TYPE_CRFS,
  readTocFromFooter,
  skippableFrame,
  SKIPPABLE_HEADER,
  ZstdChunkedAnnotation,
  parsePosition,
  type Toc,
} from '../../src/layer/toc.ts';
import type { Target } from '../../src/content/interfaces.ts';
import { OciLayoutTarget } from '../../src/content/oci-layout.ts';
import { copy } from '../../src/copy/copy.ts';
import { parseConfig } from '../../src/deploy/config.ts';
import { rollback } from '../../src/deploy/rollback.ts';
import { openContext, readState, snapshotPath } from '../../src/deploy/state.ts';
import { checkUpdate } from '../../src/deploy/update/check.ts';
import { update } from '../../src/deploy/update/index.ts';
import type { UpdateDeps } from '../../src/deploy/update/deps.ts';
import { isTiuError, type ErrorCode } from '../../src/errors.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import { parseReference, referenceName, type DockerReference } from '../../src/oci/reference.ts';
import type { Descriptor, ImageManifest } from '../../src/oci/types.ts';
import { openRegistryTarget } from '../../src/transport/registry/index.ts';
import { startCountingProxy, type CountingProxy } from '../helpers/counting-proxy.ts';
import { requireRoot } from '../helpers/env.ts';
import { baseOs, createMicroOS, writeTree, type MicroOS, type OsFile } from '../helpers/microos.ts';
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts';
import { diffTrees } from '../helpers/treecmp.ts';
import { installPolicy, signInLayout, TEST_IDENTITY } from '../helpers/update-deps.ts';
import { productionDeps } from '../../src/deploy/wiring.ts';
import { signImage } from '../../src/trust/sign.ts';
import type { KeyObject } from 'node:crypto';

const TIU = fileURLToPath(new URL('../../bin/tiu', import.meta.url));
const sha = (b: Uint8Array): `sha256:${string}` => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** A small deterministic PRNG (xorshift32). */
function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 0x100000000;
  };
}

const WORDS =
  'lib elf section symbol version glibc gcc libc static shared object relocation table entry debug info string const data text bss init fini plt got dynamic needed soname rpath runpath'.split(
    ' ',
  );

/** Text-like content (compresses like program data, roughly 3-4x) with some incompressible bytes. */
function content(rand: () => number, size: number): Buffer {
  const parts: Buffer[] = [];
  let n = 0;
  while (n < size) {
    const b =
      rand() < 0.08
        ? Buffer.from(Array.from({ length: 64 }, () => Math.floor(rand() * 256)))
        : Buffer.from(`${WORDS[Math.floor(rand() * WORDS.length)]}_${Math.floor(rand() * 100000)} `);
    parts.push(b);
    n += b.length;
  }
  return Buffer.concat(parts).subarray(0, size);
}

const PKGS = 40;
const PER_PKG = 10;
/** Files changed by the upgrade: neighbours inside three packages (12 of 400 files, 3%). */
const CHANGED: [number, number][] = [
  [5, 0],
  [5, 1],
  [5, 2],
  [5, 3],
  [5, 4],
  [5, 5],
  [17, 3],
  [17, 4],
  [30, 1],
  [30, 2],
  [30, 3],
  [30, 4],
];

function synthTree(version: 1 | 2): OsFile[] {
  const out: OsFile[] = [];
  for (let p = 0; p < PKGS; p++) {
    for (let f = 0; f < PER_PKG; f++) {
      const rand = prng(p * 1000 + f + 1);
      const size = 300 + Math.floor(rand() * rand() * 60_000);
      let data = content(rand, size);
      if (version === 2 && CHANGED.some(([a, b]) => a === p && b === f))
        data = Buffer.concat([content(prng(77_000 + p * 100 + f), 200), data.subarray(200)]);
      // v2 moves package 9 to another directory, same content.
      const dir = version === 2 && p === 9 ? 'usr/lib/synth/pkg9-renamed' : `usr/lib/synth/pkg${p}`;
      if (version === 2 && p === 33 && f === 7) continue; // removed
      out.push({
        path: `${dir}/file${f}.${f % 3 === 0 ? 'so' : 'dat'}`,
        content: data,
        mode: f % 3 === 0 ? 0o755 : 0o644,
      });
    }
  }
  if (version === 2) {
    out.push({ path: 'usr/lib/synth/pkg40/new0.dat', content: content(prng(4242), 3000) });
    out.push({ path: 'usr/lib/synth/pkg40/new1.dat', content: content(prng(4343), 9000) });
  }
  return out;
}

async function osFiles(version: 1 | 2): Promise<OsFile[]> {
  const base = (await baseOs()).map((f) =>
    f.path === 'usr/lib/os-release'
      ? { ...f, content: `NAME="Fake MicroOS"\nID="fake-microos"\nVERSION_ID="${version}"\n` }
      : f,
  );
  return [...base, ...synthTree(version)];
}

async function collect(s: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

const SKIP = ['.snapshots', 'var', 'home', 'root', 'opt', 'srv', 'usr/local', 'boot/writable'];
const code = (c: ErrorCode) => (e: unknown) => isTiuError(e, c);

describe('file-level delta update by Range (registry behind a counting proxy, MicroOS on btrfs)', function () {
  this.timeout(300_000);
  let os: MicroOS;
  let reg: RunningRegistry;
  let proxy: CountingProxy;
  let work: string;
  let layoutDir: string;
  let v2: { desc: Descriptor; manifest: ImageManifest };
  let gz: { desc: Descriptor; manifest: ImageManifest };
  let v1Digests: Set<string>;
  let key: KeyObject;
  const noHooks = parseConfig('default-hooks = false');
  const ref = (tag: string) => `docker://${proxy.host}/tiu/os:${tag}`;
  const state = async () => readState(await openContext(os.sysroot));

  /** The real dependencies; docker:// without the host's registries.conf. */
  const deps = (): UpdateDeps => ({
    ...productionDeps,
    async openSource(reference, o) {
      const r = parseReference(reference);
      if (r.transport !== 'docker') return productionDeps.openSource(reference, o);
      return { target: openRegistryTarget(r, { registriesConf: false }), reference: referenceName(r) };
    },
  });

  async function buildTo(
    dir: string,
    tree: string,
    tag: string,
    compression: 'zstd' | 'gzip',
  ): Promise<{ desc: Descriptor; manifest: ImageManifest }> {
    const target = await OciLayoutTarget.open(dir, { create: true });
    const r = await buildBundle({ kind: 'directory', path: tree }, target, tag, {
      compression,
      sourceDateEpoch: 1_767_225_600,
      layers: 3,
    });
    return { desc: r.descriptor, manifest: r.manifest };
  }

  /**
   * Two snapshots written from the same image must be equal file by file. What the update
   * sequence itself stamps with the time of the run is left out: the mtimes of / and /usr
   * (touched after the apply, as tukit does) and of /etc files the admin has that the image
   * lacks (carried by the /etc merge).
   */
  async function sameSnapshots(a: number, b: number): Promise<void> {
    const diffs = await diffTrees(snapshotPath(os.sysroot, a), snapshotPath(os.sysroot, b), {
      skip: SKIP,
      ignoreRootMeta: true,
    });
    assert.deepEqual(
      diffs.filter((d) => !/^(usr|etc\/snapper\/configs\/root|etc\/default\/snapper): mtime /.test(d)),
      [],
    );
  }

  async function pushToRegistry(src: Target, tag: string): Promise<void> {
    const dst = openRegistryTarget(parseReference(`docker://${reg.host}/tiu/os`) as DockerReference, {
      registriesConf: false,
    });
    try {
      await copy(src, tag, dst, tag, { referrers: true });
    } finally {
      await dst.close();
    }
  }

  /** Push a manifest whose layers were altered (blobs given) and trust it. */
  async function pushAltered(
    manifest: ImageManifest,
    tag: string,
    blobs: { desc: Descriptor; data: Buffer }[],
  ): Promise<Descriptor> {
    const dst = openRegistryTarget(parseReference(`docker://${reg.host}/tiu/os`) as DockerReference, {
      registriesConf: false,
    });
    try {
      for (const b of blobs) await dst.push(b.desc, Readable.from([b.data]));
      const bytes = Buffer.from(JSON.stringify(manifest));
      const desc: Descriptor = { mediaType: MediaType.OciManifest, digest: sha(bytes), size: bytes.length };
      await dst.push(desc, Readable.from([bytes]));
      await dst.tag(desc, tag);
      await signImage(dst, desc, key, { dockerReference: `${TEST_IDENTITY}:${tag}` });
      return desc;
    } finally {
      await dst.close();
    }
  }

  async function tocOf(d: Descriptor): Promise<Toc> {
    const layout = await OciLayoutTarget.open(layoutDir);
    return readTocFromFooter(async (s, e) => collect(await layout.fetchRange(d, s, e)), d.size, d.annotations ?? {});
  }

  before(async function () {
    requireRoot(this);
    work = await mkdtemp(join(tmpdir(), 'tiu-delta-'));
    layoutDir = join(work, 'layout');
    const v1Files = await osFiles(1);
    v1Digests = new Set(v1Files.filter((f) => f.content !== undefined).map((f) => sha(Buffer.from(f.content!))));
    os = await createMicroOS({ files: v1Files });
    const tree = join(work, 'v2-tree');
    await writeTree(tree, await osFiles(2));
    v2 = await buildTo(layoutDir, tree, 'v2', 'zstd');
    gz = await buildTo(layoutDir, tree, 'v2-gzip', 'gzip');
    key = await installPolicy(os.sysroot);
    await signInLayout(layoutDir, 'v2', key);
    await signInLayout(layoutDir, 'v2-gzip', key);
    reg = await startRegistry();
    proxy = await startCountingProxy(reg.port);
    const layout = await OciLayoutTarget.open(layoutDir);
    await pushToRegistry(layout, 'v2');
    await pushToRegistry(layout, 'v2-gzip');
  });
  after(async () => {
    await proxy?.stop();
    await reg?.stop();
    await os?.teardown();
    if (work) await rm(work, { recursive: true, force: true });
  });

  let predicted = 0;
  const layerDigests = (): string[] => v2.manifest.layers.map((l) => l.digest);

  it('--check reports the delta (bytes and files) and writes nothing', async () => {
    const before = await state();
    const c = await checkUpdate(deps(), { sysroot: os.sysroot, reference: ref('v2'), config: noHooks });
    assert.equal(c.status, 'available');
    assert.ok(c.status === 'available');
    assert.equal(c.transfer.path, 'delta');
    assert.equal(c.transfer.files?.write.count, 15, 'the 12 changed files, 2 new ones and os-release are downloaded');
    assert.ok(c.transfer.files.reflink.count >= 10, 'the moved package is reflinked');
    assert.ok(c.transfer.downloadBytes < c.transfer.layerBytes / 5);
    predicted = c.transfer.downloadBytes;
    // The CLI: the same answer as JSON, and a line for people.
    const cli = await execa(TIU, ['update', '--check', '--json', '--sysroot', os.sysroot, ref('v2')], {
      reject: false,
    });
    assert.equal(cli.exitCode, 0, cli.stderr);
    const j = JSON.parse(cli.stdout) as {
      status: string;
      transfer: { path: string; downloadBytes: number; files: { changed: number } };
    };
    assert.equal(j.status, 'available');
    assert.equal(j.transfer.path, 'delta');
    assert.equal(j.transfer.downloadBytes, predicted);
    assert.equal(j.transfer.files.changed, c.transfer.files.changed);
    const human = await execa(TIU, ['update', '--check', '--sysroot', os.sysroot, ref('v2')], { reject: false });
    assert.match(
      human.stdout,
      /update available: .*\n {2}transfer: file delta, .* of .* \(15 files to download, \d+ to change, \d+ requests\)/,
    );
    // Nothing written: no snapshot, no cache.
    assert.deepEqual(
      (await state()).snapshots.map((s) => s.number),
      before.snapshots.map((s) => s.number),
    );
    assert.equal(existsSync(join(os.sysroot, 'var/cache/tiu')), false);
  });

  it('the delta update downloads <= 1.25 x (changed files + TOCs), as --check predicted (within 1%)', async () => {
    proxy.reset();
    const r = await update(deps(), { sysroot: os.sysroot, reference: ref('v2'), config: noHooks });
    assert.equal(r.status, 'updated');
    assert.ok(r.status === 'updated');
    assert.equal(r.snapshot, 2);
    assert.equal(r.transfer?.path, 'delta');
    assert.ok(r.transfer.hashed!.files > 0, 'no content index yet: same-size candidates were hashed');
    const measured = proxy.blobBytes(layerDigests());
    // The bound: zstd frames of the files the v1 tree lacks, plus every layer's TOC.
    let changed = 0;
    const seen = new Set<string>();
    let tocs = 0;
    for (const l of v2.manifest.layers) {
      tocs += parsePosition(l.annotations![ZstdChunkedAnnotation.ManifestPosition]!).lengthCompressed;
      for (const e of (await tocOf(l)).entries) {
        if (e.type !== 'reg' || !e.digest || !e.size || v1Digests.has(e.digest) || seen.has(e.digest)) continue;
        seen.add(e.digest);
        changed += e.endOffset! - e.offset!;
      }
    }
    const whole = v2.manifest.layers.reduce((n, l) => n + l.size, 0);
    console.log(
      `      delta: ${measured} layer bytes through the proxy (${proxy.bodyBytes} bytes of all bodies, ${proxy.requests.length} requests); predicted ${predicted}; changed files ${changed} + TOCs ${tocs}; whole layers ${whole}`,
    );
    assert.ok(measured <= 1.25 * (changed + tocs), `${measured} > 1.25 x ${changed + tocs}`);
    assert.ok(Math.abs(measured - predicted) <= 0.01 * predicted, `measured ${measured}, predicted ${predicted}`);
    assert.equal(r.transfer.downloaded, measured);
    assert.ok(
      proxy.requests
        .filter((q) => q.blob && layerDigests().includes(q.blob))
        .every((q) => q.range !== '' && q.status === 206),
      'layers only by Range',
    );
    // Every downloaded file went into the snapshot as a reflink of the verified store copy.
    assert.ok(r.apply.written.count > 0);
    assert.equal(r.apply.clonedFromStore.count, r.apply.written.count);
    // The delta store is gone.
    assert.deepEqual(readdirSync(join(os.sysroot, 'var/cache/tiu/delta')), []);
  });

  it('a registry that ignores Range gets the same snapshot by whole layers, and says so', async () => {
    await rollback({ sysroot: os.sysroot, snapshot: 1 });
    proxy.reset();
    proxy.stripRange(true);
    try {
      const r = await update(deps(), { sysroot: os.sysroot, reference: ref('v2'), config: noHooks });
      assert.ok(r.status === 'updated');
      assert.equal(r.transfer?.path, 'whole-layer');
      assert.match(r.transfer.reason ?? '', /ignores HTTP Range/);
      const measured = proxy.blobBytes(layerDigests());
      console.log(
        `      whole-layer (Range stripped): ${measured} layer bytes through the proxy (${proxy.bodyBytes} bytes of all bodies)`,
      );
      const sizes = v2.manifest.layers.map((l) => l.size);
      const whole = sizes.reduce((n, x) => n + x, 0);
      assert.ok(measured >= whole);
      // The probe that found Range ignored went to the smallest layer: at most that much is wasted.
      assert.ok(measured <= whole + Math.min(...sizes), `${measured} > ${whole} + ${Math.min(...sizes)}`);
      await sameSnapshots(2, r.snapshot);
    } finally {
      proxy.stripRange(false);
    }
  });

  it('an OCI layout (USB stick) is read by range too, with the same result; snapshots holding v2 supply its files', async () => {
    await rollback({ sysroot: os.sysroot, snapshot: 1 });
    const r = await update(deps(), { sysroot: os.sysroot, reference: `oci:${layoutDir}:v2`, config: noHooks });
    assert.ok(r.status === 'updated');
    assert.equal(r.transfer?.path, 'delta');
    // The TOCs come from the cache's store (verified when the first update fetched them): only a
    // one-byte probe that the layout serves ranges. Snapshots 2 and 3 hold v2 (content sources):
    // no file content is read, every new file is reflinked from them.
    assert.equal(r.transfer.tocBytes, 1);
    assert.equal(r.transfer.contentBytes, 0);
    assert.equal(r.transfer.downloaded, 1);
    assert.equal(r.apply.written.count, 0);
    assert.ok(r.apply.reflinkedFromSnapshots.count >= 15);
    // The first delta update saved the booted snapshot's content index: planning read no file of it.
    assert.equal(r.transfer.hashed?.files, 0);
    // Indexes of every snapshot tiu deployed are kept: 3 (whole layers) got one when planning hashed its files.
    assert.deepEqual(
      readdirSync(join(os.sysroot, 'var/cache/tiu/content-index')).sort(),
      ['1.json', '2.json', '3.json', `${r.snapshot}.json`].sort(),
    );
    await sameSnapshots(2, r.snapshot);
  });

  it('gzip layers take the whole-layer path, with the same result', async () => {
    await rollback({ sysroot: os.sysroot, snapshot: 1 });
    const c = await checkUpdate(deps(), { sysroot: os.sysroot, reference: ref('v2-gzip'), config: noHooks });
    assert.ok(c.status === 'available');
    assert.equal(c.transfer.path, 'whole-layer');
    assert.equal(
      c.transfer.downloadBytes,
      gz.manifest.layers.reduce((n, l) => n + l.size, 0),
    );
    await assert.rejects(
      checkUpdate(deps(), { sysroot: os.sysroot, reference: ref('v2-gzip'), config: noHooks, transfer: 'delta' }),
      code('DELTA_NOT_POSSIBLE'),
    );
    const r = await update(deps(), { sysroot: os.sysroot, reference: ref('v2-gzip'), config: noHooks });
    assert.ok(r.status === 'updated');
    assert.equal(r.transfer?.path, 'whole-layer');
    assert.match(r.transfer.reason ?? '', /gzip/);
    await sameSnapshots(2, r.snapshot);
  });

  it('a TOC that does not match the signed annotation is refused before anything is written', async () => {
    await rollback({ sysroot: os.sysroot, snapshot: 1 });
    const before = (await state()).snapshots.map((s) => s.number);
    const layers = v2.manifest.layers.map((l, i) =>
      i === 0
        ? {
            ...l,
            annotations: {
              ...l.annotations,
              [ZstdChunkedAnnotation.ManifestChecksum]: sha(Buffer.from('another toc')),
            },
          }
        : l,
    );
    await pushAltered({ ...v2.manifest, layers }, 'bad-toc', []);
    await assert.rejects(
      update(deps(), { sysroot: os.sysroot, reference: ref('bad-toc'), config: noHooks }),
      code('TOC_CHECKSUM_MISMATCH'),
    );
    await assert.rejects(
      checkUpdate(deps(), { sysroot: os.sysroot, reference: ref('bad-toc'), config: noHooks }),
      code('TOC_CHECKSUM_MISMATCH'),
    );
    assert.deepEqual(
      (await state()).snapshots.map((s) => s.number),
      before,
    );
  });

  it('a frame that does not match its TOC digest is refused before a snapshot exists', async () => {
    const before = (await state()).snapshots.map((s) => s.number);
    // Find a layer holding a changed file and claim another digest for it in a re-signed TOC.
    const layout = await OciLayoutTarget.open(layoutDir);
    let li = -1;
    let toc: Toc | undefined;
    for (const [i, l] of v2.manifest.layers.entries()) {
      const t = await tocOf(l);
      if (t.entries.some((e) => e.type === 'reg' && e.digest && e.size && !v1Digests.has(e.digest))) {
        li = i;
        toc = t;
        break;
      }
    }
    assert.ok(toc && li >= 0);
    const victim = toc.entries.find((e) => e.type === 'reg' && e.digest && e.size && !v1Digests.has(e.digest))!;
    victim.digest = sha(Buffer.from('not the content'));
    assert.ok(victim.digest.startsWith('sha256:'));
    const old = v2.manifest.layers[li]!;
    const blob = await collect(await layout.fetch(old));
    const pos = parsePosition(old.annotations![ZstdChunkedAnnotation.ManifestPosition]!);
    const json = Buffer.from(JSON.stringify(toc));
    const z = zstdCompressSync(json);
    const prefix = blob.subarray(0, pos.offset - SKIPPABLE_HEADER);
    const tocOffset = prefix.length + SKIPPABLE_HEADER;
    const footer = encodeFooter({
      offset: tocOffset,
      lengthCompressed: z.length,
      lengthUncompressed: json.length,
      manifestType: MANIFEST_TYPE_CRFS,
      offsetTarSplit: 0,
      lengthCompressedTarSplit: 0,
      lengthUncompressedTarSplit: 0,
    });
    const data = Buffer.concat([prefix, skippableFrame(z), skippableFrame(footer)]);
    const desc: Descriptor = {
      ...old,
      digest: sha(data),
      size: data.length,
      annotations: {
        ...old.annotations,
        [ZstdChunkedAnnotation.ManifestChecksum]: sha(z),
        [ZstdChunkedAnnotation.ManifestPosition]: `${tocOffset}:${z.length}:${json.length}:${MANIFEST_TYPE_CRFS}`,
      },
    };
    const layers = v2.manifest.layers.map((l, i) => (i === li ? desc : l));
    await pushAltered({ ...v2.manifest, layers }, 'bad-frame', [{ desc, data }]);
    await assert.rejects(
      update(deps(), { sysroot: os.sysroot, reference: ref('bad-frame'), config: noHooks }),
      code('DELTA_FILE_MISMATCH'),
    );
    const s = await state();
    assert.deepEqual(
      s.snapshots.map((x) => x.number),
      before,
    );
    assert.deepEqual(readdirSync(join(os.sysroot, 'var/cache/tiu/delta')), [], 'no unverified content kept');
    // Whole layers: the layer matches its digest, so the fault is the image's, not the cache's.
    await assert.rejects(
      update(deps(), { sysroot: os.sysroot, reference: ref('bad-frame'), config: noHooks, transfer: 'whole-layer' }),
      code('DELTA_FILE_MISMATCH'),
    );
    assert.deepEqual(
      (await state()).snapshots.map((x) => x.number),
      before,
    );
  });
});
