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
import { open, mkdtemp, rm, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OciLayoutTarget } from '../../src/content/oci-layout.ts';
import { copy, type CopyError } from '../../src/copy/copy.ts';
import { RING_SLOTS, ringBuffersKept } from '../../src/util/ring-writer.ts';
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

/** A layout holding an image whose one layer is the test blob, tagged v1 (the blob written chunk by chunk). */
async function layoutWithBlob(dir: string, blob: Descriptor): Promise<OciLayoutTarget> {
  const layout = await OciLayoutTarget.open(dir, { create: true });
  let i = 0;
  const chunks = new Readable({
    read() {
      this.push(i === BLOB_BYTES / CHUNK ? null : chunkOf(i++));
    },
  });
  await layout.push(blob, chunks);
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers' } }));
  const configDesc = { mediaType: MediaType.OciConfig, digest: sha(config), size: config.length };
  await layout.push(configDesc, Readable.from([config]));
  const manifest = Buffer.from(
    JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciManifest, config: configDesc, layers: [blob] }),
  );
  const root = { mediaType: MediaType.OciManifest, digest: sha(manifest), size: manifest.length };
  await layout.push(root, Readable.from([manifest]));
  await layout.tag(root, 'v1');
  return layout;
}

/** Every distinct ArrayBuffer behind the buffers FileHandle writes get while `fn` runs. */
async function writtenFrom(dir: string, fn: () => Promise<void>): Promise<Set<ArrayBufferLike>> {
  const probe = await open(join(dir, 'probe'), 'w');
  const proto = Object.getPrototypeOf(probe) as FileHandle;
  await probe.close();
  const seen = new Set<ArrayBufferLike>();
  // eslint-disable-next-line @typescript-eslint/unbound-method -- put back as they were, and called with .call
  const { write, writev } = proto;
  proto.write = function (this: FileHandle, buf: unknown, ...rest: unknown[]) {
    if (ArrayBuffer.isView(buf) && buf.byteLength > 0) seen.add(buf.buffer);
    return (write as (...a: unknown[]) => unknown).call(this, buf, ...rest);
  } as typeof write;
  proto.writev = function (this: FileHandle, bufs: NodeJS.ArrayBufferView[], ...rest: unknown[]) {
    for (const b of bufs) if (b.byteLength > 0) seen.add(b.buffer);
    return (writev as (...a: unknown[]) => unknown).call(this, bufs, ...rest);
  } as typeof writev;
  try {
    await fn();
  } finally {
    proto.write = write;
    proto.writev = writev;
  }
  return seen;
}

describe('copy memory: blobs go through a few owned buffers, not one Buffer per chunk', function () {
  this.timeout(60_000);
  const blob = blobDescriptor();
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tiu-copybuf-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('a push from an oci: layout reads the blob into the upload’s own buffers', async () => {
    const layout = await layoutWithBlob(join(dir, 'layout'), blob);
    // The blob may only be read through openBlob, and every read lands in one of a few buffers.
    const fetch = layout.fetch.bind(layout);
    layout.fetch = (desc, opts) =>
      desc.digest === blob.digest ? Promise.reject(new Error('streamed the blob')) : fetch(desc, opts);
    const openBlob = layout.openBlob.bind(layout);
    const readInto = new Set<ArrayBufferLike>();
    let readBytes = 0;
    layout.openBlob = async (desc, opts) => {
      const r = await openBlob(desc, opts);
      if (desc.digest !== blob.digest) return r;
      return {
        read: async (into) => {
          readInto.add(into.buffer);
          const n = await r.read(into);
          readBytes += n;
          return n;
        },
        close: () => r.close(),
      };
    };
    const reg = await startFakeRegistry();
    const target = openRegistryTarget(parseReference(`docker://${reg.host}/tiu/big`) as DockerReference, {
      registriesConf: false,
    });
    try {
      await copy(layout, 'v1', target, 'v1');
      assert.equal(readBytes, BLOB_BYTES);
      assert.ok(readInto.size <= RING_SLOTS, `${BLOB_BYTES} bytes were read into ${readInto.size} buffers`);
      // the registry holds the blob (fetch verifies it by digest and size)
      let back = 0;
      await pipeline(
        await target.fetch(blob),
        new Writable({
          write(c: Buffer, _e, cb) {
            back += c.length;
            cb();
          },
        }),
      );
      assert.equal(back, BLOB_BYTES);
    } finally {
      await target.close();
      await reg.stop();
    }
  });

  it('a push whose file does not match its digest fails as the source’s DIGEST_MISMATCH and commits nothing', async () => {
    const layout = await layoutWithBlob(join(dir, 'layout'), blob);
    const path = layout.blobPath(blob.digest);
    const fh = await open(path, 'r+');
    await fh.write(Buffer.from([0x00]), 0, 1, BLOB_BYTES - 1); // the last chunk is all 0xff
    await fh.close();
    const reg = await startFakeRegistry();
    const target = openRegistryTarget(parseReference(`docker://${reg.host}/tiu/big`) as DockerReference, {
      registriesConf: false,
    });
    try {
      await assert.rejects(copy(layout, 'v1', target, 'v1'), (e: CopyError) => {
        assert.equal(e.code, 'DIGEST_MISMATCH');
        assert.equal(e.origin, 'source');
        return true;
      });
      assert.equal(await target.exists(blob), false);
    } finally {
      await target.close();
      await reg.stop();
    }
  });

  it('a pull into an oci: layout writes the blob from a few buffers of its own', async () => {
    const reg = await startFakeRegistry();
    const ref = parseReference(`docker://${reg.host}/tiu/big`) as DockerReference;
    const target = openRegistryTarget(ref, { registriesConf: false });
    try {
      await copy(await layoutWithBlob(join(dir, 'src'), blob), 'v1', target, 'v1');
      const dst = await OciLayoutTarget.open(join(dir, 'dst'), { create: true });
      const buffers = await writtenFrom(dir, async () => {
        await copy(target, 'v1', dst, 'v1');
      });
      assert.ok(await dst.exists(blob));
      // The socket's own chunks (hundreds for 32 MiB) never reach the disk: copies in the ring's
      // buffers do. The config is written through a ring of its own, which may be in flight at the
      // same time as the layer's (then the two hold different pooled buffers); the manifest comes after.
      assert.ok(buffers.size <= 2 * RING_SLOTS, `the pull wrote from ${buffers.size} distinct buffers`);
      // Nothing is kept for a next blob once the copy is over (an update writes its layers next).
      assert.equal(ringBuffersKept(), 0);
    } finally {
      await target.close();
      await reg.stop();
    }
  });
});

function sha(b: Buffer): Digest {
  return `sha256:${createHash('sha256').update(b).digest('hex')}` as Digest;
}
