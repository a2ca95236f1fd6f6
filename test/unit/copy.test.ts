import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryTarget } from '../helpers/memory-target.ts';
import { OciLayoutTarget } from '../../src/content/oci-layout.ts';
import type { Target } from '../../src/content/interfaces.ts';
import { CopyError, copy, cosignTags, type CopyEvent } from '../../src/copy/copy.ts';
import { isTiuError } from '../../src/errors.ts';
import { sha256 } from '../../src/oci/digest.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import type { Descriptor } from '../../src/oci/types.ts';

async function put(t: Target, data: Buffer, mediaType: string): Promise<Descriptor> {
  const d = { mediaType, digest: sha256(data), size: data.length };
  await t.push(d, Readable.from([data]));
  return d;
}
async function image(t: Target, opts: { layers?: Descriptor[]; subject?: Descriptor; artifactType?: string } = {}) {
  const layers = opts.layers ?? [
    await put(t, randomBytes(4000), MediaType.OciLayerGzip),
    await put(t, randomBytes(3000), MediaType.OciLayerGzip),
  ];
  const config = await put(
    t,
    Buffer.from(
      JSON.stringify({
        architecture: 'amd64',
        os: 'linux',
        author: randomBytes(4).toString('hex'),
        rootfs: { type: 'layers', diff_ids: [] },
      }),
    ),
    MediaType.OciConfig,
  );
  const doc: Record<string, unknown> = { schemaVersion: 2, mediaType: MediaType.OciManifest, config, layers };
  if (opts.subject) doc.subject = opts.subject;
  if (opts.artifactType) doc.artifactType = opts.artifactType;
  const manifest = await put(t, Buffer.from(JSON.stringify(doc)), MediaType.OciManifest);
  return { manifest, config, layers };
}

/** A Target that forwards to another, with hooks to misbehave. */
function wrap(inner: MemoryTarget, hooks: Partial<Pick<Target, 'fetch' | 'push'>>): Target {
  return {
    name: 'wrapped',
    fetch: hooks.fetch ?? ((d, o) => inner.fetch(d, o)),
    push: hooks.push ?? ((d, c, o) => inner.push(d, c, o)),
    exists: (d, o) => inner.exists(d, o),
    resolve: (r, o) => inner.resolve(r, o),
    tag: (d, r, o) => inner.tag(d, r, o),
    referrers: (d, a, o) => inner.referrers(d, a, o),
  };
}

