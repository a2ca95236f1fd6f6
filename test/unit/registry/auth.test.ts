import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isTiuError } from '../../../src/errors.ts';
import { RegistryAuth } from '../../../src/transport/registry/auth.ts';
import { HttpClient, type HttpResponse } from '../../../src/transport/registry/http.ts';

/** A token realm: counts GETs (Basic) and POSTs (refresh_token grant); tokens live `expiresIn` s. */
async function realm(expiresIn: number) {
  const calls: { method: string; scope: string; basic: boolean; refresh?: string }[] = [];
  let n = 0;
  const server: Server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (c: Buffer) => parts.push(c));
    req.on('end', () => {
      const u = new URL(req.url ?? '/', 'http://x');
      if (req.method === 'POST') {
        const f = new URLSearchParams(Buffer.concat(parts).toString());
        calls.push({ method: 'POST', scope: f.get('scope') ?? '', basic: false, refresh: f.get('refresh_token') ?? '' });
        if (f.get('refresh_token') !== 'R1') {
          res.writeHead(401).end();
          return;
        }
      } else {
        calls.push({ method: 'GET', scope: u.searchParams.getAll('scope').join(' '), basic: Boolean(req.headers.authorization) });
      }
      n++;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ access_token: `T${n}`, expires_in: expiresIn, ...(req.method === 'GET' && req.headers.authorization ? { refresh_token: 'R1' } : {}) }));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/token`;
  return { url, calls, close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }) };
}

function challenge(header: string): HttpResponse {
  return { status: 401, headers: { 'www-authenticate': header }, body: { resume() {} } as never, url: new URL('http://r/v2/') };
}

describe('registry: token cache', () => {
  it('a refresh token the realm refuses falls back to the password', async () => {
    const r = await realm(300);
    const dir = await mkdtemp(join(tmpdir(), 'tiu-authtest-'));
    try {
      const file = join(dir, 'auth.json');
      await writeFile(file, JSON.stringify({ auths: { 'r.example': { auth: Buffer.from('u:p').toString('base64'), identitytoken: 'REVOKED' } } }));
      const auth = new RegistryAuth('r.example', new HttpClient(), { authFile: file });
      auth.learn(challenge(`Bearer realm="${r.url}"`));
      assert.equal(await auth.header('a', ['repository:a:pull']), 'Bearer T1');
      assert.deepEqual(r.calls.map((c) => [c.method, c.refresh ?? c.basic]), [['POST', 'REVOKED'], ['GET', true]]);
    } finally {
      await rm(dir, { recursive: true, force: true });
      await r.close();
    }
  });

  it('caches a token per scope set until shortly before it expires', async () => {
    const r = await realm(60); // renewed 6 s early: used for 54 s
    let clock = 1_000_000;
    try {
      const auth = new RegistryAuth('r.example', new HttpClient(), { creds: 'u:p' }, () => clock);
      auth.learn(challenge(`Bearer realm="${r.url}",service="svc"`));
      assert.equal(await auth.header('a', ['repository:a:pull']), 'Bearer T1');
      assert.equal(await auth.header('a', ['repository:a:pull']), 'Bearer T1');
      assert.equal(r.calls.length, 1);
      assert.equal(r.calls[0]!.basic, true);
      // another scope set: another token, now from the refresh token the realm handed out
      assert.equal(await auth.header('a', ['repository:a:pull,push', 'repository:b:pull']), 'Bearer T2');
      assert.equal(r.calls[1]!.method, 'POST');
      assert.equal(r.calls[1]!.scope, 'repository:a:pull,push repository:b:pull');
      clock += 53_000;
      assert.equal(await auth.header('a', ['repository:a:pull']), 'Bearer T1');
      clock += 2_000;
      assert.equal(await auth.header('a', ['repository:a:pull']), 'Bearer T3');
      assert.equal(r.calls.length, 3);
    } finally {
      await r.close();
    }
  });

  it('a 401 from the registry gets one retry with a fresh token, then REGISTRY_UNAUTHORIZED without secrets', async () => {
    const r = await realm(300);
    try {
      const auth = new RegistryAuth('r.example', new HttpClient(), { creds: 'u:p' });
      auth.learn(challenge(`Bearer realm="${r.url}"`));
      await auth.header('a', ['repository:a:pull']);
      const res = challenge(`Bearer realm="${r.url}",error="invalid_token"`);
      assert.equal(await auth.rejected(res, 'a', ['repository:a:pull'], 0, 'x'), true);
      await assert.rejects(auth.rejected(res, 'a', ['repository:a:pull'], 1, 'GET x'), (e: unknown) => isTiuError(e, 'REGISTRY_UNAUTHORIZED') && e.message.includes('--creds') && !e.message.includes(':p'));
    } finally {
      await r.close();
    }
  });
});
