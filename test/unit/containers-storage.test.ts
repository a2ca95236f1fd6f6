import assert from 'node:assert/strict';
import { describe, it } from 'mocha';
import { formatReference, parseReference } from '../../src/oci/reference.ts';
import { saveFromStorage, storageArgs } from '../../src/host/podman.ts';
import { openReference } from '../../src/transport/resolve.ts';
import { policyScopes } from '../../src/trust/policy.ts';

describe('containers-storage: references', () => {
  it('parses a name, an ID and a storage specifier as containers-transports(5) spells them', () => {
    assert.deepEqual(parseReference('containers-storage:localhost/os:v2'), {
      transport: 'containers-storage',
      image: 'localhost/os:v2',
    });
    assert.deepEqual(parseReference('containers-storage:dcc17200a4f9'), {
      transport: 'containers-storage',
      image: 'dcc17200a4f9',
    });
    const full = 'containers-storage:[overlay@/var/lib/c+/run/c:overlay.mountopt=nodev]os@sha256:' + 'a'.repeat(64);
    const r = parseReference(full);
    assert.deepEqual(r, {
      transport: 'containers-storage',
      storage: { driver: 'overlay', root: '/var/lib/c', runRoot: '/run/c', options: 'overlay.mountopt=nodev' },
      image: 'os@sha256:' + 'a'.repeat(64),
    });
    assert.equal(formatReference(r), full);
    assert.deepEqual(parseReference('containers-storage:[/srv/store]x').transport, 'containers-storage');
  });

  it('refuses what podman could take as an option, relative store paths and empty names', () => {
    for (const bad of [
      'containers-storage:',
      'containers-storage:--root=/tmp',
      'containers-storage:a b',
      'containers-storage:[vfs@relative]x',
      'containers-storage:[/x+run]x',
      'containers-storage:[/x',
      'containers-storage:[Bad!@/x]y',
      'containers-storage:[/x]',
    ]) {
      assert.throws(() => parseReference(bad), { code: 'REFERENCE_INVALID' }, bad);
    }
  });

  it('maps the specifier to podman options and the policy to the transport default', () => {
    assert.deepEqual(storageArgs(undefined), []);
    assert.deepEqual(storageArgs({ driver: 'vfs', root: '/r', runRoot: '/rr', options: 'a=1,b=2' }), [
      '--root',
      '/r',
      '--runroot',
      '/rr',
      '--storage-driver',
      'vfs',
      '--storage-opt',
      'a=1',
      '--storage-opt',
      'b=2',
    ]);
    assert.deepEqual(policyScopes(parseReference('containers-storage:x')), {
      transport: 'containers-storage',
      scopes: [''],
    });
  });

  it('is a source only, and says so when podman is not installed', async () => {
    await assert.rejects(openReference('containers-storage:x', { forWrite: true }), {
      code: 'CONTAINERS_STORAGE_UNSUPPORTED',
    });
    const path = process.env.PATH;
    process.env.PATH = '/nonexistent';
    try {
      await assert.rejects(saveFromStorage({ transport: 'containers-storage', image: 'x' }, '/nonexistent/out'), {
        code: 'PODMAN_MISSING',
      });
    } finally {
      process.env.PATH = path;
    }
  });
});
