import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { OciArchiveTarget } from '../../src/content/oci-archive.ts';
import { isTiuError, type ErrorCode } from '../../src/errors.ts';
import { sha256 } from '../../src/oci/digest.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import type { Target } from '../../src/content/interfaces.ts';
import { runTargetContract } from '../helpers/target-contract.ts';

const code = (c: ErrorCode) => (e: unknown) => isTiuError(e, c);

runTargetContract('oci archive', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'tiu-archive-test-'));
  const target = await OciArchiveTarget.open(join(dir, 'a.tar'), { create: true, tmpDir: dir });
  return {
    target,
    cleanup: async () => {
      await target.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
});

async function put(t: Target, data: Buffer, mediaType: string) {
  const d = { mediaType, digest: sha256(data), size: data.length };
  await t.push(d, Readable.from([data]));
  return d;
}

async function tarOf(
  entries: { name: string; type?: 'file' | 'symlink' | 'directory'; data?: string; linkname?: string }[],
): Promise<Buffer> {
  const pack = tar.pack();
  for (const e of entries) {
    if (e.type === 'symlink') pack.entry({ name: e.name, type: 'symlink', linkname: e.linkname ?? '/etc/passwd' });
    else if (e.type === 'directory') pack.entry({ name: e.name, type: 'directory' });
    else pack.entry({ name: e.name }, e.data ?? '');
  }
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

describe('oci archive', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tiu-archive-test-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('writes on close and reads back what it wrote', async () => {
    const path = join(dir, 'img.tar');
    const w = await OciArchiveTarget.open(path, { create: true, tmpDir: dir });
    const layer = await put(w, randomBytes(2000), MediaType.OciLayerGzip);
    const config = await put(
      w,
      Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } })),
      MediaType.OciConfig,
    );
    const m = await put(
      w,
      Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciManifest, config, layers: [layer] })),
      MediaType.OciManifest,
    );
    await w.tag(m, 'v1');
    await assert.rejects(OciArchiveTarget.open(path), code('CONTENT_NOT_FOUND'));
    await w.close();
    // the temporary layout is gone; only the archive remains
    assert.deepEqual(await readdir(dir), ['img.tar']);
    const names: string[] = [];
    const ex = tar.extract();
    const { createReadStream } = await import('node:fs');
    createReadStream(path).pipe(ex);
    for await (const e of ex) {
      names.push(e.header.name);
      e.resume();
    }
    assert.deepEqual(names.slice(0, 4), ['oci-layout', 'index.json', 'blobs', 'blobs/sha256']);
    assert.equal(names.length, 7);

    const r = await OciArchiveTarget.open(path, { tmpDir: dir });
    assert.equal((await r.resolve('v1')).digest, m.digest);
    assert.equal((await r.resolveDefault()).digest, m.digest);
    assert.ok(await r.exists(layer));
    await r.close();
    assert.deepEqual(await readdir(dir), ['img.tar']);
  });

  it('refuses hostile and broken archives', async () => {
    const layoutFiles = [
      { name: 'oci-layout', data: '{"imageLayoutVersion":"1.0.0"}' },
      { name: 'index.json', data: '{"schemaVersion":2,"manifests":[]}' },
    ];
    const cases: [string, Buffer][] = [
      ['dotdot', await tarOf([...layoutFiles, { name: '../evil', data: 'x' }])],
      ['dotdot-in-blobs', await tarOf([...layoutFiles, { name: 'blobs/../../evil', data: 'x' }])],
      ['absolute', await tarOf([...layoutFiles, { name: '/etc/evil', data: 'x' }])],
      [
        'symlink blob',
        await tarOf([...layoutFiles, { name: `blobs/sha256/${sha256('x').slice(7)}`, type: 'symlink' }]),
      ],
      ['duplicate', await tarOf([...layoutFiles, { name: 'index.json', data: '{}' }])],
      ['no layout', await tarOf([{ name: 'hello', data: 'x' }])],
      ['not a tar', Buffer.from('this is not a tar archive at all'.repeat(40))],
    ];
    for (const [what, bytes] of cases) {
      const p = join(dir, `${what}.tar`);
      await writeFile(p, bytes);
      await assert.rejects(OciArchiveTarget.open(p, { tmpDir: dir }), code('ARCHIVE_INVALID'), what);
    }
    // nothing extracted is left behind
    assert.ok((await readdir(dir)).every((n) => n.endsWith('.tar')));
  });
});
