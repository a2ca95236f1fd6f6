import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { isTiuError } from '../../../src/errors.ts';
import { backoffMs, HttpClient, parseRetryAfter } from '../../../src/transport/registry/http.ts';

async function serve(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<{ server: Server; url: string }> {
  const server = createServer(handler);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}
async function close(s: Server): Promise<void> {
  s.closeAllConnections();
  await new Promise<void>((r) => s.close(() => r()));
}

describe('registry: http', () => {
  const servers: Server[] = [];
  afterEach(async () => {
    for (const s of servers.splice(0)) await close(s);
  });
  const client = (o = {}) => new HttpClient({ backoffBaseMs: 5, backoffMaxMs: 20, ...o });

  it('reads Retry-After as seconds or a date; backoff is bounded and jittered', () => {
    assert.equal(parseRetryAfter('3'), 3000);
    assert.equal(parseRetryAfter(new Date(Date.now() + 10_000).toUTCString(), Date.now())! > 8000, true);
    assert.equal(parseRetryAfter('soon'), undefined);
    assert.equal(parseRetryAfter(undefined), undefined);
    assert.equal(backoffMs(10, 200, 5000, () => 0.999), 4995);
    assert.equal(backoffMs(0, 200, 5000, () => 0.5), 100);
    assert.equal(backoffMs(3, 200, 5000, () => 0), 0);
  });

  it('retries connection resets and 5xx, then succeeds', async () => {
    let n = 0;
    const { server, url } = await serve((req, res) => {
      n++;
      if (n === 1) req.socket.destroy();
      else if (n === 2) res.writeHead(502).end();
      else res.writeHead(200).end('ok');
    });
    servers.push(server);
    const res = await client().request({ method: 'GET', url: new URL('/x', url) });
    assert.equal(res.status, 200);
    res.body.resume();
    assert.equal(n, 3);
  });

  it('does not replay a streamed body; hands back the last 5xx once the retries are spent', async () => {
    let n = 0;
    const { server, url } = await serve((req, res) => {
      n++;
      req.resume();
      req.on('end', () => res.writeHead(503).end());
    });
    servers.push(server);
    const res = await client().request({ method: 'PUT', url: new URL('/x', url), body: Readable.from([Buffer.from('data')]) });
    assert.equal(res.status, 503);
    res.body.resume();
    assert.equal(n, 1);
    const r2 = await client({ retries: 2 }).request({ method: 'GET', url: new URL('/x', url) });
    assert.equal(r2.status, 503);
    r2.body.resume();
    assert.equal(n, 4);
  });

  it('answers a Retry-After longer than the limit at once', async () => {
    const { server, url } = await serve((_req, res) => res.writeHead(429, { 'retry-after': '3600' }).end());
    servers.push(server);
    const t0 = Date.now();
    const res = await client().request({ method: 'GET', url: new URL('/x', url) });
    assert.equal(res.status, 429);
    res.body.resume();
    assert.ok(Date.now() - t0 < 10_000);
  });

  it('times out an idle server (REGISTRY_TIMEOUT) and honours AbortSignal (ABORTED)', async () => {
    const { server, url } = await serve(() => {
      /* never answers */
    });
    servers.push(server);
    await assert.rejects(client({ timeoutMs: 100, retries: 1 }).request({ method: 'GET', url: new URL('/x', url) }), (e: unknown) => isTiuError(e, 'REGISTRY_TIMEOUT'));
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    await assert.rejects(client().request({ method: 'GET', url: new URL('/x', url), signal: ac.signal }), (e: unknown) => isTiuError(e, 'ABORTED'));
  });

  it('refused connections become REGISTRY_UNREACHABLE naming the host', async () => {
    const { server, url } = await serve(() => undefined);
    await close(server);
    await assert.rejects(client({ retries: 1 }).request({ method: 'GET', url: new URL('/x', url) }), (e: unknown) => isTiuError(e, 'REGISTRY_UNREACHABLE') && e.message.includes(new URL(url).host));
  });

  it('follows redirects and drops Authorization when the host changes', async () => {
    let seen: string | undefined = 'unset';
    const b = await serve((req, res) => {
      seen = req.headers.authorization;
      res.writeHead(200).end('blob');
    });
    const a = await serve((req, res) => {
      assert.equal(req.headers.authorization, 'Bearer secret-token');
      res.writeHead(307, { location: `${b.url}/storage/blob` }).end();
    });
    servers.push(a.server, b.server);
    const res = await client().request({ method: 'GET', url: new URL('/v2/x/blobs/y', a.url), headers: { authorization: 'Bearer secret-token' }, followRedirects: true });
    assert.equal(res.status, 200);
    res.body.resume();
    assert.equal(seen, undefined);
    assert.equal(res.url.host, new URL(b.url).host);
  });
});
