import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { OciLayoutTarget } from '../../src/content/oci-layout.ts';
import { withLock } from '../../src/content/lock.ts';
import { acquireFileLock } from '../../src/host/file-lock.ts';
import { isTiuError, type ErrorCode } from '../../src/errors.ts';
import { sha256 } from '../../src/oci/digest.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import type { Descriptor } from '../../src/oci/types.ts';
import { runTargetContract } from '../helpers/target-contract.ts';

const code = (c: ErrorCode) => (e: unknown) => isTiuError(e, c);

runTargetContract('oci layout', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'tiu-layout-'));
  const target = await OciLayoutTarget.open(join(dir, 'layout'), { create: true });
  return { target, cleanup: () => rm(dir, { recursive: true, force: true }) };
});

async function push(t: OciLayoutTarget, data: Buffer, mediaType: string): Promise<Descriptor> {
  const d = { mediaType, digest: sha256(data), size: data.length };
  await t.push(d, Readable.from([data]));
  return d;
}
async function image(t: OciLayoutTarget, extra: Record<string, unknown> = {}): Promise<Descriptor> {
  const layer = await push(t, randomBytes(100), MediaType.OciLayerGzip);
  const config = await push(
    t,
    Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } })),
    MediaType.OciConfig,
  );
  return push(
    t,
    Buffer.from(
      JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciManifest, config, layers: [layer], ...extra }),
    ),
    MediaType.OciManifest,
  );
}

