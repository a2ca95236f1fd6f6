/**
 * `tiu copy` and `tiu inspect` driven as a user would, against images made by umoci and read
 * back by skopeo (independent implementations of the OCI layout and oci-archive formats).
 */
import assert from 'node:assert/strict';
import { cp, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';

const TIU = fileURLToPath(new URL('../../bin/tiu', import.meta.url));

interface IndexJson {
  manifests: { digest: string; size: number; mediaType: string; annotations?: Record<string, string> }[];
}
async function indexOf(layout: string): Promise<IndexJson> {
  return JSON.parse(await readFile(join(layout, 'index.json'), 'utf8')) as IndexJson;
}
async function digestOfTag(layout: string, tag: string): Promise<string | undefined> {
  return (await indexOf(layout)).manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag)
    ?.digest;
}
const tiu = (...args: string[]) => execa(TIU, args, { reject: false });

describe('tiu copy / inspect with umoci and skopeo', function () {
  this.timeout(120000);
  let dir: string;
  let A: string;
  let manifestDigest: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tiu-cli-'));
    A = join(dir, 'A');
    await execa('umoci', ['init', '--layout', A]);
    await execa('umoci', ['new', '--image', `${A}:t`]);
    const root = join(dir, 'root');
    await mkdir(join(root, 'etc'), { recursive: true });
    await mkdir(join(root, 'usr', 'bin'), { recursive: true });
    await writeFile(
      join(root, 'etc', 'os-release'),
      'NAME="openSUSE MicroOS"\nID=opensuse-microos\nVERSION_ID=20251126\n',
    );
    await writeFile(join(root, 'usr', 'bin', 'hello'), '#!/bin/sh\necho hello\n'.repeat(200), { mode: 0o755 });
    await execa('umoci', ['insert', '--image', `${A}:t`, join(root, 'etc'), '/etc']);
    await execa('umoci', ['insert', '--image', `${A}:t`, join(root, 'usr'), '/usr']);
    await execa('umoci', [
      'config',
      '--image',
      `${A}:t`,
      '--config.label',
      'ID=opensuse-microos',
      '--config.label',
      'VERSION_ID=20251126',
    ]);
    manifestDigest = (await digestOfTag(A, 't'))!;
    assert.match(manifestDigest, /^sha256:[0-9a-f]{64}$/);
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('tiu --version and --help', async () => {
    const v = await tiu('--version');
    assert.equal(v.exitCode, 0);
    assert.match(v.stdout, /^tiu \d+\.\d+\.\d+/);
    for (const c of ['copy', 'inspect']) {
      const h = await tiu(c, '--help');
      assert.equal(h.exitCode, 0);
      assert.match(h.stdout, new RegExp(`usage: tiu ${c}`));
    }
    const bad = await tiu('copy', 'oci:only-one');
    assert.equal(bad.exitCode, 2);
  });

  it('copies an umoci image between layouts keeping its digest; skopeo reads the result', async () => {
    const B = join(dir, 'B');
    const r = await tiu('copy', `oci:${A}:t`, `oci:${B}:t`);
    assert.equal(r.exitCode, 0, r.stderr);
    assert.match(r.stdout, new RegExp(manifestDigest));
    assert.match(r.stderr, /copying blob/);
    assert.equal(await digestOfTag(B, 't'), manifestDigest);
    const s = await execa('skopeo', ['inspect', `oci:${B}:t`]);
    const info = JSON.parse(s.stdout) as { Digest: string; Labels: Record<string, string>; Layers: string[] };
    assert.equal(info.Digest, manifestDigest);
    assert.equal(info.Labels.ID, 'opensuse-microos');
    assert.equal(info.Layers.length, 2);
    const rawA = await execa('skopeo', ['inspect', '--raw', `oci:${A}:t`]);
    const rawB = await tiu('inspect', '--raw', `oci:${B}:t`);
    assert.equal(rawB.stdout, rawA.stdout);
    // a second copy moves nothing
    const again = await tiu('copy', `oci:${A}:t`, `oci:${B}:t`);
    assert.equal(again.exitCode, 0);
    assert.doesNotMatch(again.stderr, /copying/);
    assert.match(again.stderr, /skipping manifest/);
  });

  it('inspect shows config, layers and os-release, as text and JSON', async () => {
    const j = await tiu('inspect', '--json', `oci:${A}:t`);
    assert.equal(j.exitCode, 0, j.stderr);
    // skopeo inspect's keys
    const v = JSON.parse(j.stdout);
    assert.equal(v.Digest, manifestDigest);
    assert.equal(v.Os, 'linux');
    assert.equal(v.Layers.length, 2);
    assert.deepEqual(v.RepoTags, []);
    assert.equal(v.Labels.ID, 'opensuse-microos');
    const h = await tiu('inspect', `oci:${A}:t`);
    assert.match(h.stdout, /Layers:\s+2/);
    assert.match(h.stdout, /ID=opensuse-microos/);
    // the only image of a layout needs no tag
    assert.equal(JSON.parse((await tiu('inspect', '--json', `oci:${A}`)).stdout).Digest, manifestDigest);
    const missing = await tiu('inspect', `oci:${A}:nope`);
    assert.equal(missing.exitCode, 1);
    assert.match(missing.stderr, /^tiu: error: tag "nope" not found in .*\[CONTENT_NOT_FOUND\]$/);
    assert.equal(missing.stderr.split('\n').length, 1);
  });

  it('writes an oci-archive that skopeo reads, and reads one skopeo wrote', async () => {
    const archive = join(dir, 'img.tar');
    const w = await tiu('copy', `oci:${A}:t`, `oci-archive:${archive}:v1`);
    assert.equal(w.exitCode, 0, w.stderr);
    const C = join(dir, 'C');
    await execa('skopeo', ['copy', `oci-archive:${archive}:v1`, `oci:${C}:c`]);
    const s = JSON.parse((await execa('skopeo', ['inspect', `oci-archive:${archive}:v1`])).stdout) as {
      Digest: string;
    };
    assert.equal(s.Digest, manifestDigest);
    assert.equal(await digestOfTag(C, 'c'), manifestDigest);

    const skopeoArchive = join(dir, 'skopeo.tar');
    await execa('skopeo', ['copy', `oci:${A}:t`, `oci-archive:${skopeoArchive}:s`]);
    const E = join(dir, 'E');
    const r = await tiu('copy', '--json', `oci-archive:${skopeoArchive}:s`, `oci:${E}:e`);
    assert.equal(r.exitCode, 0, r.stdout);
    const out = JSON.parse(r.stdout);
    assert.equal(out.digest, manifestDigest);
    assert.equal(await digestOfTag(E, 'e'), manifestDigest);
  });

  it('a layout with one altered blob: copy fails naming the blob, and no tag points at incomplete content', async () => {
    const bad = join(dir, 'bad');
    await cp(A, bad, { recursive: true });
    const manifest = JSON.parse(await readFile(join(bad, 'blobs', 'sha256', manifestDigest.slice(7)), 'utf8')) as {
      layers: { digest: string }[];
    };
    const layerDigest = manifest.layers[1]!.digest;
    const blobPath = join(bad, 'blobs', 'sha256', layerDigest.slice(7));
    const data = await readFile(blobPath);
    data[data.length >> 1] = data[data.length >> 1]! ^ 0x55;
    await writeFile(blobPath, data);

    // the destination already has a good, complete image under the same tag
    const D = join(dir, 'D');
    await execa('umoci', ['init', '--layout', D]);
    await execa('umoci', ['new', '--image', `${D}:t`]);
    const before = (await digestOfTag(D, 't'))!;

    const r = await tiu('copy', `oci:${bad}:t`, `oci:${D}:t`);
    assert.equal(r.exitCode, 1);
    assert.match(r.stderr, new RegExp(layerDigest));
    assert.match(r.stderr, /does not match its digest/);
    assert.match(r.stderr, /\[DIGEST_MISMATCH\]/);
    assert.equal(
      r.stderr
        .trim()
        .split('\n')
        .filter((l) => l.startsWith('tiu: error')).length,
      1,
    );

    const j = await tiu('copy', '--json', `oci:${bad}:t`, `oci:${D}:t`);
    assert.equal(j.exitCode, 1);
    const err = JSON.parse(j.stdout).error;
    assert.equal(err.code, 'DIGEST_MISMATCH');
    assert.equal(err.details.causeCode, 'DIGEST_MISMATCH');
    assert.equal(err.details.origin, 'source');
    assert.equal(err.details.digest, layerDigest);

    // the tag still names the old, complete image; the new manifest and bad blob are absent
    assert.equal(await digestOfTag(D, 't'), before);
    const blobs = await readdir(join(D, 'blobs', 'sha256'));
    assert.ok(!blobs.includes(manifestDigest.slice(7)));
    assert.ok(!blobs.includes(layerDigest.slice(7)));
    assert.ok(
      blobs.every((b) => /^[0-9a-f]{64}$/.test(b)),
      `stray files: ${blobs.join(' ')}`,
    );
    for (const m of (await indexOf(D)).manifests) {
      const s = await execa('skopeo', ['inspect', `oci:${D}:${m.annotations!['org.opencontainers.image.ref.name']}`], {
        reject: false,
      });
      assert.equal(s.exitCode, 0, s.stderr);
    }
    // a fresh destination gets no tag at all
    const F = join(dir, 'F');
    const f = await tiu('copy', `oci:${bad}:t`, `oci:${F}:t`);
    assert.equal(f.exitCode, 1);
    assert.equal(await digestOfTag(F, 't'), undefined);
    // and an archive destination is not written
    const g = await tiu('copy', `oci:${bad}:t`, `oci-archive:${join(dir, 'never.tar')}:t`);
    assert.equal(g.exitCode, 1);
    assert.ok(!(await readdir(dir)).includes('never.tar'));
  });
});
