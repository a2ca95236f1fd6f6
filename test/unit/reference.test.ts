import assert from 'node:assert/strict';
import { parseReference, formatReference, referenceName } from '../../src/oci/reference.ts';
import { isTiuError } from '../../src/errors.ts';

const D = 'sha256:' + 'a'.repeat(64);

describe('reference', () => {
  const cases: [string, object][] = [
    ['debian', { transport: 'docker', registry: 'docker.io', repository: 'library/debian' }],
    ['debian:12', { transport: 'docker', registry: 'docker.io', repository: 'library/debian', tag: '12' }],
    ['docker://opensuse/tumbleweed', { transport: 'docker', registry: 'docker.io', repository: 'opensuse/tumbleweed' }],
    ['localhost/os', { transport: 'docker', registry: 'localhost', repository: 'os' }],
    [
      '127.0.0.1:5000/os/micro:1',
      { transport: 'docker', registry: '127.0.0.1:5000', repository: 'os/micro', tag: '1' },
    ],
    [
      `registry.opensuse.org/x@${D}`,
      { transport: 'docker', registry: 'registry.opensuse.org', repository: 'x', digest: D },
    ],
    [`host:5000/x:t@${D}`, { transport: 'docker', registry: 'host:5000', repository: 'x', tag: 't', digest: D }],
    ['index.docker.io/library/busybox', { transport: 'docker', registry: 'docker.io', repository: 'library/busybox' }],
    ['oci:/media/usb/layout', { transport: 'oci', path: '/media/usb/layout' }],
    ['oci:/media/usb/layout:1.0', { transport: 'oci', path: '/media/usb/layout', tag: '1.0' }],
    [`oci:rel/dir:${D}`, { transport: 'oci', path: 'rel/dir', digest: D }],
    ['oci-archive:/tmp/a.tar:latest', { transport: 'oci-archive', path: '/tmp/a.tar', tag: 'latest' }],
    // what `podman save --format oci-archive` names the image, as skopeo takes it
    [
      'oci-archive:saved.tar:localhost/on-top:latest',
      { transport: 'oci-archive', path: 'saved.tar', tag: 'localhost/on-top:latest' },
    ],
    [
      'oci:l:registry.example.com/a_b/c-d:1.0',
      { transport: 'oci', path: 'l', tag: 'registry.example.com/a_b/c-d:1.0' },
    ],
    ['dir:/tmp/x:y', { transport: 'dir', path: '/tmp/x:y' }],
    ['docker-archive:/tmp/s.tar', { transport: 'docker-archive', path: '/tmp/s.tar' }],
    [
      'docker-archive:s.tar:busybox',
      { transport: 'docker-archive', path: 's.tar', tag: 'docker.io/library/busybox:latest' },
    ],
    [
      'docker-archive:s.tar:localhost/saved:v1',
      { transport: 'docker-archive', path: 's.tar', tag: 'localhost/saved:v1' },
    ],
    [`oci:rel/dir@${D}`, { transport: 'oci', path: 'rel/dir', digest: D }],
    [`oci-archive:/tmp/a.tar@${D}`, { transport: 'oci-archive', path: '/tmp/a.tar', digest: D }],
  ];
  for (const [input, want] of cases) {
    it(`parses ${input}`, () => assert.deepEqual(parseReference(input), want));
  }

  for (const bad of [
    '',
    'UPPER/case',
    'docker://',
    'x:bad tag',
    'x@sha256:123',
    'oci:',
    'dir:',
    'docker-archive:',
    `docker-archive:s.tar:x@${D}`,
    'docker-archive:s.tar:Upper',
    'a//b',
    `oci:/x:sha256:zz`,
    'oci:/x:a//b',
    'oci:/x:/abs',
    'oci:/x:-lead',
    'oci:/x:has space',
    'oci:/x:@0',
  ]) {
    it(`rejects ${JSON.stringify(bad)}`, () => {
      assert.throws(
        () => parseReference(bad),
        (e: unknown) => isTiuError(e, 'REFERENCE_INVALID'),
      );
    });
  }

  it('formats and names', () => {
    assert.equal(formatReference(parseReference('debian')), 'docker://docker.io/library/debian');
    assert.equal(referenceName(parseReference('debian')), 'latest');
    assert.equal(referenceName(parseReference('oci:/x')), undefined);
    assert.equal(formatReference(parseReference('oci:/x:t')), 'oci:/x:t');
  });
});
