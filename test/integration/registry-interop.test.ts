/**
 * Interoperability and the air gap, with real programs: skopeo pulls what tiu pushed and tiu
 * pulls what skopeo pushed (same digests); `tiu copy` carries an image with its referrers from
 * a registry to an OCI layout (the USB stick) and from there to a second registry; a
 * registries.conf mirror serves `tiu copy` while the primary is down.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { parseReference, type DockerReference } from '../../src/oci/reference.ts';
import { openRegistryTarget, type RegistryTarget } from '../../src/transport/registry/index.ts';
import { requireRoot } from '../helpers/env.ts';
import { makeImage, pushImage, readAll, type TestImage } from '../helpers/images.ts';
import { freePort } from '../helpers/ports.ts';
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts';

const exec = promisify(execFile);
const TIU = new URL('../../bin/tiu', import.meta.url).pathname;

async function tiu(...args: string[]): Promise<{ stdout: string; stderr: string }> {
  return exec(TIU, args, { env: { ...process.env, TIU_PROGRESS: '0' } });
}

async function skopeo(...args: string[]): Promise<void> {
  await exec('skopeo', ['--insecure-policy', ...args]);
}

interface LayoutIndex {
  manifests: { digest: string; mediaType: string; size: number; annotations?: Record<string, string> }[];
}

/** Write an OCI layout by hand (as any other tool would), one image tagged `tag`. */
async function writeLayout(dir: string, img: TestImage, tag: string): Promise<void> {
  await mkdir(join(dir, 'blobs/sha256'), { recursive: true });
  await writeFile(join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  for (const b of img.all) await writeFile(join(dir, 'blobs/sha256', b.desc.digest.slice(7)), b.data);
  const index = {
    schemaVersion: 2,
    manifests: [{ ...img.manifest.desc, annotations: { 'org.opencontainers.image.ref.name': tag } }],
  };
  await writeFile(join(dir, 'index.json'), JSON.stringify(index));
}

describe('registry transport: skopeo interop and the air gap', function () {
  this.timeout(300_000);
  let a: RunningRegistry;
  let b: RunningRegistry;
  let dir: string;
  const open = (host: string, repo: string): RegistryTarget =>
    openRegistryTarget(parseReference(`docker://${host}/${repo}`) as DockerReference, { registriesConf: false });

  before(async function () {
    requireRoot(this, 'runs registries and skopeo');
    a = await startRegistry();
    b = await startRegistry();
    dir = await mkdtemp(join(tmpdir(), 'tiu-interop-'));
  });
  after(async () => {
    await a?.stop();
    await b?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('tiu pushes, skopeo pulls the same digests', async () => {
    const img = await makeImage({ layerBytes: [5000, 300_000] });
    await pushImage(open(a.host, 'interop/tiu-pushed'), img, '1');
    const out = join(dir, 'skopeo-pulled');
    await skopeo('copy', '--src-tls-verify=false', `docker://${a.host}/interop/tiu-pushed:1`, `oci:${out}:1`);
    const idx = JSON.parse(await readFile(join(out, 'index.json'), 'utf8')) as LayoutIndex;
    assert.equal(idx.manifests[0]!.digest, img.manifest.desc.digest);
    for (const blob of img.all) {
      assert.ok(
        (await readFile(join(out, 'blobs/sha256', blob.desc.digest.slice(7)))).equals(blob.data),
        `blob ${blob.desc.digest}`,
      );
    }
  });

  it('skopeo pushes, tiu pulls the same digests', async () => {
    const img = await makeImage({ layerBytes: [7000, 200_000] });
    const layout = join(dir, 'by-hand');
    await writeLayout(layout, img, '1');
    await skopeo('copy', '--dest-tls-verify=false', `oci:${layout}:1`, `docker://${a.host}/interop/skopeo-pushed:1`);
    const t = open(a.host, 'interop/skopeo-pushed');
    const d = await t.resolve('1');
    assert.equal(d.digest, img.manifest.desc.digest);
    for (const blob of img.all) assert.ok((await readAll(await t.fetch(blob.desc))).equals(blob.data));
  });

  it('air gap: registry -> oci layout (USB) -> second registry with referrers, via tiu copy', async () => {
    const src = open(a.host, 'os');
    const img = await makeImage({ layerBytes: [4000] });
    await pushImage(src, img, '1');
    const sig = await makeImage({
      subject: img.manifest.desc,
      artifactType: 'application/vnd.dev.sigstore.bundle.v0.3+json',
      annotations: { kind: 'signature' },
    });
    const sbom = await makeImage({ subject: img.manifest.desc, artifactType: 'application/spdx+json' });
    await pushImage(src, sig);
    await pushImage(src, sbom);
    // a cosign signature the old way: a manifest under the tag sha256-<hex>.sig
    const cosign = await makeImage({ annotations: { 'dev.cosignproject.cosign/signature': 'MEUCIQ' } });
    const sigTag = `${img.manifest.desc.digest.replace(':', '-')}.sig`;
    await pushImage(src, cosign, sigTag);
    const usb = join(dir, 'usb');
    await tiu('copy', `docker://${a.host}/os:1`, `oci:${usb}:1`, '--referrers');
    await tiu('copy', `oci:${usb}:1`, `docker://${b.host}/os:1`, '--referrers');
    const dst = open(b.host, 'os');
    assert.equal((await dst.resolve('1')).digest, img.manifest.desc.digest);
    const refs = await dst.referrers(img.manifest.desc);
    assert.deepEqual(refs.map((r) => r.digest).sort(), [sig.manifest.desc.digest, sbom.manifest.desc.digest].sort());
    const only = await dst.referrers(img.manifest.desc, 'application/vnd.dev.sigstore.bundle.v0.3+json');
    assert.equal(only[0]?.annotations?.kind, 'signature');
    for (const blob of [...img.all, ...sig.all, ...sbom.all, ...cosign.all])
      assert.equal(await dst.exists(blob.desc), true);
    assert.equal((await dst.resolve(sigTag)).digest, cosign.manifest.desc.digest);
    // and `tiu inspect` reads it from the second registry
    const { stdout } = await tiu('inspect', `docker://${b.host}/os:1`, '--json');
    assert.equal((JSON.parse(stdout) as { Digest: string }).Digest, img.manifest.desc.digest);
  });

  it('a registries.conf mirror serves tiu copy while the primary is down', async () => {
    const img = await makeImage();
    await pushImage(open(b.host, 'mirror/os'), img, '2');
    const conf = join(dir, 'registries.conf');
    await writeFile(
      conf,
      `[[registry]]\nprefix = "updates.example.com/os"\nlocation = "127.0.0.1:${await freePort()}/os"\n\n[[registry.mirror]]\nlocation = "${b.host}/mirror/os"\n`,
    );
    const out = join(dir, 'from-mirror');
    const { stdout } = await tiu(
      'copy',
      '--registries-conf',
      conf,
      'docker://updates.example.com/os:2',
      `oci:${out}:2`,
      '--json',
    );
    assert.equal((JSON.parse(stdout) as { digest: string }).digest, img.manifest.desc.digest);
    // blocked: refused before any connection
    await writeFile(conf, `[[registry]]\nprefix = "updates.example.com"\nblocked = true\n`);
    await assert.rejects(
      tiu('copy', '--registries-conf', conf, 'docker://updates.example.com/os:2', `oci:${out}:3`, '--json'),
      (e: unknown) =>
        /REGISTRY_BLOCKED/.test(
          String((e as { stdout?: string; stderr?: string }).stdout) + String((e as { stderr?: string }).stderr),
        ),
    );
  });

  it('tiu copy from one registry to another', async () => {
    const img = await makeImage();
    await pushImage(open(a.host, 'cp/src'), img, '1');
    await tiu('copy', `docker://${a.host}/cp/src:1`, `docker://${b.host}/cp/dst:1`);
    assert.equal((await open(b.host, 'cp/dst').resolve('1')).digest, img.manifest.desc.digest);
  });
});
