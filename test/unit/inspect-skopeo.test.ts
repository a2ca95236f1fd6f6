import assert from 'node:assert/strict';
import { describe, it } from 'mocha';
import { platformEntry, skopeoInspect } from '../../src/cli/inspect-skopeo.ts';
import type { ImageConfig, ImageIndex, ImageManifest } from '../../src/oci/types.ts';

const d = (c: string): `sha256:${string}` => `sha256:${c.repeat(64)}`;
const manifest: ImageManifest = {
  schemaVersion: 2,
  mediaType: 'application/vnd.oci.image.manifest.v1+json',
  config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: d('c'), size: 10 },
  layers: [
    { mediaType: 'application/vnd.oci.image.layer.v1.tar+zstd', digest: d('1'), size: 5, annotations: { k: 'v' } },
    { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: d('2'), size: 7 },
  ],
};

describe('inspect --json in skopeo inspect shape', () => {
  it('arranges the config and layers under skopeo keys, in skopeo order', () => {
    const config = {
      architecture: 'arm64',
      variant: 'v8',
      os: 'linux',
      created: '2026-01-01T00:00:00Z',
      docker_version: '24.0.7',
      config: { Env: ['PATH=/bin'], Labels: { a: 'b' } },
      rootfs: { type: 'layers', diff_ids: [] },
    } as ImageConfig;
    const v = skopeoInspect({ name: 'quay.io/x/y', digest: d('a'), repoTags: ['1', '2'], manifest, config });
    assert.deepEqual(Object.keys(v), [
      'Name',
      'Digest',
      'RepoTags',
      'Created',
      'DockerVersion',
      'Labels',
      'Architecture',
      'Variant',
      'Os',
      'Layers',
      'LayersData',
      'Env',
    ]);
    assert.equal(v.DockerVersion, '24.0.7');
    assert.equal(v.Variant, 'v8');
    assert.deepEqual(v.Layers, [d('1'), d('2')]);
    assert.deepEqual(v.LayersData[0], {
      MIMEType: manifest.layers[0]!.mediaType,
      Digest: d('1'),
      Size: 5,
      Annotations: { k: 'v' },
    });
    assert.equal(v.LayersData[1]!.Annotations, null);
  });

  it('what an image lacks is empty or null as skopeo prints it; no Name outside docker://', () => {
    const v = skopeoInspect({ digest: d('a'), repoTags: [], manifest, config: undefined });
    assert.equal('Name' in v, false);
    assert.equal('Created' in v, false);
    assert.equal(v.DockerVersion, '');
    assert.equal(v.Labels, null);
    assert.equal(v.Env, null);
    assert.equal(v.Architecture, '');
  });

  it("an index is inspected as this machine's image", () => {
    const index: ImageIndex = {
      schemaVersion: 2,
      manifests: [
        { mediaType: manifest.mediaType!, digest: d('3'), size: 1, platform: { os: 'linux', architecture: 'arm64' } },
        { mediaType: manifest.mediaType!, digest: d('4'), size: 1, platform: { os: 'linux', architecture: 'amd64' } },
      ],
    };
    assert.equal(platformEntry(index, 'amd64')?.digest, d('4'));
    assert.equal(platformEntry(index, 'arm64')?.digest, d('3'));
    assert.equal(platformEntry(index, 's390x'), undefined);
  });
});
