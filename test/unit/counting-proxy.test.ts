/** The shared loopback proxy of the tests and the benchmark: counting, Range stripping, cuts, static files. */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, get, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCountingProxy, type CountingProxy } from '../helpers/counting-proxy.ts';

const BLOB = `/v2/x/blobs/sha256:${'a'.repeat(64)}`;
const data = Buffer.alloc(10_000, 7);

function fetchVia(
  p: CountingProxy,
  path: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve) => {
    const parts: Buffer[] = [];
    const req = get({ host: '127.0.0.1', port: p.port, path, headers, agent: false }, (res) => {
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(parts) }));
      res.on('error', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(parts) }));
    });
    req.on('error', () => resolve({ status: 0, body: Buffer.concat(parts) }));
  });
}

describe('counting proxy (test helper)', () => {
  let upstream: Server;
  let proxy: CountingProxy;
  let dir: string;
  before(async () => {
    upstream = createServer((req, res) => {
      const m = /^bytes=(\d+)-(\d+)$/.exec(String(req.headers.range ?? ''));
      if (m) {
        res.writeHead(206, { 'content-range': `bytes ${m[1]}-${m[2]}/${data.length}` });
        res.end(data.subarray(Number(m[1]), Number(m[2]) + 1));
      } else {
        res.writeHead(200);
        res.end(data);
      }
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
    dir = await mkdtemp(join(tmpdir(), 'tiu-proxy-'));
    await writeFile(join(dir, 'chunk'), 'static!');
    proxy = await startCountingProxy((upstream.address() as AddressInfo).port, '127.0.0.1', { '/static/': dir });
  });
  after(async () => {
    await proxy.stop();
    await new Promise((r) => upstream.close(r));
    await rm(dir, { recursive: true, force: true });
  });

  it('counts bodies per blob and request, with the Range asked for', async () => {
    assert.equal((await fetchVia(proxy, BLOB, { range: 'bytes=0-99' })).body.length, 100);
    assert.equal((await fetchVia(proxy, BLOB)).body.length, data.length);
    assert.equal(proxy.blobBytes(), 100 + data.length);
    assert.deepEqual(
      proxy.requests.map((r) => [r.range, r.status]),
      [
        ['bytes=0-99', 206],
        ['', 200],
      ],
    );
    const c = proxy.reset();
    assert.equal(c.requests, 2);
    assert.ok(c.down > 100 + data.length && c.up > 0);
    assert.equal(proxy.bodyBytes, 0);
  });

  it('strips Range headers on request, cuts bodies, serves static files', async () => {
    proxy.stripRange(true);
    const r = await fetchVia(proxy, BLOB, { range: 'bytes=0-99' });
    proxy.stripRange(false);
    assert.equal(r.status, 200);
    assert.equal(r.body.length, data.length);
    proxy.cut(1000, 1);
    assert.equal((await fetchVia(proxy, BLOB)).body.length, 1000);
    assert.equal((await fetchVia(proxy, BLOB)).body.length, data.length);
    const s = await fetchVia(proxy, '/static/chunk');
    assert.equal(s.body.toString(), 'static!');
    assert.equal((await fetchVia(proxy, '/static/../etc/passwd')).status, 403);
    assert.equal((await fetchVia(proxy, '/static/missing')).status, 404);
  });
});
