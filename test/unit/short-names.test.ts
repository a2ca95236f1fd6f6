import assert from 'node:assert/strict';
import { describe, it } from 'mocha';
import { formatReference } from '../../src/oci/reference.ts';
import { parseRegistriesConf, type RegistriesConf } from '../../src/transport/registry/registries-conf.ts';
import { openReference } from '../../src/transport/resolve.ts';
import { isShortName, shortNameCandidates } from '../../src/transport/short-names.ts';
import { startFakeRegistry } from '../helpers/fake-registry.ts';
import { makeImage, pushImage } from '../helpers/images.ts';
import { openRegistryTarget } from '../../src/transport/registry/index.ts';
import { parseReference, type DockerReference } from '../../src/oci/reference.ts';

const conf = (text: string): RegistriesConf => parseRegistriesConf(text, '/etc/containers/registries.conf');
const names = (c: { candidates: DockerReference[] }) => c.candidates.map((r) => formatReference(r));

describe('short names (podman resolution, never prompting)', () => {
  it('tells short names from qualified ones', () => {
    for (const s of ['alpine', 'alpine:3', 'tools/x:1', 'tools/x@sha256:' + 'a'.repeat(64)])
      assert.equal(isShortName(s), true, s);
    for (const q of [
      'docker://alpine',
      'quay.io/x',
      'localhost/x',
      'localhost:5000/x',
      'host:5000/x',
      'oci:/x',
      'oci-archive:/x',
    ])
      assert.equal(isShortName(q), false, q);
  });

  it('an alias wins and keeps the tag or digest', () => {
    const c = conf(
      'unqualified-search-registries = ["a.example", "b.example"]\n[aliases]\n"tools/x" = "quay.io/org/x"\n',
    );
    assert.deepEqual(names(shortNameCandidates('tools/x:1', c)), ['docker://quay.io/org/x:1']);
    const d = 'sha256:' + 'b'.repeat(64);
    assert.deepEqual(names(shortNameCandidates(`tools/x@${d}`, c)), [`docker://quay.io/org/x@${d}`]);
    assert.throws(() => shortNameCandidates('y', conf('[aliases]\ny = "also/short"\n')), { code: 'CONFIG_INVALID' });
  });

  it('one search registry is the answer; docker.io names get library/', () => {
    assert.deepEqual(names(shortNameCandidates('alpine', conf('unqualified-search-registries = ["docker.io"]\n'))), [
      'docker://docker.io/library/alpine',
    ]);
  });

  it('several: SHORT_NAME_AMBIGUOUS when enforcing (the default), all in order when permissive or disabled', () => {
    const two = 'unqualified-search-registries = ["a.example", "b.example"]\n';
    assert.throws(() => shortNameCandidates('x:1', conf(two)), { code: 'SHORT_NAME_AMBIGUOUS' });
    assert.throws(() => shortNameCandidates('x:1', conf('short-name-mode = "enforcing"\n' + two)), {
      code: 'SHORT_NAME_AMBIGUOUS',
    });
    for (const mode of ['permissive', 'disabled']) {
      assert.deepEqual(names(shortNameCandidates('x:1', conf(`short-name-mode = "${mode}"\n` + two))), [
        'docker://a.example/x:1',
        'docker://b.example/x:1',
      ]);
    }
    assert.throws(() => conf('short-name-mode = "ask"\n'), { code: 'CONFIG_INVALID' });
  });

  it('no alias and no search registries: SHORT_NAME_UNRESOLVED naming the file', () => {
    assert.throws(() => shortNameCandidates('x', conf('')), {
      code: 'SHORT_NAME_UNRESOLVED',
      message: /registries\.conf/,
    });
  });

  it('a pull takes the first candidate that has the image; a destination is never guessed', async () => {
    const a = await startFakeRegistry();
    const b = await startFakeRegistry();
    try {
      const img = await makeImage();
      const ref = parseReference(`docker://${b.host}/tiu/os`) as DockerReference;
      await pushImage(openRegistryTarget(ref, { registriesConf: false }), img, 'v1');
      const c = conf(`short-name-mode = "permissive"\nunqualified-search-registries = ["${a.host}", "${b.host}"]\n`);
      const opened = await openReference('tiu/os:v1', { registry: { registriesConf: c } });
      assert.equal(opened.target.name, `docker://${b.host}/tiu/os`);
      assert.equal((await opened.target.resolve('v1')).digest, img.manifest.desc.digest);
      await opened.target.close?.();
      await assert.rejects(openReference('tiu/os:v9', { registry: { registriesConf: c } }), {
        code: 'CONTENT_NOT_FOUND',
      });
      await assert.rejects(openReference('tiu/os:v1', { forWrite: true, registry: { registriesConf: c } }), {
        code: 'SHORT_NAME_AMBIGUOUS',
      });
      // docker:// is never short: docker.io, as skopeo.
      const hub = await openReference('docker://tiu/os:v1', { registry: { registriesConf: c } });
      assert.equal(hub.target.name, 'docker://docker.io/tiu/os');
    } finally {
      await a.stop();
      await b.stop();
    }
  });
});
