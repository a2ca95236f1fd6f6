/**
 * `tiu inspect --json` against Debian's skopeo on the same images: the same keys, and the values
 * that must agree (digests, tags, created, labels, platform, layers, env) agree. --config and
 * --config --raw print what skopeo prints.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { requireRoot } from '../helpers/env.ts';
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts';

const TIU = new URL('../../bin/tiu', import.meta.url).pathname;

/** skopeo 1.9 has no LayersData; newer ones do: compare it where skopeo prints it. */
function comparable(skopeo: Record<string, unknown>, tiu: Record<string, unknown>): Record<string, unknown> {
  const out = { ...tiu };
  if (!('LayersData' in skopeo)) delete out.LayersData;
  return out;
}

describe('tiu inspect --json has skopeo inspect keys and values', function () {
  this.timeout(300_000);
  let reg: RunningRegistry;
  let dir = '';
  let layout = '';
  let image = '';

  before(async function () {
    requireRoot(this);
    dir = await mkdtemp(join(tmpdir(), 'tiu-inspect-'));
    const tree = join(dir, 'tree');
    await mkdir(join(tree, 'usr/lib'), { recursive: true });
    await writeFile(join(tree, 'usr/lib/os-release'), 'NAME="Inspect"\nID=inspect\nVERSION_ID=3\n');
    await writeFile(join(tree, 'usr/lib/hello'), 'hello\n');
    layout = join(dir, 'layout');
    await execa(TIU, ['build', tree, '--tag', `oci:${layout}:v3`, '--annotation', 'org.example.k=v']);
    reg = await startRegistry();
    image = `docker://${reg.host}/tiu/inspect`;
    await execa(TIU, ['copy', `oci:${layout}:v3`, `${image}:v3`]);
    await execa(TIU, ['copy', `oci:${layout}:v3`, `${image}:stable`]);
  });
  after(async () => {
    await reg?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const both = async (ref: string, args: string[] = []) => {
    const s = await execa('skopeo', ['inspect', '--tls-verify=false', ...args, ref]);
    const t = await execa(TIU, ['inspect', ...args, ref]);
    return { skopeo: s.stdout, tiu: t.stdout };
  };

  it("a registry image: Name, Digest, RepoTags and the config values are skopeo's", async () => {
    const r = await both(`${image}:v3`);
    const t = await execa(TIU, ['inspect', '--json', `${image}:v3`]);
    const skopeo = JSON.parse(r.skopeo) as Record<string, unknown>;
    const tiu = JSON.parse(t.stdout) as Record<string, unknown>;
    assert.deepEqual(
      Object.keys(tiu).sort(),
      [...Object.keys(skopeo), 'LayersData'].filter((k, i, a) => a.indexOf(k) === i).sort(),
    );
    assert.equal(tiu.Name, `${reg.host}/tiu/inspect`);
    assert.deepEqual((tiu.RepoTags as string[]).sort(), ['stable', 'v3']);
    assert.deepEqual(comparable(skopeo, tiu), { ...skopeo, RepoTags: tiu.RepoTags });
    assert.deepEqual((skopeo.RepoTags as string[]).sort(), ['stable', 'v3']);
    assert.equal((tiu.Labels as Record<string, string>)['org.opensuse.tiu.os-release.VERSION_ID'], '3');
    // LayersData: one per layer, with the zstd:chunked annotations
    const data = tiu.LayersData as {
      Digest: string;
      MIMEType: string;
      Size: number;
      Annotations: Record<string, string>;
    }[];
    assert.deepEqual(
      data.map((l) => l.Digest),
      tiu.Layers,
    );
    assert.ok(data.every((l) => l.Size > 0 && /zstd/.test(l.MIMEType)));
    assert.ok(data.every((l) => 'io.github.containers.zstd-chunked.manifest-checksum' in l.Annotations));
    // --no-tags as skopeo's
    const n = JSON.parse((await execa(TIU, ['inspect', '--json', '--no-tags', `${image}:v3`])).stdout) as {
      RepoTags: unknown;
    };
    assert.deepEqual(n.RepoTags, []);
  });

  it('an OCI layout: no Name, empty RepoTags, otherwise the same', async () => {
    const skopeo = JSON.parse((await execa('skopeo', ['inspect', `oci:${layout}:v3`])).stdout) as Record<
      string,
      unknown
    >;
    const tiu = JSON.parse((await execa(TIU, ['inspect', '--json', `oci:${layout}:v3`])).stdout) as Record<
      string,
      unknown
    >;
    assert.equal('Name' in tiu, false);
    assert.deepEqual(comparable(skopeo, tiu), skopeo);
  });

  it('--config and --config --raw print what skopeo prints; --raw the manifest', async () => {
    const config = await both(`${image}:v3`, ['--config']);
    assert.deepEqual(JSON.parse(config.tiu), JSON.parse(config.skopeo));
    const raw = await both(`${image}:v3`, ['--config', '--raw']);
    assert.equal(raw.tiu, raw.skopeo);
    const manifest = await both(`${image}:v3`, ['--raw']);
    assert.equal(manifest.tiu, manifest.skopeo);
  });

  it('keeps the human output tiu users know', async () => {
    const h = await execa(TIU, ['inspect', `oci:${layout}:v3`]);
    assert.match(h.stdout, /^Reference: {3}oci:/m);
    assert.match(h.stdout, /^OS release: {2}Inspect 3$/m);
    assert.match(h.stdout, /^Annotation: {2}org\.example\.k=v$/m);
    assert.match(h.stdout, /^Layers: {6}\d+ /m);
  });
});