describe('copy', () => {
  it('copies an image, keeps its digest, tags it last', async () => {
    const src = new MemoryTarget('src');
    const dst = new MemoryTarget('dst');
    const img = await image(src);
    await src.tag(img.manifest, 't');
    const events: CopyEvent[] = [];
    const root = await copy(src, 't', dst, 'u', { onProgress: (e) => events.push(e) });
    assert.equal(root.digest, img.manifest.digest);
    assert.equal((await dst.resolve('u')).digest, img.manifest.digest);
    for (const d of [img.manifest, img.config, ...img.layers]) assert.ok(await dst.exists(d));
    // children before parents: the manifest is the last blob done
    const done = events.filter((e) => e.type === 'blob-done').map((e) => e.desc.digest);
    assert.equal(done.length, 4);
    assert.equal(done[done.length - 1], img.manifest.digest);
    const bytes = events.filter(
      (e): e is Extract<CopyEvent, { type: 'blob-bytes' }> =>
        e.type === 'blob-bytes' && e.desc.digest === img.layers[0]!.digest,
    );
    assert.equal(bytes[bytes.length - 1]!.bytes, 4000);
    // the source tag is reused when no destination tag is given
    await copy(src, 't', dst, undefined);
    assert.equal((await dst.resolve('t')).digest, img.manifest.digest);
  });

  it('skips what the destination has', async () => {
    const src = new MemoryTarget();
    const dst = new MemoryTarget();
    const a = await image(src);
    await copy(src, a.manifest.digest, dst, 'a');
    // b shares a's layers: only its config and manifest move
    const b = await image(src, { layers: a.layers });
    const events: CopyEvent[] = [];
    await copy(src, b.manifest.digest, dst, 'b', { onProgress: (e) => events.push(e) });
    const started = events
      .filter((e) => e.type === 'blob-start')
      .map((e) => e.desc.digest)
      .sort();
    assert.deepEqual(started, [b.config.digest, b.manifest.digest].sort());
    const skipped = events
      .filter((e) => e.type === 'blob-skipped')
      .map((e) => e.desc.digest)
      .sort();
    assert.deepEqual(skipped, a.layers.map((l) => l.digest).sort());
    // again: everything is there, nothing moves
    events.length = 0;
    await copy(src, b.manifest.digest, dst, 'b', { onProgress: (e) => events.push(e) });
    assert.deepEqual(
      events.map((e) => e.type),
      ['blob-skipped', 'blob-skipped', 'blob-skipped', 'blob-skipped'],
    );
  });

  it('completes a destination that has a manifest but not all its blobs', async () => {
    const src = new MemoryTarget();
    const img = await image(src);
    const dst = new MemoryTarget();
    await dst.push(img.manifest, await src.fetch(img.manifest));
    await dst.push(img.config, await src.fetch(img.config));
    await copy(src, img.manifest.digest, dst, 't');
    for (const l of img.layers) assert.ok(await dst.exists(l));
    assert.equal((await dst.resolve('t')).digest, img.manifest.digest);
  });

  it('copies an index once per shared blob, with bounded concurrency', async () => {
    const src = new MemoryTarget();
    const inner = new MemoryTarget();
    const shared = await put(src, randomBytes(500), MediaType.OciLayerGzip);
    const imgs = [];
    for (let i = 0; i < 3; i++)
      imgs.push(
        await image(src, {
          layers: [
            shared,
            await put(src, randomBytes(800), MediaType.OciLayerGzip),
            await put(src, randomBytes(900), MediaType.OciLayerGzip),
          ],
        }),
      );
    const idx = await put(
      src,
      Buffer.from(
        JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: imgs.map((i) => i.manifest) }),
      ),
      MediaType.OciIndex,
    );
    let now = 0;
    let max = 0;
    const pushes = new Map<string, number>();
    const dst = wrap(inner, {
      async push(d, c, o) {
        pushes.set(d.digest, (pushes.get(d.digest) ?? 0) + 1);
        now++;
        max = Math.max(max, now);
        await new Promise((r) => setTimeout(r, 5));
        try {
          await inner.push(d, c, o);
        } finally {
          now--;
        }
      },
    });
    await copy(src, idx.digest, dst, 'multi', { concurrency: 2 });
    assert.ok(max <= 2, `max concurrent pushes ${max}`);
    assert.ok(max >= 2, 'transfers ran in parallel');
    assert.equal(pushes.get(shared.digest), 1);
    assert.ok([...pushes.values()].every((n) => n === 1));
    assert.equal((await inner.resolve('multi')).mediaType, MediaType.OciIndex);
    assert.equal(pushes.size, 1 + 3 * 2 + 3 + 3 + 1); // shared + 6 own layers + 3 configs + 3 manifests + index
  });

  it('fails on an altered source blob, names it, and leaves no tag', async () => {
    const inner = new MemoryTarget('inner');
    const img = await image(inner);
    await inner.tag(img.manifest, 't');
    const bad = img.layers[1]!;
    const src = wrap(inner, {
      async fetch(d, o) {
        if (d.digest !== bad.digest) return inner.fetch(d, o);
        const data = Buffer.concat(await (await inner.fetch(d)).toArray());
        data[10] = data[10]! ^ 1;
        return Readable.from([data]);
      },
    });
    const dst = new MemoryTarget('dst');
    await assert.rejects(copy(src, 't', dst, 't'), (e: unknown) => {
      assert.ok(e instanceof CopyError);
      assert.equal(e.code, 'DIGEST_MISMATCH');
      assert.equal(e.origin, 'source');
      assert.equal(e.op, 'fetch');
      assert.equal(e.details.causeCode, 'DIGEST_MISMATCH');
      assert.equal(e.details.digest, bad.digest);
      assert.match(e.message, new RegExp(bad.digest.replace(':', '.')));
      return true;
    });
    await assert.rejects(dst.resolve('t'), (e: unknown) => isTiuError(e, 'CONTENT_NOT_FOUND'));
    assert.equal(await dst.exists(img.manifest), false);
    assert.equal(await dst.exists(bad), false);
  });

  it('says when the destination failed', async () => {
    const src = new MemoryTarget();
    const img = await image(src);
    const inner = new MemoryTarget();
    const dst = wrap(inner, {
      push(d, c, o) {
        if (d.digest === img.config.digest) {
          c.destroy();
          return Promise.reject(Object.assign(new Error('disk full'), { code: 'ENOSPC' }));
        }
        return inner.push(d, c, o);
      },
    });
    await assert.rejects(copy(src, img.manifest.digest, dst, 'x'), (e: unknown) => {
      assert.ok(e instanceof CopyError);
      assert.equal(e.origin, 'destination');
      assert.equal(e.op, 'push');
      // Node's ENOSPC is a full disk where it is caught; the errno stays visible as the cause
      assert.equal(e.code, 'DISK_FULL');
      assert.equal(e.transient, true);
      assert.equal(e.details.causeCode, 'ENOSPC');
      assert.equal(e.causeCode, 'ENOSPC');
      return true;
    });
    assert.equal(await inner.exists(img.manifest), false);
  });

  it('a missing source reference is a source-side resolve failure', async () => {
    await assert.rejects(copy(new MemoryTarget(), 'nope', new MemoryTarget(), 'x'), (e: unknown) => {
      assert.ok(e instanceof CopyError);
      assert.equal(e.op, 'resolve');
      assert.equal(e.origin, 'source');
      assert.equal(e.code, 'COPY_FAILED');
      assert.equal(e.details.causeCode, 'CONTENT_NOT_FOUND');
      assert.equal(e.causeCode, 'CONTENT_NOT_FOUND');
      return true;
    });
  });

  it('calls verify with the root before writing anything', async () => {
    const src = new MemoryTarget();
    const img = await image(src);
    await src.tag(img.manifest, 't');
    const dst = new MemoryTarget();
    let seen: Descriptor | undefined;
    const refuse = async (s: Target, root: Descriptor) => {
      seen = root;
      assert.equal(s, src);
      assert.equal(dst.size, 0);
      throw new (await import('../../src/errors.ts')).TiuError('POLICY_REJECTED', 'no signature');
    };
    await assert.rejects(copy(src, 't', dst, 't', { verify: refuse }), (e: unknown) =>
      isTiuError(e, 'POLICY_REJECTED'),
    );
    assert.equal(seen?.digest, img.manifest.digest);
    assert.equal(dst.size, 0);
    await copy(src, 't', dst, 't', { verify: () => Promise.resolve() });
    assert.equal(dst.size, 4);
    assert.equal((await dst.resolve('t')).digest, img.manifest.digest);
  });

  it('copies referrers recursively and cosign tag-scheme signatures when asked', async () => {
    const src = new MemoryTarget();
    const img = await image(src);
    await src.tag(img.manifest, 't');
    const sig = await image(src, {
      subject: img.manifest,
      artifactType: 'application/vnd.example.sig',
      layers: [await put(src, randomBytes(50), MediaType.OciLayerGzip)],
    });
    const sigsig = await image(src, {
      subject: sig.manifest,
      artifactType: 'application/vnd.example.sig',
      layers: [await put(src, randomBytes(60), MediaType.OciLayerGzip)],
    });
    const cosign = await image(src, {
      layers: [await put(src, Buffer.from('{"critical":{}}'), MediaType.CosignSimpleSigning)],
    });
    const sigTag = cosignTags(img.manifest.digest)[0]!;
    assert.match(sigTag, /^sha256-[0-9a-f]{64}\.sig$/);
    await src.tag(cosign.manifest, sigTag);

    const plain = new MemoryTarget();
    await copy(src, 't', plain, 't');
    assert.equal(await plain.exists(sig.manifest), false);
    await assert.rejects(plain.resolve(sigTag), (e: unknown) => isTiuError(e, 'CONTENT_NOT_FOUND'));

    const dst = new MemoryTarget();
    await copy(src, 't', dst, 't', { referrers: true });
    assert.deepEqual(
      (await dst.referrers(img.manifest)).map((d) => d.digest),
      [sig.manifest.digest],
    );
    assert.deepEqual(
      (await dst.referrers(sig.manifest)).map((d) => d.digest),
      [sigsig.manifest.digest],
    );
    assert.equal((await dst.resolve(sigTag)).digest, cosign.manifest.digest);
    assert.equal((await dst.resolve('t')).digest, img.manifest.digest);
  });

  describe('into an OCI layout', () => {
    let dir: string;
    beforeEach(async () => {
      dir = await mkdtemp(join(tmpdir(), 'tiu-copy-'));
    });
    afterEach(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    it('a source cut off mid-blob leaves neither partial files nor a tag', async () => {
      const inner = new MemoryTarget('inner');
      const img = await image(inner);
      const big = img.layers[0]!;
      const src = wrap(inner, {
        async fetch(d, o) {
          if (d.digest !== big.digest) return inner.fetch(d, o);
          const data = Buffer.concat(await (await inner.fetch(d)).toArray());
          return Readable.from(
            (async function* () {
              yield data.subarray(0, 1000);
              await new Promise((r) => setTimeout(r, 5));
              throw Object.assign(new Error('connection reset'), { code: 'ECONNRESET' });
            })(),
          );
        },
      });
      const dst = await OciLayoutTarget.open(join(dir, 'l'), { create: true });
      await assert.rejects(copy(src, img.manifest.digest, dst, 't'), (e: unknown) => {
        assert.ok(e instanceof CopyError);
        assert.equal(e.origin, 'source');
        assert.equal(e.details.causeCode, 'ECONNRESET');
        return true;
      });
      const files = await readdir(join(dir, 'l', 'blobs', 'sha256'));
      assert.ok(
        files.every((f) => /^[0-9a-f]{64}$/.test(f)),
        `stray: ${files.join(' ')}`,
      );
      assert.ok(!files.includes(big.digest.slice(7)));
      assert.deepEqual(await dst.tags(), []);
    });

    it('stops when aborted', async () => {
      const src = new MemoryTarget();
      const img = await image(src);
      const dst = await OciLayoutTarget.open(join(dir, 'l'), { create: true });
      const ac = new AbortController();
      ac.abort();
      await assert.rejects(copy(src, img.manifest.digest, dst, 't', { signal: ac.signal }), (e: unknown) =>
        isTiuError(e, 'ABORTED'),
      );
      assert.deepEqual(await dst.tags(), []);
    });

    it('copies referrers into the layout, where the layout lists them', async () => {
      const src = new MemoryTarget();
      const img = await image(src);
      await src.tag(img.manifest, 't');
      const sig = await image(src, {
        subject: img.manifest,
        artifactType: 'application/vnd.example.sig',
        layers: [await put(src, randomBytes(50), MediaType.OciLayerGzip)],
      });
      const dst = await OciLayoutTarget.open(join(dir, 'l'), { create: true });
      await copy(src, 't', dst, undefined, { referrers: true });
      assert.equal((await dst.resolve('t')).digest, img.manifest.digest);
      assert.deepEqual(
        (await dst.referrers(img.manifest)).map((d) => d.digest),
        [sig.manifest.digest],
      );
      assert.equal((await dst.resolveDefault()).digest, img.manifest.digest);
      // and back: layout -> memory keeps the referrer
      const back = new MemoryTarget();
      await copy(dst, undefined, back, 'x', { referrers: true });
      assert.deepEqual(
        (await back.referrers(img.manifest)).map((d) => d.digest),
        [sig.manifest.digest],
      );
    });
  });
});
