/**
 * What `tiu copy` holds in memory does not grow with the blob: bytes are pulled from the source
 * only as fast as a slow destination takes them (backpressure end to end), so the bytes taken
 * in but not yet passed on stay under a fixed budget whatever the blob's size. Measured in
 * bytes, not time: a copy that buffered a blob whole (or read ahead of its destination) holds
 * all 32 MiB at once and fails here.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setImmediate as tick } from 'node:timers/promises';
import type { FetchOptions, PushOptions } from '../../src/content/interfaces.ts';
import { copy } from '../../src/copy/copy.ts';
import { verifiedStream } from '../../src/oci/digest.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import type { Descriptor, Digest } from '../../src/oci/types.ts';
import { parseReference, type DockerReference } from '../../src/oci/reference.ts';
import { openRegistryTarget } from '../../src/transport/registry/index.ts';
import { startFakeRegistry } from '../helpers/fake-registry.ts';
import { MemoryTarget } from '../helpers/memory-target.ts';

const CHUNK = 64 * 1024;
const BLOB_BYTES = 32 * 1024 * 1024;
/** Bytes a copy may hold of one blob between its source and its destination. */
const IN_FLIGHT_BUDGET = 2 * 1024 * 1024;

/** Chunk `i` of the test blob: deterministic, so its digest is known without holding it. */
function chunkOf(i: number): Buffer {
  const b = Buffer.alloc(CHUNK, i & 0xff);
  b.writeUInt32BE(i, 0);
  return b;
}

function blobDescriptor(): Descriptor {
  const h = createHash('sha256');
  for (let i = 0; i < BLOB_BYTES / CHUNK; i++) h.update(chunkOf(i));
  return { mediaType: MediaType.OciLayerGzip, digest: `sha256:${h.digest('hex')}` as Digest, size: BLOB_BYTES };
}

/** Counts what a source has produced and a destination consumed, and the largest gap seen. */
class Gauge {
  produced = 0;
  consumed = 0;
  maxGap = 0;
  take(n: number): void {
    this.consumed += n;
    this.maxGap = Math.max(this.maxGap, this.produced - this.consumed);
  }
}

/** A slow consumer: one event-loop turn per chunk, counted by `gauge`. */
function slowSink(gauge: Gauge): Writable {
  return new Writable({
    highWaterMark: CHUNK,
    write(chunk: Buffer, _e, cb) {
      gauge.take(chunk.length);
      tick().then(() => cb(), cb);
    },
  });
}

describe('copy memory: in-flight bytes stay bounded with a slow destination', function () {
  this.timeout(60_000);
  const blob = blobDescriptor();

  it('copy() reads a large blob from its source only as fast as the destination takes it', async () => {
    const gauge = new Gauge();
    class LazySource extends MemoryTarget {
      override fetch(desc: Descriptor, opts?: FetchOptions): Promise<Readable> {
        if (desc.digest !== blob.digest) return super.fetch(desc, opts);
        let i = 0;
        return Promise.resolve(
          new Readable({
            read() {
              if (i === BLOB_BYTES / CHUNK) return void this.push(null);
              gauge.produced += CHUNK;
              this.push(chunkOf(i++));
            },
          }),
        );
      }
    }
    class SlowDestination extends MemoryTarget {
      blobDone = false;
      override async push(desc: Descriptor, content: Readable, opts?: PushOptions): Promise<void> {
        if (desc.digest !== blob.digest) return super.push(desc, content, opts);
        await pipeline(verifiedStream(content, desc, 'blob'), slowSink(gauge));
        this.blobDone = true;
      }
      override exists(desc: Descriptor, opts?: FetchOptions): Promise<boolean> {
        return desc.digest === blob.digest ? Promise.resolve(this.blobDone) : super.exists(desc, opts);
      }
    }
    const src = new LazySource('memory:src');
    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers' } }));
    const configDesc = { mediaType: MediaType.OciConfig, digest: sha(config), size: config.length };
    await src.push(configDesc, Readable.from([config]));
    const manifest = Buffer.from(
      JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciManifest, config: configDesc, layers: [blob] }),
    );
    const root = { mediaType: MediaType.OciManifest, digest: sha(manifest), size: manifest.length };
    await src.push(root, Readable.from([manifest]));
    await src.tag(root, 'v1');
    const dst = new SlowDestination('memory:dst');
    const written = await copy(src, 'v1', dst, 'v1');
    assert.equal(written.digest, root.digest);
    assert.ok(dst.blobDone);
    assert.equal(gauge.consumed, BLOB_BYTES);
    assert.ok(
      gauge.maxGap <= IN_FLIGHT_BUDGET,
      `${gauge.maxGap} bytes were read ahead of the destination (budget ${IN_FLIGHT_BUDGET})`,
    );
  });

  it('a registry blob download takes in no more than the reader has room for', async () => {
    const reg = await startFakeRegistry();
    const ref = parseReference(`docker://${reg.host}/tiu/big`) as DockerReference;
    const target = openRegistryTarget(ref, { registriesConf: false });
    try {
      const chunks: Buffer[] = [];
      for (let i = 0; i < BLOB_BYTES / CHUNK; i++) chunks.push(chunkOf(i));
      assert.equal(reg.putBlob('tiu/big', Buffer.concat(chunks)), blob.digest);
      chunks.length = 0;
      const gauge = new Gauge();
      const client = target.primary;
      const sink = slowSink(gauge);
      const take = sink.write.bind(sink);
      // What the client has received from the socket is what it holds or has passed on.
      sink.write = ((chunk: Buffer, ...rest: never[]) => {
        gauge.produced = client.blobBytesReceived;
        return take(chunk, ...rest);
      }) as typeof sink.write;
      await pipeline(await target.fetch(blob), sink);
      assert.equal(gauge.consumed, BLOB_BYTES);
      assert.ok(
        gauge.maxGap <= IN_FLIGHT_BUDGET,
        `${gauge.maxGap} bytes were received ahead of the reader (budget ${IN_FLIGHT_BUDGET})`,
      );
    } finally {
      await target.close();
      await reg.stop();
    }
  });
});

function sha(b: Buffer): Digest {
  return `sha256:${createHash('sha256').update(b).digest('hex')}` as Digest;
}
