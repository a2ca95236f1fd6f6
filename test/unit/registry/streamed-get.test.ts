import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isTiuError } from '../../../src/errors.ts';
import { OciLayoutTarget } from '../../../src/content/oci-layout.ts';
import type { Descriptor, Digest } from '../../../src/oci/types.ts';
import { parseReference, type DockerReference } from '../../../src/oci/reference.ts';
import { HttpClient } from '../../../src/transport/registry/http.ts';
import { openRegistryTarget } from '../../../src/transport/registry/index.ts';
import { MAX_HEAD_BYTES, ResponseParser } from '../../../src/transport/registry/response-parser.ts';

/** The body a parser finds in `wire` fed in pieces of `piece` bytes, taking at most `room` body bytes a call. */
function parse(wire: Buffer, piece: number, room: number): { status: number; body: Buffer; done: boolean } {
  const p = new ResponseParser();
  p.begin('GET', 'test');
  const out: Buffer[] = [];
  for (let off = 0; off < wire.length; off += piece) {
    const chunk = Buffer.from(wire.subarray(off, Math.min(wire.length, off + piece)));
    let at = 0;
    while (at < chunk.length && !p.done) {
      at = p.feed(chunk, at, chunk.length, room);
      if (p.pieceEnd > p.pieceStart) out.push(Buffer.from(chunk.subarray(p.pieceStart, p.pieceEnd)));
    }
  }
  return { status: p.head?.status ?? 0, body: Buffer.concat(out), done: p.done };
}

function chunked(body: Buffer, sizes: number[]): Buffer {
  const parts: Buffer[] = [];
  let off = 0;
  for (let i = 0; off < body.length; i++) {
    const n = Math.min(sizes[i % sizes.length]!, body.length - off);
    parts.push(Buffer.from(`${n.toString(16)}${i % 2 ? ';ext=1' : ''}\r\n`), body.subarray(off, off + n), Buffer.from('\r\n'));
    off += n;
  }
  parts.push(Buffer.from('0\r\nx-trailer: 1\r\n\r\n'));
  return Buffer.concat(parts);
}

const code = (c: string) => (e: unknown) => {
  assert.ok(isTiuError(e, c as never), `expected ${c}, got ${e instanceof Error ? `${(e as { code?: string }).code}: ${e.message}` : String(e)}`);
  return true;
};

interface RawServer {
  server: Server;
  port: number;
  /** Requests seen: their head lines. */
  heads: string[][];
  /** Connections accepted. */
  connections: number;
}

/**
 * A registry that answers /v2/ with 200 and every other request with `answer(head)`'s bytes
 * (written in the given pieces), keeping the connection open unless told to close.
 */
async function rawServer(answer: (head: string[], sock: Socket) => void): Promise<RawServer> {
  const s: RawServer = { server: createServer(), port: 0, heads: [], connections: 0 };
  s.server.on('connection', (sock) => {
    s.connections++;
    let acc = '';
    sock.on('error', () => undefined);
    sock.on('data', (d: Buffer) => {
      acc += d.toString('latin1');
      for (let end = acc.indexOf('\r\n\r\n'); end >= 0; end = acc.indexOf('\r\n\r\n')) {
        const head = acc.slice(0, end).split('\r\n');
        acc = acc.slice(end + 4);
        s.heads.push(head);
        if (head[0]!.startsWith('GET /v2/ ')) sock.write('HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n');
        else answer(head, sock);
      }
    });
  });
  await new Promise<void>((r) => s.server.listen(0, '127.0.0.1', r));
  s.port = (s.server.address() as AddressInfo).port;
  return s;
}

async function stopServer(s: RawServer): Promise<void> {
  await new Promise<void>((r) => {
    s.server.close(() => r());
    s.server.emit('close');
  });
}

const blob = Buffer.from('the quick brown fox jumps over the lazy dog '.repeat(1000));
const desc: Descriptor = {
  mediaType: 'application/octet-stream',
  digest: `sha256:${createHash('sha256').update(blob).digest('hex')}` as Digest,
  size: blob.length,
};

