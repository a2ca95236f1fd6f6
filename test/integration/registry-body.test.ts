/**
 * Blob bodies from distribution 2.8 through tiu's own HTTP/1.1 reader (streamed-get.ts): no
 * Buffer per socket read, connections kept alive across Range GETs.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { sha256 } from '../../src/oci/digest.ts';
import { parseReference, type DockerReference } from '../../src/oci/reference.ts';
import type { Descriptor } from '../../src/oci/types.ts';
import { openRegistryTarget, RegistrySession } from '../../src/transport/registry/index.ts';
import { requireRoot } from '../helpers/env.ts';
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts';

const MiB = 1024 * 1024;

describe('registry transport: blob bodies without a Buffer per read (distribution 2.8)', function () {
  this.timeout(120_000);
  let reg: RunningRegistry;
  let session: RegistrySession;
  let desc: Descriptor;
  let data: Buffer;

  before(async function () {
    requireRoot(this, 'runs a registry');
    reg = await startRegistry();
    session = new RegistrySession({ retries: 0 });
    data = randomBytes(32 * MiB);
    desc = { mediaType: 'application/octet-stream', digest: sha256(data), size: data.length };
    const t = openRegistryTarget(parseReference(`docker://${reg.host}/tiu/body`) as DockerReference, {
      registriesConf: false,
      session,
    });
    await t.push(desc, Readable.from([data]));
  });
  after(async () => {
    await session?.close();
    await reg?.stop();
  });

  const target = () =>
    openRegistryTarget(parseReference(`docker://${reg.host}/tiu/body`) as DockerReference, {
      registriesConf: false,
      session,
    });

  it('a 32 MiB blob arrives through a bounded number of distinct ArrayBuffers', async () => {
    // Every Buffer a stream hands on passes Readable.prototype.push: node:http's socket reads
    // and its parser's body copies (one or two new ArrayBuffers per 64 KiB) would show here.
    const seen = new Set<ArrayBufferLike>();
    let pushedBytes = 0;
    // eslint-disable-next-line @typescript-eslint/unbound-method -- called with its `this` below
    const push = Readable.prototype.push;
    Readable.prototype.push = function (this: Readable, chunk: unknown, encoding?: BufferEncoding) {
      if (chunk instanceof Uint8Array && chunk.length > 0) {
        seen.add(chunk.buffer);
        pushedBytes += chunk.length;
      }
      return push.call(this, chunk, encoding);
    };
    const into = Buffer.alloc(256 * 1024);
    const consumer = new Set<ArrayBufferLike>();
    let got = 0;
    const hash = (await import('node:crypto')).createHash('sha256');
    try {
      const reader = await target().openBlob(desc);
      for (let n = await reader.read(into); n > 0; n = await reader.read(into)) {
        consumer.add(into.buffer);
        hash.update(into.subarray(0, n));
        got += n;
      }
      await reader.close();
    } finally {
      Readable.prototype.push = push;
    }
    assert.equal(got, data.length);
    assert.equal(`sha256:${hash.digest('hex')}`, desc.digest);
    assert.equal(consumer.size, 1);
    assert.ok(seen.size <= 4, `${seen.size} distinct ArrayBuffers (${pushedBytes} bytes) went through streams`);
    assert.ok(pushedBytes < MiB, `${pushedBytes} bytes went through streams`);
  });

  it('many Range GETs share one kept-alive connection and return exactly their bytes', async () => {
    const t = target();
    const before = session.http.streamedConnections;
    const into = Buffer.alloc(64 * 1024);
    for (let i = 0; i < 50; i++) {
      const start = i * 600_000 + (i % 7);
      const end = start + 1 + ((i * 7919) % 60_000);
      const r = await t.openRange(desc, start, end);
      let got = 0;
      for (let n = await r.read(into.subarray(got)); n > 0; n = await r.read(into.subarray(got))) got += n;
      await r.close();
      assert.equal(got, end - start);
      assert.ok(into.subarray(0, got).equals(data.subarray(start, end)), `range ${start}-${end}`);
    }
    assert.ok(
      session.http.streamedConnections - before <= 1,
      `${session.http.streamedConnections - before} connections for 50 ranges`,
    );
  });

  it('fetch() and fetchRange() (streams over the same reader) give the same bytes', async () => {
    const t = target();
    const parts: Buffer[] = [];
    for await (const c of await t.fetch(desc)) parts.push(c as Buffer);
    assert.ok(Buffer.concat(parts).equals(data));
    const range: Buffer[] = [];
    for await (const c of await t.fetchRange(desc, 5, 70_005)) range.push(c as Buffer);
    assert.ok(Buffer.concat(range).equals(data.subarray(5, 70_005)));
  });
});
