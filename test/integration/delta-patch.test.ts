/**
 * Delta artifacts on the device (issue 16) end to end: a MicroOS-layout btrfs running a v1 tree,
 * v1 deployed by tiu (so the cache's store holds its manifests and TOCs and snapshot 2 says it
 * holds v1; one file of the booted system differs from v1, so its old content is only in
 * snapshot 2), then v2 with a `tiu delta v1 v2` artifact, from a real docker-registry (no
 * referrers API: the tag fallback) behind the byte-counting proxy.
 *
 * Checked: --check predicts the artifact path's bytes exactly and the update downloads exactly
 * that (index, TOC patches, file patches, frames: the proxy's blob bytes), far less than the
 * changed files' frames; the snapshot equals a whole-layer deployment of v2 file by file; a
 * damaged patch is refused (before a snapshot exists) and that file comes by its frame, with
 * the reason reported; a delta for another FROM is ignored; a registry that ignores Range falls
 * back to whole layers.
 */
import assert from 'node:assert/strict';
import type { KeyObject } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { buildBundle } from '../../src/bundle/build.ts';
import { OciLayoutTarget } from '../../src/content/oci-layout.ts';
import { copy } from '../../src/copy/copy.ts';
import { parseConfig } from '../../src/deploy/config.ts';
import { rollback } from '../../src/deploy/rollback.ts';
import { openContext, readState, snapshotPath } from '../../src/deploy/state.ts';
import { checkUpdate } from '../../src/deploy/update/check.ts';
import { update } from '../../src/deploy/update/index.ts';
import type { UpdateDeps } from '../../src/deploy/update/deps.ts';
import { productionDeps } from '../../src/deploy/wiring.ts';
import { parseReference, referenceName, type DockerReference } from '../../src/oci/reference.ts';
import type { Descriptor, ImageManifest } from '../../src/oci/types.ts';
import { parseDeltaHeader, tocPatchesEnd } from '../../src/patch/delta-index.ts';
import { DELTA_ARTIFACT_TYPE, DeltaAnnotation } from '../../src/patch/media.ts';
import { openRegistryTarget } from '../../src/transport/registry/index.ts';
import { startCountingProxy, type CountingProxy } from '../helpers/counting-proxy.ts';
import { requireRoot } from '../helpers/env.ts';
import { baseOs, createMicroOS, writeTree, type MicroOS, type OsFile } from '../helpers/microos.ts';
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts';
import { diffTrees } from '../helpers/treecmp.ts';
import { installPolicy, signInLayout } from '../helpers/update-deps.ts';

const TIU = fileURLToPath(new URL('../../bin/tiu', import.meta.url));
const hexOf = (d: string) => d.slice('sha256:'.length);

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

/** Program-like bytes: words and numbers with some noise (compresses about 3-4x). */
function content(rand: () => number, size: number): Buffer {
  const words = 'elf symbol glibc section relocation string table debug shared object'.split(' ');
  const parts: Buffer[] = [];
  let n = 0;
  while (n < size) {
    const b =
      rand() < 0.08
        ? Buffer.from(Array.from({ length: 64 }, () => Math.floor(rand() * 256)))
        : Buffer.from(`${words[Math.floor(rand() * words.length)]}_${Math.floor(rand() * 100000)} `);
    parts.push(b);
    n += b.length;
  }
  return Buffer.concat(parts).subarray(0, size);
}

/**
 * Version `v` of 60 files of 20-60 KB: from v1 on, version v rewrites 200 bytes at the start of
 * files 0-11 (an upgrade that patches well); v2 also adds a file no version had.
 */
async function osFiles(v: number): Promise<OsFile[]> {
  const base = (await baseOs()).map((f) =>
    f.path === 'usr/lib/os-release'
      ? { ...f, content: `NAME="Fake MicroOS"\nID="fake-microos"\nVERSION_ID="${v}"\n` }
      : f,
  );
  const files: OsFile[] = [];
  for (let i = 0; i < 60; i++) {
    const rand = prng(i + 1);
    let data = content(rand, 20_000 + Math.floor(rand() * 40_000));
    if (v > 1 && i < 12) data = Buffer.concat([content(prng(1000 * v + i), 200), data.subarray(200)]);
    files.push({ path: `usr/lib/synth/file${i}.so`, content: data, mode: 0o755 });
  }
  if (v === 2) files.push({ path: 'usr/lib/synth/new.dat', content: content(prng(4242), 5000) });
  return [...base, ...files];
}

const SKIP = ['.snapshots', 'var', 'home', 'root', 'opt', 'srv', 'usr/local', 'boot/writable'];