describe('registry: blob bodies on our own HTTP/1.1 reader', () => {
  describe('framing (ResponseParser)', () => {
    it('reads Content-Length and chunked bodies fed in pieces of every size, with any room per call', () => {
      const body = Buffer.from(Array.from({ length: 700 }, (_, i) => i % 251));
      const byLength = Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n`), body]);
      const byChunks = Buffer.concat([Buffer.from('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n'), chunked(body, [1, 7, 300, 64])]);
      for (const wire of [byLength, byChunks]) {
        for (let piece = 1; piece <= wire.length; piece += piece < 40 ? 1 : 37) {
          for (const room of [1, 3, 4096]) {
            const r = parse(wire, piece, room);
            assert.equal(r.status, 200);
            assert.ok(r.done, `piece ${piece}, room ${room}: not done`);
            assert.deepEqual(r.body, body, `piece ${piece}, room ${room}`);
          }
        }
      }
    });

    it('skips interim 1xx answers and reads the final one; HEAD and 204 have no body', () => {
      const r = parse(Buffer.from('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok'), 5, 10);
      assert.deepEqual([r.status, r.body.toString()], [200, 'ok']);
      const p = new ResponseParser();
      p.begin('HEAD', 'test');
      const head = Buffer.from('HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n');
      assert.equal(p.feed(head, 0, head.length, 100), head.length);
      assert.ok(p.done);
    });

    const refuse: [string, string][] = [
      ['a head over the limit', `HTTP/1.1 200 OK\r\nx-big: ${'a'.repeat(MAX_HEAD_BYTES)}\r\n\r\n`],
      ['Content-Length together with Transfer-Encoding', 'HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n'],
      ['differing duplicate Content-Length', 'HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n'],
      ['a list of differing Content-Lengths', 'HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n'],
      ['a negative Content-Length', 'HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\n'],
      ['a transfer coding other than chunked', 'HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n'],
      ['a bad chunk size', 'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n'],
      ['an overflowing chunk size', 'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffff\r\n'],
      ['a chunk not followed by CRLF', 'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokX'],
      ['a bare LF in a chunk-size line', 'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\nok\r\n'],
      ['a folded header line', 'HTTP/1.1 200 OK\r\nx-a: 1\r\n  folded\r\ncontent-length: 0\r\n\r\n'],
      ['a control character in a header', 'HTTP/1.1 200 OK\r\nx-a: 1\x00\r\ncontent-length: 0\r\n\r\n'],
      ['no status line', 'HTTP/2 200\r\n\r\n'],
    ];
    for (const [what, wire] of refuse) {
      it(`refuses ${what} (REGISTRY_BAD_RESPONSE)`, () => {
        assert.throws(() => parse(Buffer.from(wire, 'latin1'), 13, 100), code('REGISTRY_BAD_RESPONSE'));
      });
    }

    it('accepts equal duplicate Content-Lengths and a chunk size with leading zeros', () => {
      assert.equal(parse(Buffer.from('HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok'), 4, 9).body.toString(), 'ok');
      const wire = 'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0000000000000000002\r\nok\r\n0\r\n\r\n';
      assert.equal(parse(Buffer.from(wire), 4, 9).body.toString(), 'ok');
    });
  });

  describe('blob GETs against a scripted registry', () => {
    let dir: string;
    let srv: RawServer | undefined;
    beforeEach(async () => {
      dir = await mkdtemp(join(tmpdir(), 'tiu-streamed-'));
    });
    afterEach(async () => {
      if (srv) await stopServer(srv);
      srv = undefined;
      await rm(dir, { recursive: true, force: true });
    });
    const target = (s: RawServer) =>
      openRegistryTarget(parseReference(`docker://127.0.0.1:${s.port}/tiu/test`) as DockerReference, {
        registriesConf: false,
        retries: 0,
        timeoutMs: 2000,
      });

    /** Pull the blob into a fresh layout; the layout's blob directory afterwards. */
    async function pull(s: RawServer): Promise<string[]> {
      const t = target(s);
      const layout = await OciLayoutTarget.open(join(dir, 'layout'), { create: true });
      try {
        await layout.pushFrom(desc, () => t.openBlob(desc));
      } finally {
        await t.close();
        const left = await readdir(join(dir, 'layout', 'blobs', 'sha256')).catch(() => []);
        pulledFiles = left;
      }
      return pulledFiles;
    }
    let pulledFiles: string[] = [];

    it('pulls Content-Length and chunked blobs written in pieces of many sizes, over one kept-alive connection', async () => {
      let n = 0;
      srv = await rawServer((_head, sock) => {
        const wire =
          n++ % 2
            ? Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n`), chunked(blob, [1, 1000, 17, 4096])])
            : Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\ncontent-length: ${blob.length}\r\n\r\n`), blob]);
        const sizes = [1, 2, 3, 100, 7000, 65536];
        let off = 0;
        for (let i = 0; off < wire.length; i++) {
          const k = Math.min(sizes[(i + n) % sizes.length]!, wire.length - off);
          sock.write(wire.subarray(off, off + k));
          off += k;
        }
      });
      const t = target(srv);
      try {
        for (let round = 0; round < 4; round++) {
          const reader = await t.openBlob(desc);
          const into = Buffer.alloc(5000);
          const parts: Buffer[] = [];
          for (let k = await reader.read(into); k > 0; k = await reader.read(into)) parts.push(Buffer.from(into.subarray(0, k)));
          await reader.close();
          assert.deepEqual(Buffer.concat(parts), blob, `round ${round}`);
        }
      } finally {
        await t.close();
      }
      assert.equal(srv.connections, 1, 'the blob GETs reused the probe’s connection');
    });

    const hostile: [string, (sock: Socket) => void, string][] = [
      ['a head over its limit', (s) => s.end(`HTTP/1.1 200 OK\r\nx-big: ${'a'.repeat(MAX_HEAD_BYTES)}\r\n\r\n`), 'REGISTRY_BAD_RESPONSE'],
      ['Content-Length with Transfer-Encoding', (s) => s.end(`HTTP/1.1 200 OK\r\ncontent-length: ${blob.length}\r\ntransfer-encoding: chunked\r\n\r\n`), 'REGISTRY_BAD_RESPONSE'],
      ['differing Content-Lengths', (s) => s.end(`HTTP/1.1 200 OK\r\ncontent-length: ${blob.length}\r\ncontent-length: 3\r\n\r\n`), 'REGISTRY_BAD_RESPONSE'],
      ['a bad chunk size mid-body', (s) => s.end(`HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10\r\n${blob.toString('latin1', 0, 16)}\r\n-1\r\n`), 'REGISTRY_BAD_RESPONSE'],
      ['an overflowing chunk size', (s) => s.end('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n20000000000000\r\nabc'), 'REGISTRY_BAD_RESPONSE'],
      ['a body longer than declared', (s) => s.end(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\ncontent-length: ${blob.length}\r\n\r\n`), blob, Buffer.from('EXTRA')])), 'REGISTRY_BAD_RESPONSE'],
      ['a body shorter than declared (the connection closes)', (s) => s.end(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\ncontent-length: ${blob.length}\r\n\r\n`), blob.subarray(0, 100)])), 'REGISTRY_UNREACHABLE'],
      ['a chunked body that ends short', (s) => s.end(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n`), chunked(blob.subarray(0, 100), [50])])), 'SIZE_MISMATCH'],
    ];
    for (const [what, answer, want] of hostile) {
      it(`a blob GET answered with ${what} fails with ${want} and writes nothing`, async () => {
        srv = await rawServer((head, sock) => {
          // a resume (Range) gets the same treatment
          void head;
          answer(sock);
        });
        await assert.rejects(pull(srv), code(want));
        assert.deepEqual(pulledFiles.filter((f) => !f.startsWith('.')), []);
        assert.deepEqual(pulledFiles, [], 'no temporary file is left either');
      });
    }

    it('a 206 whose Content-Range (or length) is not the range asked for fails with REGISTRY_BAD_RESPONSE', async () => {
      const answers = [
        `HTTP/1.1 206 Partial Content\r\ncontent-range: bytes 11-20/${blob.length}\r\ncontent-length: 10\r\n\r\n${blob.toString('latin1', 11, 21)}`,
        `HTTP/1.1 206 Partial Content\r\ncontent-range: bytes 10-19/${blob.length + 1}\r\ncontent-length: 10\r\n\r\n${blob.toString('latin1', 10, 20)}`,
        `HTTP/1.1 206 Partial Content\r\ncontent-range: bytes 10-19/${blob.length}\r\ncontent-length: 11\r\n\r\n${blob.toString('latin1', 10, 21)}`,
        `HTTP/1.1 206 Partial Content\r\ncontent-length: 10\r\n\r\n${blob.toString('latin1', 10, 20)}`,
      ];
      let i = 0;
      srv = await rawServer((_h, sock) => sock.write(answers[i++ % answers.length]!, 'latin1'));
      const t = target(srv);
      try {
        for (const _ of answers) await assert.rejects(t.openRange(desc, 10, 20), code('REGISTRY_BAD_RESPONSE'));
      } finally {
        await t.close();
      }
    });

    it('a chunked range body longer than asked fails with SIZE_MISMATCH', async () => {
      srv = await rawServer((_h, sock) =>
        sock.write(Buffer.concat([Buffer.from(`HTTP/1.1 206 Partial Content\r\ncontent-range: bytes 10-19/${blob.length}\r\ntransfer-encoding: chunked\r\n\r\n`), chunked(blob.subarray(10, 25), [4])])),
      );
      const t = target(srv);
      try {
        const r = await t.openRange(desc, 10, 20);
        const into = Buffer.alloc(64);
        await assert.rejects(async () => {
          while ((await r.read(into)) > 0);
        }, code('SIZE_MISMATCH'));
      } finally {
        await t.close();
      }
    });

    it('an AbortSignal ends a body mid-way (ABORTED); a server gone quiet mid-body ends it with TIMEOUT', async () => {
      srv = await rawServer((head, sock) => {
        if (head[0]!.includes('/blobs/')) sock.write(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\ncontent-length: ${blob.length}\r\n\r\n`), blob.subarray(0, 1000)]));
      });
      const t = target(srv);
      try {
        const ac = new AbortController();
        const r = await t.openBlob(desc, { signal: ac.signal });
        const into = Buffer.alloc(blob.length);
        let got = 0;
        while (got < 1000) got += await r.read(into.subarray(got));
        setTimeout(() => ac.abort(), 20);
        await assert.rejects(r.read(into), code('ABORTED'));
        const t0 = Date.now();
        const idle = new HttpClient({ timeoutMs: 300, retries: 0 });
        try {
          await assert.rejects(
            (async () => {
              const res = await idle.requestStreamed({ url: new URL(`http://127.0.0.1:${srv.port}/v2/x/blobs/${desc.digest}`) });
              while ((await res.body.read(into)) > 0);
            })(),
            (e: unknown) => (e as { code?: string }).code === 'TIMEOUT',
          );
        } finally {
          await idle.close();
        }
        assert.ok(Date.now() - t0 < 5000);
      } finally {
        await t.close();
      }
    });

    it('a redirect to another host drops Authorization', async () => {
      const storage = await rawServer((head, sock) => {
        sock.write(`HTTP/1.1 200 OK\r\ncontent-length: ${blob.length}\r\n\r\n`);
        sock.write(blob);
        void head;
      });
      srv = await rawServer((head, sock) => {
        if (head[0]!.includes('/blobs/')) sock.write(`HTTP/1.1 307 Temporary Redirect\r\nlocation: http://localhost:${storage.port}/store/x\r\ncontent-length: 0\r\n\r\n`);
      });
      const http = new HttpClient({ retries: 0 });
      try {
        const res = await http.requestStreamed({
          url: new URL(`http://127.0.0.1:${srv.port}/v2/x/blobs/${desc.digest}`),
          headers: { authorization: 'Bearer secret' },
          followRedirects: true,
        });
        const into = Buffer.alloc(blob.length + 1);
        let got = 0;
        for (let k = await res.body.read(into); k > 0; k = await res.body.read(into.subarray(got))) got += k;
        assert.equal(got, blob.length);
        assert.ok(srv.heads.at(-1)!.some((l) => /^authorization: Bearer secret$/i.test(l)), 'the registry got the token');
        const sent = storage.heads.at(-1)!;
        assert.ok(sent[0]!.startsWith('GET /store/x '));
        assert.ok(!sent.some((l) => /^authorization:/i.test(l)), 'the storage host did not get the token');
      } finally {
        await http.close();
        await stopServer(storage);
      }
    });

    it('a body read through readBody still works for small error answers', async () => {
      srv = await rawServer((_h, sock) => sock.write('HTTP/1.1 418 Teapot\r\ncontent-type: application/json\r\ncontent-length: 46\r\n\r\n{"errors":[{"code":"TEA","message":"no tea"}]}'));
      const t = target(srv);
      try {
        await assert.rejects(t.openBlob(desc), (e: unknown) => isTiuError(e, 'REGISTRY_ERROR') && /TEA no tea/.test((e as Error).message));
      } finally {
        await t.close();
      }
    });
  });
});
