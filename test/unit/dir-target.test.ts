import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { text } from 'node:stream/consumers';
import { MemoryTarget } from '../helpers/memory-target.ts';
import type { Target } from '../../src/content/interfaces.ts';
import { DirTarget } from '../../src/content/dir.ts';
import { copy } from '../../src/copy/copy.ts';
import { isTiuError } from '../../src/errors.ts';
import { sha256 } from '../../src/oci/digest.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import type { Descriptor } from '../../src/oci/types.ts';

async function put(t: Target, data: Buffer, mediaType: string): Promise<Descriptor> {
  const d = { mediaType, digest: sha256(data), size: data.length };
  await t.push(d, Readable.from([data]));
  return d;
}
async function image(t: Target, mediaType: string = MediaType.OciManifest): Promise<Descriptor> {
  const layer = await put(t, randomBytes(5000), MediaType.OciLayerGzip);
  const cfg = { architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [sha256('x')] } };
  const config = await put(t, Buffer.from(JSON.stringify(cfg)), MediaType.OciConfig);
  return put(t, Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType, config, layers: [layer] })), mediaType);
}

describe('dir: (containers directory transport)', () => {
  let work: string;
  beforeEach(async () => {
    work = await mkdtemp(join(tmpdir(), 'tiu-dir-'));
  });
  afterEach(async () => {
    await rm(work, { recursive: true, force: true });
  });

  it('writes one image flat: version, manifest.json, blobs by hex; and reads it back', async () => {
    const src = new MemoryTarget('src');
    const root = await image(src);
    const path = join(work, 'img');
    const dst = await DirTarget.open(path, { create: true });
    await copy(src, root.digest, dst, undefined);
    await dst.close();
    const names = (await readdir(path)).sort();
    const manifest = JSON.parse(await readFile(join(path, 'manifest.json'), 'utf8')) as {
      config: Descriptor;
      layers: Descriptor[];
    };
    assert.deepEqual(
      names,
      ['manifest.json', 'version', manifest.config.digest.slice(7), manifest.layers[0]!.digest.slice(7)].sort(),
    );
    assert.equal(await readFile(join(path, 'version'), 'utf8'), 'Directory Transport Version: 1.1\n');
    assert.equal(sha256(await readFile(join(path, 'manifest.json'))), root.digest);

    const back = await DirTarget.open(path);
    assert.deepEqual(await back.resolveDefault(), root);
    const again = new MemoryTarget('again');
    assert.deepEqual(await copy(back, undefined, again, 'v1'), root);
    assert.equal(await text(await again.fetch(manifest.layers[0]!)), await text(await src.fetch(manifest.layers[0]!)));
  });

  it("keeps a list's manifests as <hex>.manifest.json and the list as manifest.json", async () => {
    const src = new MemoryTarget('src');
    const a = await image(src);
    const b = await image(src);
    const list = { schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [a, b] };
    const root = await put(src, Buffer.from(JSON.stringify(list)), MediaType.OciIndex);
    const path = join(work, 'list');
    const dst = await DirTarget.open(path, { create: true });
    await copy(src, root.digest, dst, undefined);
    await dst.close();
    const names = await readdir(path);
    assert.ok(names.includes(`${a.digest.slice(7)}.manifest.json`));
    assert.ok(names.includes(`${b.digest.slice(7)}.manifest.json`));
    assert.equal(sha256(await readFile(join(path, 'manifest.json'))), root.digest);
    const back = await DirTarget.open(path);
    const mem = new MemoryTarget('m');
    assert.deepEqual(await copy(back, undefined, mem, 'x'), root);
  });

  it('replaces an existing dir: image only on close, and leaves it when the copy fails', async () => {
    const src = new MemoryTarget('src');
    const first = await image(src);
    const path = join(work, 'img');
    const d1 = await DirTarget.open(path, { create: true });
    await copy(src, first.digest, d1, undefined);
    await d1.close();
    const d2 = await DirTarget.open(path, { create: true });
    await d2.discard();
    assert.equal(sha256(await readFile(join(path, 'manifest.json'))), first.digest, 'a discarded copy changes nothing');
    const second = await image(src);
    const d3 = await DirTarget.open(path, { create: true });
    await copy(src, second.digest, d3, undefined);
    await d3.close();
    assert.equal(sha256(await readFile(join(path, 'manifest.json'))), second.digest);
    assert.deepEqual(
      (await readdir(work)).filter((n) => n !== 'img'),
      [],
      'no temporary directories left',
    );
  });

  it('refuses to replace a directory that is not a dir: image', async () => {
    const path = join(work, 'home');
    await mkdir(path);
    await writeFile(join(path, 'precious'), 'x');
    await assert.rejects(DirTarget.open(path, { create: true }), (e: unknown) => isTiuError(e, 'DIR_INVALID'));
    assert.equal(await readFile(join(path, 'precious'), 'utf8'), 'x');
  });

  it('refuses symlinks and unknown versions in a source', async () => {
    const src = new MemoryTarget('src');
    const root = await image(src);
    const path = join(work, 'img');
    const d = await DirTarget.open(path, { create: true });
    await copy(src, root.digest, d, undefined);
    await d.close();
    const m = JSON.parse(await readFile(join(path, 'manifest.json'), 'utf8')) as { layers: Descriptor[] };
    const layerFile = join(path, m.layers[0]!.digest.slice(7));
    await rm(layerFile);
    await writeFile(join(work, 'outside'), 'secret');
    await symlink(join(work, 'outside'), layerFile);
    const back = await DirTarget.open(path);
    await assert.rejects(copy(back, undefined, new MemoryTarget('m'), 'x'), (e: unknown) => {
      return isTiuError(e) && (e.code === 'DIR_INVALID' || e.causeCode === 'DIR_INVALID');
    });
    await writeFile(join(path, 'version'), 'Directory Transport Version: 9\n');
    await assert.rejects(DirTarget.open(path), (e: unknown) => isTiuError(e, 'DIR_INVALID'));
    await rm(join(path, 'manifest.json'));
    await rm(join(path, 'version'));
    await assert.rejects(DirTarget.open(path), (e: unknown) => isTiuError(e, 'CONTENT_NOT_FOUND'));
  });
});