describe('delta artifact updates (tiu delta, registry behind a counting proxy, MicroOS on btrfs)', function () {
  this.timeout(300_000);
  let os: MicroOS;
  let reg: RunningRegistry;
  let proxy: CountingProxy;
  let work: string;
  let key: KeyObject;
  const images: Record<string, { desc: Descriptor; manifest: ImageManifest }> = {};
  /** The v1 -> v2 artifact: its manifest digest and blobs. */
  let artifact: { digest: string; index: Descriptor; patches: Descriptor };
  const noHooks = parseConfig('default-hooks = false');
  const ref = (tag: string) => `docker://${proxy.host}/tiu/os:${tag}`;
  const direct = (tag: string) => `docker://${reg.host}/tiu/os:${tag}`;
  const state = async () => readState(await openContext(os.sysroot));
  const cacheDir = () => join(os.sysroot, 'var/cache/tiu');

  const deps = (): UpdateDeps => ({
    ...productionDeps,
    async openSource(reference, o) {
      const r = parseReference(reference);
      if (r.transport !== 'docker') return productionDeps.openSource(reference, o);
      return { target: openRegistryTarget(r, { registriesConf: false }), reference: referenceName(r) };
    },
  });
  const registry = () =>
    openRegistryTarget(parseReference(`docker://${reg.host}/tiu/os`) as DockerReference, { registriesConf: false });

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

  /** The blob's file in the registry's storage. */
  const blobFile = (d: Descriptor) =>
    join(reg.storage, 'docker/registry/v2/blobs/sha256', hexOf(d.digest).slice(0, 2), hexOf(d.digest), 'data');

  async function tiuDelta(from: string, to: string): Promise<void> {
    const r = await execa(TIU, ['delta', '--json', '--tls-verify=false', direct(from), direct(to)], { reject: false });
    assert.equal(r.exitCode, 0, r.stderr);
  }

  before(async function () {
    requireRoot(this);
    work = await mkdtemp(join(tmpdir(), 'tiu-delta-patch-'));
    const layoutDir = join(work, 'layout');
    // The booted system differs from v1 in one file: its v1 content is only in the snapshot v1 goes into.
    const booted = (await osFiles(1)).map((f) =>
      f.path === 'usr/lib/synth/file0.so' ? { ...f, content: content(prng(99), 30_000) } : f,
    );
    os = await createMicroOS({ files: booted });
    key = await installPolicy(os.sysroot);
    const layout = await OciLayoutTarget.open(layoutDir, { create: true });
    for (const v of [1, 2, 3, 4]) {
      const tree = join(work, `v${v}-tree`);
      await writeTree(tree, await osFiles(v));
      const r = await buildBundle({ kind: 'directory', path: tree }, layout, `v${v}`, {
        compression: 'zstd',
        sourceDateEpoch: 1_767_225_600,
        layers: 3,
      });
      images[`v${v}`] = { desc: r.descriptor, manifest: r.manifest };
      await signInLayout(layoutDir, `v${v}`, key);
    }
    reg = await startRegistry();
    proxy = await startCountingProxy(reg.port);
    const dst = registry();
    try {
      for (const v of ['v1', 'v2', 'v3', 'v4']) await copy(layout, v, dst, v, { referrers: true });
    } finally {
      await dst.close();
    }
    // v1 -> v2: the artifact the device uses; v3 -> v4: one for a FROM no snapshot holds.
    await tiuDelta('v1', 'v2');
    await tiuDelta('v3', 'v4');
    const t = registry();
    try {
      const [a] = await t.referrers(images.v2!.desc, DELTA_ARTIFACT_TYPE);
      assert.ok(a, 'tiu delta attached an artifact to v2');
      const bytes = await readFile(blobFile(a)).catch(async () => {
        const s = await t.fetch(a);
        const parts: Buffer[] = [];
        for await (const c of s) parts.push(c as Buffer);
        return Buffer.concat(parts);
      });
      const m = JSON.parse(bytes.toString('utf8')) as { layers: Descriptor[]; annotations: Record<string, string> };
      assert.equal(m.annotations[DeltaAnnotation.From], images.v1!.desc.digest);
      artifact = { digest: a.digest, index: m.layers[0]!, patches: m.layers[1]! };
    } finally {
      await t.close();
    }
  });
  after(async () => {
    await proxy?.stop();
    await reg?.stop();
    await os?.teardown();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('deploying v1 keeps its manifests and TOCs in the cache', async () => {
    const r = await update(deps(), { sysroot: os.sysroot, reference: ref('v1'), config: noHooks });
    assert.ok(r.status === 'updated');
    assert.equal(r.snapshot, 2);
    const manifests = readdirSync(join(cacheDir(), 'manifests'));
    assert.ok(manifests.includes(hexOf(images.v1!.desc.digest)));
    const tocs = readdirSync(join(cacheDir(), 'tocs'));
    for (const l of images.v1!.manifest.layers)
      assert.ok(tocs.includes(hexOf(l.annotations!['io.github.containers.zstd-chunked.manifest-checksum']!)));
  });

  let predicted = 0;
  let plainFrames = 0;
  /** The snapshot v2 went into by the artifact path: the tree every later v2 must equal. */
  let v2Snapshot = 0;

  it('--check predicts the artifact path (snapshot 2, the pending default, holds FROM)', async () => {
    const c = await checkUpdate(deps(), { sysroot: os.sysroot, reference: ref('v2'), config: noHooks });
    assert.ok(c.status === 'available');
    assert.equal(c.transfer.path, 'delta');
    const a = c.transfer.artifact;
    assert.ok(a, 'the report has the artifact figures');
    assert.equal(a.unused, undefined, a.unused);
    assert.equal(a.digest, artifact.digest);
    assert.equal(a.from, images.v1!.desc.digest);
    assert.equal(
      a.patches.count,
      13,
      'the 12 rewritten files and os-release come as patches (file0.so against snapshot 2, which holds FROM)',
    );
    assert.equal(a.indexBytes, artifact.index.size);
    assert.equal(c.transfer.files?.write.count, 14, '12 patched files, the new one and os-release');
    predicted = c.transfer.downloadBytes;
    // v4 rewrites the same 12 files of v1 and has no usable artifact: their frames, by the file delta.
    const plain = await checkUpdate(deps(), { sysroot: os.sysroot, reference: ref('v4'), config: noHooks });
    assert.ok(plain.status === 'available' && plain.transfer.artifact?.unused);
    plainFrames = plain.transfer.contentBytes;
    const cli = await execa(TIU, ['update', '--check', '--sysroot', os.sysroot, ref('v2')], { reject: false });
    assert.equal(cli.exitCode, 0, cli.stderr);
    assert.match(cli.stdout, /transfer: delta artifact, .* 13 file\(s\) as patches/);
  });

  it('the update downloads exactly what --check predicted, far less than the frames, and equals v2', async () => {
    proxy.reset();
    const r = await update(deps(), { sysroot: os.sysroot, reference: ref('v2'), config: noHooks });
    assert.ok(r.status === 'updated');
    const a = r.transfer?.artifact;
    assert.ok(a && !a.unused);
    assert.equal(a.fallbacks.count, 0, a.fallbacks.reasons.join('; '));
    const digests = [
      ...images.v2!.manifest.layers.map((l) => l.digest),
      artifact.index.digest,
      artifact.patches.digest,
    ];
    const measured = proxy.blobBytes(digests);
    console.log(
      `      delta artifact: ${measured} blob bytes through the proxy (predicted ${predicted}; index ${a.indexBytes}, TOC patches ${a.tocPatches.bytes} for ${a.tocPatches.count} TOCs, file patches ${a.patches.bytes}, TOCs by range ${r.transfer!.tocBytes}, frames ${r.transfer!.contentBytes})`,
    );
    assert.equal(measured, predicted);
    assert.equal(r.transfer!.downloaded, measured);
    // The patches blob in two requests: the TOC patches side by side in one, the file patches in another.
    const patchRequests = proxy.requests.filter((q) => q.blob === artifact.patches.digest).length;
    assert.equal(patchRequests, 2, `${patchRequests} requests for the patches blob`);
    // Everything (index, TOC patches, patches, the new file's frame) against the frames of the changed files alone.
    assert.ok(measured * 5 < plainFrames, `${measured} bytes vs the file delta's frames ${plainFrames}`);
    // The same image by whole layers: the same tree.
    await rollback({ sysroot: os.sysroot, snapshot: 1 });
    const w = await update(deps(), {
      sysroot: os.sysroot,
      reference: ref('v2'),
      config: noHooks,
      transfer: 'whole-layer',
    });
    assert.ok(w.status === 'updated');
    await sameSnapshots(r.snapshot, w.snapshot);
    v2Snapshot = r.snapshot;
  });

  it('a damaged patch is refused before a snapshot exists; that file comes by its frame', async () => {
    await rollback({ sysroot: os.sysroot, snapshot: 1 });
    const index = await readFile(blobFile(artifact.index));
    const header = parseDeltaHeader(index, artifact.patches.size);
    // A byte in the middle of the first file patch.
    const at = tocPatchesEnd(header) + 20;
    const fh = await open(blobFile(artifact.patches), 'r+');
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, at);
    await fh.write(Buffer.from([b[0]! ^ 0xff]), 0, 1, at);
    // The v2 snapshots made above would be content sources (their files reflinked, no patch
    // needed): not tiu's for this run, so the patches are used and one of them fails.
    const ctx = await openContext(os.sysroot);
    const snaps = (await state()).snapshots;
    const v2Digest = snaps.find((s) => s.number === v2Snapshot)!.digest;
    const v2s = snaps.filter((s) => s.digest === v2Digest);
    for (const s of v2s) await ctx.snapper.modify(s.number, { userdata: { 'tiu-digest': '' } });
    try {
      const before = (await state()).snapshots.length;
      const progress: string[] = [];
      const r = await update(deps(), {
        sysroot: os.sysroot,
        reference: ref('v2'),
        config: noHooks,
        onProgress: (l) => progress.push(l),
      });
      assert.ok(r.status === 'updated');
      assert.equal((await state()).snapshots.length, before + 1);
      const a = r.transfer?.artifact;
      assert.ok(a && !a.unused);
      assert.equal(a.fallbacks.count, 1);
      assert.equal(a.patches.count, 12, 'one of the 13 came by its frame');
      assert.match(a.fallbacks.reasons[0]!, /usr\/lib\/synth\/file\d+\.so: the patch for/);
      // The failure was met while downloading, before the snapshot was created.
      const failedAt = progress.findIndex((l) => /patch\(es\) of the delta artifact failed/.test(l));
      const snapAt = progress.findIndex((l) => /^creating snapshot from \d+/.test(l));
      assert.ok(failedAt >= 0 && failedAt < snapAt, progress.join('\n'));
      await sameSnapshots(r.snapshot, v2Snapshot);
    } finally {
      for (const s of v2s) await ctx.snapper.modify(s.number, { userdata: { 'tiu-digest': s.digest! } });
      await fh.write(b, 0, 1, at);
      await fh.close();
    }
  });

  it('an artifact whose index is damaged is not used: the file delta, with the reason', async () => {
    await rollback({ sysroot: os.sysroot, snapshot: 1 });
    const fh = await open(blobFile(artifact.index), 'r+');
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, 10);
    await fh.write(Buffer.from([b[0]! ^ 0xff]), 0, 1, 10);
    try {
      const r = await update(deps(), { sysroot: os.sysroot, reference: ref('v2'), config: noHooks });
      assert.ok(r.status === 'updated');
      assert.equal(r.transfer?.path, 'delta');
      assert.match(r.transfer.artifact?.unused ?? '', new RegExp(`delta artifact ${artifact.digest} cannot be used`));
      assert.equal(r.transfer.artifact?.patches.count, 0);
      await sameSnapshots(r.snapshot, v2Snapshot);
    } finally {
      await fh.write(b, 0, 1, 10);
      await fh.close();
    }
  });

  it('a delta for another FROM is ignored: the file-level delta, with the reason', async () => {
    await rollback({ sysroot: os.sysroot, snapshot: 1 });
    const c = await checkUpdate(deps(), { sysroot: os.sysroot, reference: ref('v4'), config: noHooks });
    assert.ok(c.status === 'available');
    assert.equal(c.transfer.path, 'delta');
    assert.match(c.transfer.artifact?.unused ?? '', /no delta artifact is from an image a local snapshot holds/);
    assert.equal(c.transfer.artifact?.patches.count, 0);
  });

  it('a registry that ignores Range falls back to whole layers and gives the same snapshot', async () => {
    await rollback({ sysroot: os.sysroot, snapshot: 1 });
    // The whole-layer path keeps the TOCs too: read from the cached layers.
    await rm(join(cacheDir(), 'tocs'), { recursive: true, force: true });
    proxy.stripRange(true);
    try {
      const r = await update(deps(), { sysroot: os.sysroot, reference: ref('v2'), config: noHooks });
      assert.ok(r.status === 'updated');
      assert.equal(r.transfer?.path, 'whole-layer');
      assert.match(r.transfer.reason ?? '', /ignores HTTP Range/);
      await sameSnapshots(r.snapshot, v2Snapshot);
    } finally {
      proxy.stripRange(false);
    }
    for (const l of images.v2!.manifest.layers) {
      const c = l.annotations!['io.github.containers.zstd-chunked.manifest-checksum']!;
      assert.ok(existsSync(join(cacheDir(), 'tocs', hexOf(c))), `TOC of ${l.digest} kept`);
    }
  });
});