describe('oci layout', function () {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tiu-layout-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('writes the files of the image-spec layout', async () => {
    const path = join(dir, 'l');
    const t = await OciLayoutTarget.open(path, { create: true });
    const m = await image(t);
    await t.tag(m, 'v1');
    assert.deepEqual(JSON.parse(await readFile(join(path, 'oci-layout'), 'utf8')), { imageLayoutVersion: '1.0.0' });
    const idx = JSON.parse(await readFile(join(path, 'index.json'), 'utf8'));
    assert.equal(idx.schemaVersion, 2);
    assert.deepEqual(idx.manifests, [{ ...m, annotations: { 'org.opencontainers.image.ref.name': 'v1' } }]);
    const blobs = await readdir(join(path, 'blobs', 'sha256'));
    assert.equal(blobs.length, 3);
    assert.ok(blobs.includes(m.digest.slice(7)));
    // a failed push leaves no temp file behind
    const bad = { mediaType: MediaType.OciLayerGzip, digest: sha256('a'), size: 1 };
    await assert.rejects(t.push(bad, Readable.from([Buffer.from('b')])), code('DIGEST_MISMATCH'));
    assert.equal((await readdir(join(path, 'blobs', 'sha256'))).length, 3);
    assert.deepEqual((await readdir(path)).sort(), ['blobs', 'index.json', 'oci-layout']);
  });

  it('pushFile moves a finished file in as a blob, checks its size and leaves nothing on a mismatch', async () => {
    const t = await OciLayoutTarget.open(join(dir, 'layout'), { create: true });
    const data = randomBytes(5000);
    const file = join(dir, 'layer-0');
    await writeFile(file, data);
    const d = { mediaType: MediaType.OciLayerZstd, digest: sha256(data), size: data.length };
    await t.pushFile(d, file);
    assert.ok((await readFile(t.blobPath(d.digest))).equals(data));
    assert.equal(await t.exists(d), true);
    assert.deepEqual(await readdir(dir), ['layout'], 'the file was moved, not copied');

    const other = randomBytes(10);
    await writeFile(file, other);
    const wrong = { mediaType: MediaType.OciLayerZstd, digest: sha256(other), size: 11 };
    await assert.rejects(t.pushFile(wrong, file), code('SIZE_MISMATCH'));
    assert.equal(await t.exists({ ...wrong, size: 10 }), false);
    const blobs = await readdir(join(dir, 'layout', 'blobs', 'sha256'));
    assert.deepEqual(blobs, [d.digest.slice('sha256:'.length)], 'no temp file or blob left behind');
  });

  it('refuses what is not a layout', async () => {
    await assert.rejects(OciLayoutTarget.open(join(dir, 'none')), code('CONTENT_NOT_FOUND'));
    await writeFile(join(dir, 'oci-layout'), '{"imageLayoutVersion":"9.0.0"}');
    await assert.rejects(OciLayoutTarget.open(dir), code('LAYOUT_INVALID'));
    await writeFile(join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
    await writeFile(join(dir, 'index.json'), '{"schemaVersion":2,"manifests":[{"digest":"sha256:zz"}]}');
    const t = await OciLayoutTarget.open(dir);
    await assert.rejects(t.resolve('latest'), code('LAYOUT_INVALID'));
  });

  it('rejects an invalid manifest before it becomes visible', async () => {
    const t = await OciLayoutTarget.open(join(dir, 'l'), { create: true });
    const junk = Buffer.from('{"schemaVersion":2,"config":{},"layers":[]}');
    const d = { mediaType: MediaType.OciManifest, digest: sha256(junk), size: junk.length };
    await assert.rejects(t.push(d, Readable.from([junk])), code('MANIFEST_INVALID'));
    assert.equal(await t.exists(d), false);
  });

  it('resolves the only image when no reference is given; referrers do not count', async () => {
    const t = await OciLayoutTarget.open(join(dir, 'l'), { create: true });
    await assert.rejects(t.resolveDefault(), code('CONTENT_NOT_FOUND'));
    const a = await image(t);
    await t.tag(a, 'a');
    await image(t, { subject: a, artifactType: 'application/vnd.example.sig' });
    assert.equal((await t.resolveDefault()).digest, a.digest);
    // nor do cosign tag-scheme signatures, nor a second tag on the same image
    await t.tag(await image(t), `sha256-${a.digest.slice(7)}.sig`);
    await t.tag(a, 'a2');
    assert.equal((await t.resolveDefault()).digest, a.digest);
    const b = await image(t);
    await t.tag(b, 'b');
    await assert.rejects(t.resolveDefault(), code('REFERENCE_AMBIGUOUS'));
    // an untagged child resolves by digest from its blob
    const c = await image(t);
    assert.deepEqual(await t.resolve(c.digest), c);
    await assert.rejects(t.tag(c, 'bad tag'), code('TAG_INVALID'));
  });

  it('removes an image with its signatures and referrers, and frees only the blobs nothing else uses', async () => {
    const t = await OciLayoutTarget.open(join(dir, 'l'), { create: true });
    const shared = await push(t, randomBytes(64), MediaType.OciLayerGzip);
    const a = await image(t, { layers: [shared, await push(t, randomBytes(300), MediaType.OciLayerGzip)] });
    const b = await image(t, { layers: [shared] });
    await t.tag(a, 'a');
    await t.tag(b, 'b');
    const sig = await image(t);
    await t.tag(sig, `sha256-${a.digest.slice(7)}.sig`);
    await image(t, { subject: a, artifactType: 'application/vnd.example.sig' });
    await image(t, { subject: b, artifactType: 'application/vnd.example.sig' });
    // A blob being written right now (its temp file) is not touched.
    await writeFile(join(dir, 'l/blobs/sha256/.tiu-0123.tmp'), 'partial');
    const blobsBefore = await readdir(join(dir, 'l/blobs/sha256'));

    const freed = await t.removeImage(a.digest);
    // a's manifest and private layer, the .sig image's manifest and layer, a's referrer's
    // manifest and layer (the config is one blob shared by every image here), and the two
    // layers image() pushed for a and b before `layers` replaced them (never reachable).
    assert.equal(freed.blobs, 8);
    assert.ok(freed.bytes > 300);
    assert.deepEqual(await t.tags(), ['b']);
    assert.equal(await t.exists(a), false);
    assert.equal(await t.exists(shared), true);
    assert.equal((await t.referrers(b)).length, 1);
    assert.deepEqual(await t.resolve('b'), b);
    const blobsAfter = await readdir(join(dir, 'l/blobs/sha256'));
    assert.equal(blobsAfter.length, blobsBefore.length - 8);
    assert.ok(blobsAfter.includes('.tiu-0123.tmp'));
    // Everything b needs is still there, byte for byte.
    for (const d of [b, shared]) assert.equal(await t.exists(d), true);
    // Removing what is not there frees nothing more.
    assert.deepEqual(await t.removeImage(a.digest), { blobs: 0, bytes: 0 });
  });

  it('two writer processes on one layout lose nothing', async function () {
    this.timeout(60000);
    const path = join(dir, 'shared');
    const script = fileURLToPath(new URL('../helpers/layout-writer.ts', import.meta.url));
    const run = (prefix: string) =>
      new Promise<void>((resolve, reject) => {
        const child = spawn(process.execPath, ['--disable-warning=ExperimentalWarning', script, path, prefix, '25'], {
          stdio: ['ignore', 'ignore', 'pipe'],
        });
        let err = '';
        child.stderr.on('data', (d: Buffer) => (err += d.toString()));
        child.on('exit', (rc) => (rc === 0 ? resolve() : reject(new Error(`writer ${prefix} exited ${rc}: ${err}`))));
      });
    await Promise.all([run('a'), run('b')]);
    const t = await OciLayoutTarget.open(path);
    const tags = await t.tags();
    assert.equal(tags.length, 50, `tags: ${tags.join(' ')}`);
    for (let i = 0; i < 25; i++) assert.ok(tags.includes(`a-${i}`) && tags.includes(`b-${i}`));
    for (const tag of tags) assert.ok(await t.exists(await t.resolve(tag)));
    assert.deepEqual((await readdir(path)).sort(), ['blobs', 'index.json', 'oci-layout']);
  });

  it('a writer that died holding the lock does not block the next one', async () => {
    const t = await OciLayoutTarget.open(join(dir, 'l'), { create: true });
    const script = fileURLToPath(new URL('../helpers/lock-user.ts', import.meta.url));
    const holder = spawn(
      process.execPath,
      ['--disable-warning=ExperimentalWarning', script, join(dir, 'l', '.tiu.lock'), 'hold'],
      {
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    await new Promise<void>((resolve) =>
      holder.stdout.on('data', (d: Buffer) => d.toString().includes('locked') && resolve()),
    );
    holder.kill('SIGKILL');
    await new Promise((r) => holder.once('exit', r));
    const m = await image(t);
    await t.tag(m, 'after-crash');
    assert.equal((await t.resolve('after-crash')).digest, m.digest);
  });

  it('waits for a live lock holder, then gives up with LOCK_TIMEOUT', async () => {
    const lock = join(dir, 'x.lock');
    const holder = await acquireFileLock(lock, 0);
    assert.ok(!('busy' in holder));
    const started = Date.now();
    await assert.rejects(
      withLock(lock, () => Promise.resolve(1), 300),
      (e: unknown) => isTiuError(e, 'LOCK_TIMEOUT') && e.details.owner === `pid ${process.pid}`,
    );
    assert.ok(Date.now() - started >= 250);
    await holder.release();
    assert.equal(await withLock(lock, () => Promise.resolve(2), 300), 2);
    await assert.rejects(readFile(lock), /ENOENT/);
  });
});
