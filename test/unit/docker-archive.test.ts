import assert from 'node:assert/strict';
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { MemoryTarget } from '../helpers/memory-target.ts';
import { DockerArchiveTarget } from '../../src/content/docker-archive.ts';
import { DockerArchiveWriter } from '../../src/content/docker-archive-writer.ts';
import type { Target } from '../../src/content/interfaces.ts';
import { Readable } from 'node:stream';
import { stat } from 'node:fs/promises';
import { copy } from '../../src/copy/copy.ts';
import { isTiuError } from '../../src/errors.ts';
import { sha256 } from '../../src/oci/digest.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';

type Entry = { name: string; data?: Buffer; link?: string };

async function writeTar(path: string, entries: Entry[]): Promise<void> {
  const pack = tar.pack();
  for (const e of entries) {
    if (e.link !== undefined) pack.entry({ name: e.name, type: 'symlink', linkname: e.link });
    else pack.entry({ name: e.name }, e.data!);
  }
  pack.finalize();
  await pipeline(pack, createWriteStream(path));
}

const LAYER = Buffer.alloc(2048, 1); // stands for an uncompressed layer tar
const config = (diffIds: string[]) =>
  Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: diffIds } }));
const manifest = (layers: string[], repoTags = ['localhost/x:v1']) =>
  Buffer.from(JSON.stringify([{ Config: 'c.json', RepoTags: repoTags, Layers: layers }]));

describe('docker-archive: (docker save), read', () => {
  let work: string;
  beforeEach(async () => {
    work = await mkdtemp(join(tmpdir(), 'tiu-docker-archive-'));
  });
  afterEach(async () => {
    await rm(work, { recursive: true, force: true });
  });

  it('makes a Docker manifest of uncompressed layers named by diff_id; follows legacy symlinks inside', async () => {
    const path = join(work, 'a.tar');
    await writeTar(path, [
      { name: 'manifest.json', data: manifest(['abc/layer.tar']) },
      { name: 'c.json', data: config([sha256(LAYER)]) },
      { name: 'blob.tar', data: LAYER },
      { name: 'abc/layer.tar', link: '../blob.tar' },
    ]);
    const t = await DockerArchiveTarget.open(path);
    try {
      const root = await t.resolve('localhost/x:v1');
      assert.deepEqual(await t.resolveDefault(), root);
      assert.equal(root.mediaType, MediaType.DockerManifest);
      const mem = new MemoryTarget('m');
      await copy(t, 'localhost/x:v1', mem, 'v1');
      assert.ok(await mem.exists({ mediaType: MediaType.DockerLayerTar, digest: sha256(LAYER), size: LAYER.length }));
      await assert.rejects(t.resolve('localhost/x:v2'), (e: unknown) => isTiuError(e, 'CONTENT_NOT_FOUND'));
    } finally {
      await t.close();
    }
  });

  const bad: [string, Entry[]][] = [
    ['a symlink that leaves the archive', [{ name: 'l.tar', link: '../../etc/passwd' }]],
    ['a compressed layer', [{ name: 'l.tar', data: gzipSync(LAYER) }]],
  ];
  for (const [what, layerEntries] of bad) {
    it(`refuses ${what}`, async () => {
      const path = join(work, 'bad.tar');
      await writeTar(path, [
        { name: 'manifest.json', data: manifest(['l.tar']) },
        { name: 'c.json', data: config([sha256(LAYER)]) },
        ...layerEntries,
      ]);
      const t = await DockerArchiveTarget.open(path);
      try {
        await assert.rejects(t.resolveDefault(), (e: unknown) => isTiuError(e, 'DOCKER_ARCHIVE_INVALID'));
      } finally {
        await t.close();
      }
    });
  }

  it('refuses layers and diff_ids that disagree, and an archive without manifest.json', async () => {
    const path = join(work, 'b.tar');
    await writeTar(path, [
      { name: 'manifest.json', data: manifest(['l.tar']) },
      { name: 'c.json', data: config([sha256(LAYER), sha256('x')]) },
      { name: 'l.tar', data: LAYER },
    ]);
    const t = await DockerArchiveTarget.open(path);
    await assert.rejects(t.resolveDefault(), (e: unknown) => isTiuError(e, 'DOCKER_ARCHIVE_INVALID'));
    await t.close();
    const none = join(work, 'c.tar');
    await writeTar(none, [{ name: 'l.tar', data: LAYER }]);
    await assert.rejects(DockerArchiveTarget.open(none), (e: unknown) => isTiuError(e, 'DOCKER_ARCHIVE_INVALID'));
    await writeFile(none, 'not a tar at all, but long enough to not be an empty archive'.repeat(20));
    await assert.rejects(DockerArchiveTarget.open(none), (e: unknown) => isTiuError(e, 'DOCKER_ARCHIVE_INVALID'));
  });

  describe('written', () => {
    async function put(t: Target, data: Buffer, mediaType: string) {
      const d = { mediaType, digest: sha256(data), size: data.length };
      await t.push(d, Readable.from([data]));
      return d;
    }
    async function ociImage(t: Target, diffIds: string[]) {
      const layer = await put(t, gzipSync(LAYER), MediaType.OciLayerGzip);
      const cfg = await put(t, config(diffIds), MediaType.OciConfig);
      const m = { schemaVersion: 2, mediaType: MediaType.OciManifest, config: cfg, layers: [layer] };
      return put(t, Buffer.from(JSON.stringify(m)), MediaType.OciManifest);
    }

    it('writes layers uncompressed by diff_id, which the reader takes back', async () => {
      const src = new MemoryTarget('src');
      const root = await ociImage(src, [sha256(LAYER)]);
      const path = join(work, 'out.tar');
      const w = await DockerArchiveWriter.open(path, { repoTag: 'localhost/x:v1' });
      await copy(src, root.digest, w, 'ignored');
      await w.close();
      const r = await DockerArchiveTarget.open(path);
      try {
        const mem = new MemoryTarget('m');
        await copy(r, 'localhost/x:v1', mem, 'v1');
        assert.ok(await mem.exists({ mediaType: MediaType.DockerLayerTar, digest: sha256(LAYER), size: LAYER.length }));
      } finally {
        await r.close();
      }
    });

    it('refuses layers that do not decompress to the diff_ids of the config, writing nothing', async () => {
      const src = new MemoryTarget('src');
      const root = await ociImage(src, [sha256('something else')]);
      const path = join(work, 'bad-out.tar');
      const w = await DockerArchiveWriter.open(path);
      await copy(src, root.digest, w, undefined);
      await assert.rejects(w.close(), (e: unknown) => isTiuError(e, 'DOCKER_ARCHIVE_INVALID'));
      await assert.rejects(stat(path), /ENOENT/);
    });
  });
});
