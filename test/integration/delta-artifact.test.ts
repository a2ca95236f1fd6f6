/**
 * Delta artifacts, the CI side (issue 16): `tiu build` v1 and v2 into a real registry
 * (docker-registry 2.8.2: no referrers API, so the tag-schema fallback index), `tiu delta v1 v2`,
 * then read the artifact back as a device would and check every patch against the trees on
 * disk: v1's file + patch = v2's file, byte for byte. Also: reproducible, not duplicated,
 * `tiu build --delta-from` gives the same artifact, `tiu copy --referrers` carries it.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { blobRanges, platformImages, readLayerTocs } from '../../src/bundle/delta-images.ts';
import { fetchManifest, fetchVerified } from '../../src/content/graph.ts';
import { OciLayoutTarget } from '../../src/content/oci-layout.ts';
import type { Target } from '../../src/content/interfaces.ts';
import { ZstdChunkedAnnotation } from '../../src/layer/toc.ts';
import { sha256 } from '../../src/oci/digest.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import type { Descriptor, ImageManifest } from '../../src/oci/types.ts';
import { decodePatch } from '../../src/patch/codec.ts';
import { parseDeltaFiles, parseDeltaHeader, tocDictionary } from '../../src/patch/delta-index.ts';
import {
  DELTA_ARTIFACT_TYPE,
  DELTA_INDEX_MEDIA_TYPE,
  DELTA_PATCHES_MEDIA_TYPE,
  DeltaAnnotation,
  MAX_PATCH_INPUT,
} from '../../src/patch/media.ts';
import { openReference, resolveRoot } from '../../src/transport/resolve.ts';
import { requireRoot } from '../helpers/env.ts';
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts';

const TIU = fileURLToPath(new URL('../../bin/tiu', import.meta.url));
const tiu = (...args: string[]) => execa(TIU, args, { reject: false });

interface DeltaJson {
  artifact: string;
  from: string;
  to: string;
  pushed: boolean;
  files: {
    changed: number;
    patched: number;
    unpatched: Record<string, number>;
    patchBytes: number;
    frameBytes: number;
  };
  tocs: { changed: number; patched: number; patchBytes: number; compressedBytes: number };
  indexBytes: number;
}

/** Lines of text, as config files and scripts are. */
function text(seed: number, lines: number): string {
  return Array.from({ length: lines }, (_, i) => `${seed} line ${i} value=${(i * 2654435761) % 1000003}\n`).join('');
}

const CAFE = Buffer.from('usr/share/caf\xe9', 'latin1'); // a name that is not UTF-8

async function put(root: string, path: string | Buffer, data: string | Buffer, mode = 0o644): Promise<void> {
  const full = typeof path === 'string' ? join(root, path) : Buffer.concat([Buffer.from(root + '/'), path]);
  await mkdir(dirname(typeof full === 'string' ? full : full.toString('latin1')), { recursive: true });
  await writeFile(full, data);
  await chmod(full, mode);
}

