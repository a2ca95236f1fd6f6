import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isTiuError } from '../../src/errors.ts';
import { OciArchiveTarget } from '../../src/content/oci-archive.ts';
import { OciLayoutTarget } from '../../src/content/oci-layout.ts';
import { openReference } from '../../src/transport/resolve.ts';
import { RegistryTarget } from '../../src/transport/registry/index.ts';

describe('openReference', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tiu-resolve-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('opens oci: layouts, creating them only for writing', async () => {
    await assert.rejects(openReference(`oci:${dir}/l:t`), (e: unknown) => isTiuError(e, 'CONTENT_NOT_FOUND'));
    const w = await openReference(`oci:${dir}/l:t`, { forWrite: true });
    assert.ok(w.target instanceof OciLayoutTarget);
    assert.equal(w.name, 't');
    assert.equal(w.target.name, `oci:${dir}/l`);
    const r = await openReference(`oci:${dir}/l`);
    assert.equal(r.name, undefined);
    const d = await openReference(`oci:${dir}/l:sha256:${'a'.repeat(64)}`);
    assert.equal(d.name, `sha256:${'a'.repeat(64)}`);
  });

  it('opens oci-archive: files', async () => {
    await assert.rejects(openReference(`oci-archive:${dir}/a.tar`), (e: unknown) => isTiuError(e, 'CONTENT_NOT_FOUND'));
    const w = await openReference(`oci-archive:${dir}/a.tar:v1`, { forWrite: true, tmpDir: dir });
    assert.ok(w.target instanceof OciArchiveTarget);
    assert.equal(w.name, 'v1');
    await w.target.close?.();
  });

  it('opens docker:// references (and bare names) as registry Targets', async () => {
    for (const input of ['docker://example.com/a:b', 'example.com/a:b']) {
      const r = await openReference(input, { registry: { registriesConf: false } });
      assert.ok(r.target instanceof RegistryTarget);
      assert.equal(r.target.name, 'docker://example.com/a');
      assert.equal(r.name, 'b');
    }
    const conf = `${dir}/registries.conf`;
    await writeFile(conf, '[[registry]]\nprefix = "example.com/a"\nblocked = true\n');
    await assert.rejects(
      openReference('docker://example.com/a:b', { registry: { registriesConf: conf } }),
      (e: unknown) => isTiuError(e, 'REGISTRY_BLOCKED'),
    );
  });
});
