/**
 * skopeo-compatible copies against the real tools: a Docker v2s2 image in a registry, copied by
 * tiu into `oci:` and `oci-archive:`, is converted to OCI as skopeo converts it (same digests)
 * and read back by skopeo and umoci by its tag; `podman save --format oci-archive` archives are
 * addressable by the name podman gave the image.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts';
import { requireRoot } from '../helpers/env.ts';
import { freePort } from '../helpers/ports.ts';

const TIU = fileURLToPath(new URL('../../bin/tiu', import.meta.url));
const tiu = (...args: string[]) => execa(TIU, args, { reject: false });
const ID_LABEL = 'org.opensuse.tiu.os-release.ID';

interface Inspected {
  Digest: string;
  Labels: Record<string, string> | null;
  Layers: string[];
}
const inspect = async (ref: string): Promise<Inspected> =>
  JSON.parse((await execa('skopeo', ['inspect', ref])).stdout) as Inspected;
const raw = async (ref: string, ...flags: string[]): Promise<{ mediaType: string; config: { mediaType: string } }> =>
  JSON.parse((await execa('skopeo', ['inspect', '--raw', ...flags, ref])).stdout) as {
    mediaType: string;
    config: { mediaType: string };
  };

describe('skopeo-compatible transports and copy semantics (skopeo, umoci, podman)', function () {
  this.timeout(300000);
  let dir: string;
  let registry: RunningRegistry;
  let dockerRef: string;
  let ociLayout: string;

  before(async function () {
    requireRoot(this, 'starts a registry');
    dir = await mkdtemp(join(tmpdir(), 'tiu-skopeo-'));
    // The base image: a tiu bundle with gzip layers (umoci 0.4.7's `insert` writes layer tars
    // without the end-of-archive blocks, which GNU tar and tiu's reader refuse).
    ociLayout = join(dir, 'base');
    const root = join(dir, 'root');
    await mkdir(join(root, 'etc'), { recursive: true });
    await writeFile(join(root, 'etc', 'os-release'), 'ID=opensuse-microos\nVERSION_ID=20251205\n');
    const built = await tiu('build', root, '--compression', 'gzip', '--tag', `oci:${ociLayout}:t`);
    assert.equal(built.exitCode, 0, built.stderr);
    registry = await startRegistry();
    dockerRef = `docker://${registry.host}/docker/img:v1`;
    // skopeo writes it as a Docker v2s2 image: the source the issue is about.
    await execa('skopeo', ['copy', '--dest-tls-verify=false', '--format', 'v2s2', `oci:${ociLayout}:t`, dockerRef]);
    const m = await raw(dockerRef, '--tls-verify=false');
    assert.equal(m.mediaType, 'application/vnd.docker.distribution.manifest.v2+json');
  });
  after(async () => {
    await registry?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('copies a Docker image into oci: as OCI, with the digests skopeo gives it; skopeo and umoci read it by tag', async () => {
    const layout = join(dir, 'tiu-layout');
    const r = await tiu('copy', '--json', '--src-tls-verify=false', dockerRef, `oci:${layout}:v1`);
    assert.equal(r.exitCode, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { digest: string; mediaType: string };
    assert.equal(out.mediaType, 'application/vnd.oci.image.manifest.v1+json');

    const m = await raw(`oci:${layout}:v1`);
    assert.equal(m.mediaType, 'application/vnd.oci.image.manifest.v1+json');
    assert.equal(m.config.mediaType, 'application/vnd.oci.image.config.v1+json');
    const info = await inspect(`oci:${layout}:v1`);
    assert.equal(info.Digest, out.digest);
    assert.equal(info.Labels?.[ID_LABEL], 'opensuse-microos');

    // skopeo's own conversion of the same registry image: byte-identical manifest and config.
    const bySkopeo = join(dir, 'skopeo-layout');
    await execa('skopeo', ['copy', '--src-tls-verify=false', dockerRef, `oci:${bySkopeo}:v1`]);
    assert.equal((await inspect(`oci:${bySkopeo}:v1`)).Digest, out.digest);

    const bundle = join(dir, 'bundle');
    await execa('umoci', ['unpack', '--image', `${layout}:v1`, bundle]);
    assert.match(await readFile(join(bundle, 'rootfs', 'etc', 'os-release'), 'utf8'), /VERSION_ID=20251205/);
  });

  it('copies a Docker image into oci-archive: as OCI; skopeo reads it by tag, umoci from its layout', async () => {
    const archive = join(dir, 'tiu.tar');
    const r = await tiu('copy', '--src-tls-verify=false', dockerRef, `oci-archive:${archive}:v2`);
    assert.equal(r.exitCode, 0, r.stderr);
    const m = await raw(`oci-archive:${archive}:v2`);
    assert.equal(m.mediaType, 'application/vnd.oci.image.manifest.v1+json');
    const info = await inspect(`oci-archive:${archive}:v2`);
    assert.equal(info.Labels?.[ID_LABEL], 'opensuse-microos');
    const unpacked = join(dir, 'archive-layout');
    await mkdir(unpacked);
    await execa('tar', ['-xf', archive, '-C', unpacked]);
    const bundle = join(dir, 'bundle-archive');
    await execa('umoci', ['unpack', '--image', `${unpacked}:v2`, bundle]);
    assert.deepEqual(await readdir(join(bundle, 'rootfs', 'etc')), ['os-release']);
  });

  it('--preserve-digests refuses the conversion before writing anything', async () => {
    const layout = join(dir, 'refused');
    const r = await tiu('copy', '--preserve-digests', '--src-tls-verify=false', dockerRef, `oci:${layout}:v1`);
    assert.equal(r.exitCode, 1);
    assert.match(r.stderr, /\[CONVERSION_REFUSED\]/);
    const blobs = await readdir(join(layout, 'blobs', 'sha256')).catch(() => []);
    assert.deepEqual(blobs, []);
    // skopeo 1.9 keeps the digests by writing the Docker manifest into the layout unconverted,
    // which it then cannot resolve by tag (the complaint): tiu refuses instead.
    const s = await execa('skopeo', [
      'copy',
      '--preserve-digests',
      '--src-tls-verify=false',
      dockerRef,
      `oci:${join(dir, 'kept')}:v1`,
    ]);
    assert.equal(s.exitCode, 0);
    const kept = JSON.parse(await readFile(join(dir, 'kept', 'index.json'), 'utf8')) as {
      manifests: { mediaType: string }[];
    };
    assert.equal(kept.manifests[0]?.mediaType, 'application/vnd.docker.distribution.manifest.v2+json');
  });

  it('reads a `podman save --format oci-archive` archive by the name podman gave it', async () => {
    // A private podman store: the machine's own is left alone.
    const store = ['--root', join(dir, 'podman-root'), '--runroot', join(dir, 'podman-run'), '--storage-driver', 'vfs'];
    const storeSpec = `[vfs@${join(dir, 'podman-root')}+${join(dir, 'podman-run')}]`;
    await execa('skopeo', ['copy', `oci:${ociLayout}:t`, `containers-storage:${storeSpec}localhost/on-top:latest`]);
    const saved = join(dir, 'saved.tar');
    await execa('podman', [...store, 'save', '--format', 'oci-archive', '-o', saved, 'localhost/on-top:latest']);

    const { stdout: indexText } = await execa('tar', ['-xOf', saved, 'index.json']);
    const names = (JSON.parse(indexText) as { manifests: { annotations?: Record<string, string> }[] }).manifests.map(
      (m) => m.annotations?.['org.opencontainers.image.ref.name'],
    );
    assert.deepEqual(names, ['localhost/on-top:latest'], 'podman names the image so');
    const named = `oci-archive:${saved}:localhost/on-top:latest`;
    const r = await tiu('inspect', '--json', named);
    assert.equal(r.exitCode, 0, r.stderr);
    const viaSkopeo = await inspect(named);
    const copied = join(dir, 'from-podman');
    const c = await tiu('copy', '--json', named, `oci:${copied}:on-top`);
    assert.equal(c.exitCode, 0, c.stderr);
    assert.equal((JSON.parse(c.stdout) as { digest: string }).digest, viaSkopeo.Digest);
    assert.equal((await inspect(`oci:${copied}:on-top`)).Digest, viaSkopeo.Digest);
    // The digest form the ambiguity hint offers.
    const byDigest = await tiu('copy', `oci-archive:${saved}@${viaSkopeo.Digest}`, `oci:${copied}:again`);
    assert.equal(byDigest.exitCode, 0, byDigest.stderr);
    const wrongName = await tiu('inspect', `oci-archive:${saved}:localhost/other:latest`);
    assert.notEqual(wrongName.exitCode, 0);
  });

  it('tiu build checks a registry destination before any work: a bare localhost name fails at once', async () => {
    const tree = join(dir, 'tree');
    await mkdir(join(tree, 'etc'), { recursive: true });
    await writeFile(join(tree, 'etc', 'os-release'), 'ID=opensuse-microos\n');
    await writeFile(join(tree, 'etc', 'big'), Buffer.alloc(1 << 20, 7));
    // `localhost:PORT/x:v3` with nothing listening stands for the issue's `localhost/x:v3` (port 80).
    const r = await tiu('build', tree, '--tag', `localhost:${await freePort()}/x:v3`);
    assert.equal(r.exitCode, 1);
    assert.match(r.stderr, /read as the registry at localhost:\d+.*oci:DIR:TAG.*\[REGISTRY_UNREACHABLE\]/);
    assert.equal(r.stderr.trim().split('\n').length, 1, `nothing built before the refusal:\n${r.stderr}`);
    const bad = await tiu('build', tree, '--tag', `oci:${join(dir, 'never')}:v1`, '--delta-from', 'oci:/x:bad name');
    assert.equal(bad.exitCode, 1);
    assert.match(bad.stderr, /\[REFERENCE_INVALID\]/);
    assert.equal(bad.stderr.trim().split('\n').length, 1, bad.stderr);
  });

  it('dir: round trips with skopeo: skopeo writes, tiu reads; tiu writes, skopeo reads', async () => {
    const bySkopeo = join(dir, 'dir-skopeo');
    await execa('skopeo', ['copy', '--src-tls-verify=false', dockerRef, `dir:${bySkopeo}`]);
    const viaSkopeo = await inspect(`dir:${bySkopeo}`);
    const layout = join(dir, 'from-dir');
    const r = await tiu('copy', '--json', `dir:${bySkopeo}`, `oci:${layout}:d`);
    assert.equal(r.exitCode, 0, r.stderr);
    assert.deepEqual((await inspect(`oci:${layout}:d`)).Layers, viaSkopeo.Layers);

    // tiu keeps the Docker manifest as it is in dir: (skopeo does too), digest and all.
    const byTiu = join(dir, 'dir-tiu');
    const w = await tiu('copy', '--json', '--src-tls-verify=false', dockerRef, `dir:${byTiu}`);
    assert.equal(w.exitCode, 0, w.stderr);
    const written = JSON.parse(w.stdout) as { digest: string; mediaType: string };
    assert.equal(written.mediaType, 'application/vnd.docker.distribution.manifest.v2+json');
    assert.equal((await inspect(`dir:${byTiu}`)).Digest, written.digest);
    assert.equal(
      (await execa('skopeo', ['inspect', '--tls-verify=false', dockerRef])).stdout.includes(written.digest),
      true,
      'the registry has the same digest',
    );
    const back = join(dir, 'dir-back');
    await execa('skopeo', ['copy', `dir:${byTiu}`, `oci:${back}:b`]);
    assert.equal(await readFile(join(dir, 'dir-tiu', 'version'), 'utf8'), 'Directory Transport Version: 1.1\n');
    const again = await tiu('copy', '--json', '--src-tls-verify=false', dockerRef, `dir:${byTiu}`);
    assert.equal(again.exitCode, 0, 'a dir: image is replaced by the next copy');
    const built = await tiu('build', `dir:${bySkopeo}`, '--tag', `oci:${join(dir, 'built-from-dir')}:b`);
    assert.equal(built.exitCode, 0, built.stderr);
    const refused = await tiu('copy', '--referrers', '--src-tls-verify=false', dockerRef, `dir:${byTiu}`);
    assert.equal(refused.exitCode, 2);
  });

  it('docker-archive: round trips with skopeo: skopeo writes, tiu reads by the name inside; tiu writes, skopeo and umoci read', async () => {
    const archive = join(dir, 'saved-docker.tar');
    await execa('skopeo', ['copy', `oci:${ociLayout}:t`, `docker-archive:${archive}:localhost/saved:v1`]);
    const viaSkopeo = await inspect(`docker-archive:${archive}`);
    const layout = join(dir, 'from-docker-archive');
    for (const src of [`docker-archive:${archive}`, `docker-archive:${archive}:localhost/saved:v1`]) {
      const r = await tiu('copy', '--json', src, `oci:${layout}:v1`);
      assert.equal(r.exitCode, 0, r.stderr);
    }
    // Layers stay the archive's uncompressed tars, named by the config's diff_ids (as skopeo names them there).
    const info = await inspect(`oci:${layout}:v1`);
    assert.deepEqual(info.Layers, viaSkopeo.Layers);
    assert.equal(info.Labels?.[ID_LABEL], 'opensuse-microos');
    const bundle = join(dir, 'bundle-docker-archive');
    await execa('umoci', ['unpack', '--image', `${layout}:v1`, bundle]);
    assert.match(await readFile(join(bundle, 'rootfs', 'etc', 'os-release'), 'utf8'), /VERSION_ID=20251205/);

    const built = await tiu('build', `docker-archive:${archive}`, '--tag', `oci:${join(dir, 'built-from-archive')}:b`);
    assert.equal(built.exitCode, 0, built.stderr);
    const other = await tiu('copy', `docker-archive:${archive}:localhost/other:v1`, `oci:${layout}:x`);
    assert.equal(other.exitCode, 1);
    assert.match(other.stderr, /\[COPY_FAILED <- CONTENT_NOT_FOUND\]|\[CONTENT_NOT_FOUND\]/);

    // tiu writes one (uncompressed layers named by diff_id), skopeo and umoci read it.
    const out = join(dir, 'by-tiu-docker.tar');
    const w = await tiu('copy', `oci:${ociLayout}:t`, `docker-archive:${out}:localhost/out:v2`);
    assert.equal(w.exitCode, 0, w.stderr);
    const written = await inspect(`docker-archive:${out}`);
    assert.deepEqual(written.Layers, viaSkopeo.Layers, 'the same diff_ids as skopeo wrote');
    assert.equal(written.Labels?.[ID_LABEL], 'opensuse-microos');
    const { stdout: listing } = await execa('tar', ['-tf', out]);
    assert.match(listing, /^manifest\.json$/m);
    const tarManifest = JSON.parse((await execa('tar', ['-xOf', out, 'manifest.json'])).stdout) as {
      RepoTags: string[];
    }[];
    assert.deepEqual(tarManifest[0]?.RepoTags, ['localhost/out:v2']);
    const viaOci = join(dir, 'docker-archive-to-oci');
    await execa('skopeo', ['copy', `docker-archive:${out}:localhost/out:v2`, `oci:${viaOci}:x`]);
    const bundle2 = join(dir, 'bundle-docker-archive-2');
    await execa('umoci', ['unpack', '--image', `${viaOci}:x`, bundle2]);
    assert.match(await readFile(join(bundle2, 'rootfs', 'etc', 'os-release'), 'utf8'), /VERSION_ID=20251205/);
  });
});
