/**
 * layerOpeners: the verified, decompressed tar stream of each layer. tiu's own zstd layers are
 * many frames with a skippable frame (the table of contents) at the end; all of it must come out.
 */
import { strict as assert } from 'node:assert';
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { gzipSync, zstdCompressSync } from 'node:zlib';
import { MemoryTarget } from '../helpers/memory-target.ts';
import { layerOpeners } from '../../src/layer/openers.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import type { Descriptor, Digest, ImageManifest } from '../../src/oci/types.ts';

const sha = (b: Uint8Array): Digest => `sha256:${createHash('sha256').update(b).digest('hex')}`;

function skippable(payload: Buffer): Buffer {
  const h = Buffer.alloc(8);
  h.writeUInt32LE(0x184d2a5e, 0);
  h.writeUInt32LE(payload.length, 4);
  return Buffer.concat([h, payload]);
}

async function openOnly(blob: Buffer, mediaType: string): Promise<Buffer> {
  const target = new MemoryTarget();
  const desc: Descriptor = { mediaType, digest: sha(blob), size: blob.length };
  await target.push(desc, Readable.from([blob]));
  const config: Descriptor = { mediaType: MediaType.OciConfig, digest: sha(Buffer.from('{}')), size: 2 };
  const manifest: ImageManifest = { schemaVersion: 2, mediaType: MediaType.OciManifest, config, layers: [desc] };
  const [open] = layerOpeners(target, manifest);
  return buffer(await open!());
}

describe('update: layer streams', () => {
  const parts = [Buffer.alloc(2048, 1), Buffer.from('x'.repeat(100_000)), Buffer.alloc(1024, 0)];
  const whole = Buffer.concat(parts);

  it('reads every frame of a multi-frame zstd layer and skips skippable frames', async () => {
    const blob = Buffer.concat([...parts.map((p) => zstdCompressSync(p)), skippable(Buffer.from('{"toc":true}'))]);
    assert.deepEqual(await openOnly(blob, MediaType.OciLayerZstd), whole);
  });

  it('reads a gzip layer', async () => {
    assert.deepEqual(await openOnly(gzipSync(whole), MediaType.OciLayerGzip), whole);
  });

  // The apply engine stops at a tar's end blocks and destroys the stream: the blob stream under
  // it (a FileHandle for an OCI layout) must be destroyed too, not left for the GC (DEP0137).
  // Incompressible and larger than the streams buffer, so the blob is not all read by then.
  const noise = randomBytes(1 << 20);
  const openers: [string, (t: MemoryTarget, d: Descriptor) => Promise<Readable>][] = [
    [
      'update layerOpeners',
      (t, d) => {
        const config: Descriptor = { mediaType: MediaType.OciConfig, digest: sha(Buffer.from('{}')), size: 2 };
        return Promise.resolve(
          layerOpeners(t, { schemaVersion: 2, mediaType: MediaType.OciManifest, config, layers: [d] })[0]!(),
        );
      },
    ],
  ];
  for (const [via, openLayer] of openers) {
    for (const [kind, mediaType, blob] of [
      ['gzip', MediaType.OciLayerGzip, gzipSync(noise)],
      ['zstd', MediaType.OciLayerZstd, zstdCompressSync(noise)],
      ['uncompressed', MediaType.OciLayerTar, noise],
    ] as const) {
      it(`${via}: a reader that stops early closes the ${kind} blob stream`, async () => {
        const target = new MemoryTarget();
        const desc: Descriptor = { mediaType, digest: sha(blob), size: blob.length };
        await target.push(desc, Readable.from([blob]));
        const raws: Readable[] = [];
        const fetch = target.fetch.bind(target);
        target.fetch = async (d, o) => {
          const all = await buffer(await fetch(d, o));
          const raw = Readable.from(
            (function* () {
              for (let i = 0; i < all.length; i += 16384) yield all.subarray(i, i + 16384);
            })(),
            { objectMode: false },
          );
          raws.push(raw);
          return raw;
        };
        const out = await openLayer(target, desc);
        for await (const _ of out) break; // one chunk, then stop: for-await destroys `out`
        assert.equal(raws.length, 1);
        // destruction travels up the chain asynchronously: give it a moment, not forever
        for (let i = 0; i < 100 && !raws[0]!.destroyed; i++) await new Promise((r) => setTimeout(r, 10));
        assert.equal(raws[0]!.destroyed, true, 'the blob stream is still open');
      });
    }
  }
});