describe('delta artifacts: tiu delta, tiu build --delta-from, tiu copy --referrers', function () {
  this.timeout(300000);
  let work: string;
  let reg: RunningRegistry;
  let v1: string;
  let v2: string;
  let ref1: string;
  let ref2: string;
  let first: DeltaJson;

  const bin = randomBytes(300_000);
  const big = Buffer.alloc(MAX_PATCH_INPUT + 4096, 7);

  before(async function () {
    requireRoot(this, 'builds trees as root');
    work = await mkdtemp(join(tmpdir(), 'tiu-delta-artifact-'));
    v1 = join(work, 'v1');
    v2 = join(work, 'v2');
    for (const [root, version] of [
      [v1, 1],
      [v2, 2],
    ] as const) {
      await put(root, 'etc/os-release', `ID=test\nVERSION_ID=${version}\n`);
      for (let i = 0; i < 6; i++)
        await put(
          root,
          `usr/lib/conf/file${i}.txt`,
          text(i, 3000) + (version === 2 && i < 3 ? 'appended in v2\n' : ''),
        );
      // A binary with a few bytes inserted near the start.
      await put(
        root,
        'usr/bin/tool',
        version === 1 ? bin : Buffer.concat([bin.subarray(0, 999), Buffer.from('v2'), bin.subarray(999)]),
        0o755,
      );
      await put(root, CAFE, text(100 + version, 2000));
      // Larger than the patch cap: no patch, ever.
      big[12345] = version;
      await put(root, 'usr/share/big', big);
      // Moved, same content: nothing to patch (the device has it).
      await put(root, version === 1 ? 'usr/share/old-name' : 'usr/share/new-name', text(7, 500));
    }
    await put(v2, 'usr/lib/new-only', text(200, 1000)); // no old file at this path
    reg = await startRegistry();
    ref1 = `docker://${reg.host}/os/test:v1`;
    ref2 = `docker://${reg.host}/os/test:v2`;
    for (const [tree, ref] of [
      [v1, ref1],
      [v2, ref2],
    ]) {
      const r = await tiu('build', tree!, '--tag', ref!, '--tls-verify=false');
      assert.equal(r.exitCode, 0, r.stderr);
    }
    const d = await tiu('delta', ref1, ref2, '--tls-verify=false', '--json');
    assert.equal(d.exitCode, 0, d.stderr);
    first = (JSON.parse(d.stdout) as { deltas: DeltaJson[] }).deltas[0]!;
  });
  after(async function () {
    await reg?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  async function open(ref: string): Promise<{ target: Target; root: Descriptor }> {
    const o = await openReference(ref, { registry: { tlsVerify: false } });
    return { target: o.target, root: await resolveRoot(o) };
  }

  it('counts what it patched and why the rest is not', function () {
    assert.equal(first.pushed, true);
    // os-release (its copy in /usr/lib/tiu/etc has the same content: one patch), file0..2, tool, café;
    // new-only has no old file, big is over the cap, the moved file is not new content
    assert.equal(first.files.patched, 6);
    assert.equal(first.files.changed, 8);
    assert.deepEqual(Object.fromEntries(Object.entries(first.files.unpatched).filter(([, n]) => n > 0)), {
      'no-old-file': 1,
      'too-large': 1,
    });
    assert.ok(first.files.patchBytes * 20 < first.files.frameBytes, JSON.stringify(first.files));
    assert.ok(first.tocs.patched >= 1 && first.tocs.patched <= first.tocs.changed, JSON.stringify(first.tocs));
    assert.ok(first.tocs.patchBytes < first.tocs.compressedBytes);
  });

  it('is listed as a referrer of v2 (tag fallback) naming v1, and every patch rebuilds v2 from v1', async function () {
    const from = await open(ref1);
    const to = await open(ref2);
    assert.equal(first.from, from.root.digest);
    assert.equal(first.to, to.root.digest);
    const listed = await to.target.referrers!(to.root, DELTA_ARTIFACT_TYPE);
    assert.deepEqual(
      listed.map((d) => [d.digest, d.annotations?.[DeltaAnnotation.From]]),
      [[first.artifact, from.root.digest]],
    );
    // docker-registry 2.8.2 has no referrers API: the listing is the sha256-<hex> tag's index.
    const fallback = await to.target.resolve(`sha256-${to.root.digest.slice(7)}`);
    assert.equal(fallback.mediaType, MediaType.OciIndex);

    const { parsed } = await fetchManifest(to.target, listed[0]!);
    assert.equal(parsed.kind, 'manifest');
    const m = (parsed as { manifest: ImageManifest }).manifest;
    assert.equal(m.artifactType, DELTA_ARTIFACT_TYPE);
    assert.equal(m.config.mediaType, MediaType.OciEmpty);
    assert.equal(m.subject?.digest, to.root.digest);
    assert.deepEqual(m.annotations, { [DeltaAnnotation.From]: from.root.digest });
    assert.deepEqual(
      m.layers.map((l) => l.mediaType),
      [DELTA_INDEX_MEDIA_TYPE, DELTA_PATCHES_MEDIA_TYPE],
    );
    const index = await fetchVerified(to.target, m.layers[0]!, 16 << 20);
    const patches = await fetchVerified(to.target, m.layers[1]!, 64 << 20);
    assert.equal(index.length, first.indexBytes);

    const header = parseDeltaHeader(index, patches.length);
    assert.equal(header.from, from.root.digest);
    assert.equal(header.to, to.root.digest);
    const [fromImage] = await platformImages(from.target, from.root);
    const [toImage] = await platformImages(to.target, to.root);
    assert.deepEqual(
      header.fromTocs,
      fromImage!.manifest.layers.map((l) => l.annotations![ZstdChunkedAnnotation.ManifestChecksum]),
    );
    const fromTocs = await readLayerTocs(from.target, fromImage!, blobRanges(from.target));
    const toTocs = await readLayerTocs(to.target, toImage!, blobRanges(to.target));
    const fromJson = Buffer.concat(fromTocs.map((t) => t.json));

    // TOC patches: FROM's TOCs + patch = TO's TOC, as its signed json-digest pins it.
    assert.equal(header.tocs.length, first.tocs.patched);
    for (const t of header.tocs) {
      const layer = toImage!.manifest.layers.find((l) => l.digest === t.layer)!;
      const json = toTocs.find((x) => x.layer.digest === t.layer)!.json;
      const out = decodePatch(patches.subarray(t.offset, t.offset + t.size), fromJson, {
        size: json.length,
        digest: layer.annotations![DeltaAnnotation.TocJsonDigest]!,
        name: `TOC of ${t.layer}`,
      });
      assert.ok(out.equals(json));
    }

    // File patches: v1's file on disk + patch = v2's file on disk.
    const maxFiles = toTocs.reduce((n, t) => n + t.toc.entries.filter((e) => e.type === 'reg').length, 0);
    const files = parseDeltaFiles(
      index,
      header,
      tocDictionary(
        fromTocs.map((t) => t.json),
        toTocs.map((t) => t.json),
      ),
      { patchesSize: patches.length, maxFiles },
    );
    assert.deepEqual(
      files.map((f) => f.path).sort(),
      [
        CAFE.toString('latin1'),
        'etc/os-release',
        'usr/bin/tool',
        ...[0, 1, 2].map((i) => `usr/lib/conf/file${i}.txt`),
      ].sort(),
    );
    for (const f of files) {
      const path = Buffer.from(f.path, 'latin1');
      const old = await readFile(Buffer.concat([Buffer.from(v1 + '/'), path]));
      const neu = await readFile(Buffer.concat([Buffer.from(v2 + '/'), path]));
      assert.equal(f.old, sha256(old));
      assert.equal(f.new, sha256(neu));
      const out = decodePatch(patches.subarray(f.offset, f.offset + f.size), old, {
        size: neu.length,
        digest: f.new,
        name: f.path,
      });
      assert.ok(out.equals(neu), f.path);
    }
    assert.equal(
      files.reduce((n, f) => n + f.size, 0),
      first.files.patchBytes,
    );
  });

  it('is reproducible: tiu delta again and tiu build --delta-from give the same artifact, listed once', async function () {
    const again = await tiu('delta', ref1, ref2, '--tls-verify=false', '--json');
    assert.equal(again.exitCode, 0, again.stderr);
    const d = (JSON.parse(again.stdout) as { deltas: DeltaJson[] }).deltas[0]!;
    assert.equal(d.artifact, first.artifact);
    assert.equal(d.pushed, false);
    const built = await tiu('build', v2, '--tag', ref2, '--delta-from', ref1, '--tls-verify=false', '--json');
    assert.equal(built.exitCode, 0, built.stderr);
    const b = JSON.parse(built.stdout) as { digest: string; deltas: DeltaJson[] };
    assert.equal(b.digest, first.to);
    assert.deepEqual(
      b.deltas.map((x) => [x.artifact, x.pushed]),
      [[first.artifact, false]],
    );
    const to = await open(ref2);
    assert.equal((await to.target.referrers!(to.root, DELTA_ARTIFACT_TYPE)).length, 1);
  });

  it('tiu build --delta-from makes and pushes the artifact for a new image', async function () {
    const ref3 = `docker://${reg.host}/os/test:v3`;
    await put(v2, 'usr/lib/conf/file4.txt', text(4, 3000) + 'v3\n');
    try {
      const built = await tiu('build', v2, '--tag', ref3, '--delta-from', ref1, '--tls-verify=false', '--json');
      assert.equal(built.exitCode, 0, built.stderr);
      const b = JSON.parse(built.stdout) as { digest: string; deltas: DeltaJson[] };
      assert.equal(b.deltas.length, 1);
      assert.equal(b.deltas[0]!.pushed, true);
      assert.equal(b.deltas[0]!.files.patched, 7);
      const to = await open(ref3);
      assert.equal(to.root.digest, b.digest);
      assert.deepEqual(
        (await to.target.referrers!(to.root, DELTA_ARTIFACT_TYPE)).map((d) => d.digest),
        [b.deltas[0]!.artifact],
      );
    } finally {
      await put(v2, 'usr/lib/conf/file4.txt', text(4, 3000));
    }
  });

  it('tiu copy --referrers carries the artifact into an OCI layout, blobs and all', async function () {
    const layout = join(work, 'usb');
    const r = await tiu('copy', '--referrers', ref2, `oci:${layout}:v2`, '--tls-verify=false');
    assert.equal(r.exitCode, 0, r.stderr);
    const to = await open(`oci:${layout}:v2`);
    const listed = await to.target.referrers!(to.root, DELTA_ARTIFACT_TYPE);
    assert.deepEqual(
      listed.map((d) => [d.digest, d.annotations?.[DeltaAnnotation.From]]),
      [[first.artifact, first.from]],
    );
    const { parsed } = await fetchManifest(to.target, listed[0]!);
    for (const l of (parsed as { manifest: ImageManifest }).manifest.layers)
      assert.equal((await fetchVerified(to.target, l, 64 << 20)).length, l.size);
    // The same image on both sides is refused.
    const again = await tiu('delta', `oci:${layout}:v2`, `oci:${layout}:v2`, '--json');
    assert.equal(again.exitCode, 1);
    assert.equal((JSON.parse(again.stdout) as { error: { code: string } }).error.code, 'DELTA_IMAGE_UNSUPPORTED');
  });

  it('an index: one artifact per platform FROM has too, each a referrer of that platform manifest', async function () {
    const layout = join(work, 'multi');
    const arches = { v1: ['amd64', 'arm64'], v2: ['amd64', 'arm64', 'riscv64'] };
    const platformDigest: Record<string, string> = {};
    for (const [name, tree] of [
      ['v1', v1],
      ['v2', v2],
    ] as const) {
      for (const arch of arches[name]) {
        const b = await tiu('build', tree, '--tag', `oci:${layout}:${name}-${arch}`, '--arch', arch);
        assert.equal(b.exitCode, 0, b.stderr);
      }
      const t = await OciLayoutTarget.open(layout);
      const manifests: Descriptor[] = [];
      for (const arch of arches[name]) {
        const d = await t.resolve(`${name}-${arch}`);
        platformDigest[`${name}-${arch}`] = d.digest;
        manifests.push({ ...d, platform: { os: 'linux', architecture: arch } });
      }
      const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests }));
      const index: Descriptor = { mediaType: MediaType.OciIndex, digest: sha256(bytes), size: bytes.length };
      await t.push(index, Readable.from([bytes]));
      await t.tag(index, name);
    }
    const r = await tiu('delta', `oci:${layout}:v1`, `oci:${layout}:v2`, '--json');
    assert.equal(r.exitCode, 0, r.stderr);
    const deltas = (JSON.parse(r.stdout) as { deltas: (DeltaJson & { platform: string })[] }).deltas;
    assert.deepEqual(
      deltas.map((d) => [d.platform, d.from, d.to, d.files.patched]),
      ['amd64', 'arm64'].map((a) => [`linux/${a}`, platformDigest[`v1-${a}`], platformDigest[`v2-${a}`], 6]),
    );
    const t = await OciLayoutTarget.open(layout);
    for (const [i, arch] of ['amd64', 'arm64'].entries()) {
      const subject = await t.resolve(`v2-${arch}`);
      assert.deepEqual(
        (await t.referrers(subject, DELTA_ARTIFACT_TYPE)).map((d) => d.digest),
        [deltas[i]!.artifact],
      );
    }
    assert.deepEqual(await t.referrers(await t.resolve('v2-riscv64'), DELTA_ARTIFACT_TYPE), []);
  });

  it('refuses images without tables of contents (gzip layers) with DELTA_IMAGE_UNSUPPORTED', async function () {
    const gz = `oci:${join(work, 'gz')}:v1`;
    const b = await tiu('build', v1, '--tag', gz, '--compression', 'gzip');
    assert.equal(b.exitCode, 0, b.stderr);
    const r = await tiu('delta', gz, ref2, '--tls-verify=false', '--json');
    assert.equal(r.exitCode, 1);
    const e = (JSON.parse(r.stdout) as { error: { code: string; message: string } }).error;
    assert.equal(e.code, 'DELTA_IMAGE_UNSUPPORTED');
    assert.match(e.message, /not a zstd:chunked layer/);
  });
});
