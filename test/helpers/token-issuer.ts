/**
 * A small token service for the registry's `auth.token` mode: it signs ES256 JWTs whose x5c
 * header carries a self-signed certificate (made with openssl), and that certificate is the
 * registry's rootcertbundle. Grants what is asked to a known user (password or refresh token);
 * anonymous callers get a token that allows only pulls from repositories under `public/`.
 */
import { execFileSync } from 'node:child_process';
import { createPrivateKey, randomUUID, sign, X509Certificate, type KeyObject } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TokenIssuer {
  realm: string;
  service: string;
  issuer: string;
  /** PEM certificate file for the registry's rootcertbundle. */
  rootcertbundle: string;
  /** Counters: token answers by grant kind. */
  issued: { password: number; refresh: number; anonymous: number };
  /** Scopes asked for, in order. */
  scopes: string[];
  refreshToken: string;
  stop(): Promise<void>;
}

const b64url = (b: Buffer | string): string => Buffer.from(b).toString('base64url');

export async function startTokenIssuer(
  user: string,
  password: string,
  opts: { expiresIn?: number } = {},
): Promise<TokenIssuer> {
  const dir = mkdtempSync(join(tmpdir(), 'tiu-token-'));
  const keyFile = join(dir, 'key.pem');
  const certFile = join(dir, 'cert.pem');
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-subj',
      '/CN=tiu-token-issuer',
      '-days',
      '2',
      '-keyout',
      keyFile,
      '-out',
      certFile,
    ],
    { stdio: 'ignore' },
  );
  const key: KeyObject = createPrivateKey(readFileSync(keyFile));
  const certDer = new X509Certificate(readFileSync(certFile)).raw;
  const service = 'tiu-test-registry';
  const issuer = 'tiu-test-issuer';
  const refreshToken = randomUUID();
  const issued = { password: 0, refresh: 0, anonymous: 0 };
  const scopes: string[] = [];

  const jwt = (access: { type: string; name: string; actions: string[] }[]): string => {
    const now = Math.floor(Date.now() / 1000);
    const header = { typ: 'JWT', alg: 'ES256', x5c: [certDer.toString('base64')] };
    const claims = {
      iss: issuer,
      sub: user,
      aud: service,
      exp: now + (opts.expiresIn ?? 300),
      nbf: now - 10,
      iat: now,
      jti: randomUUID(),
      access,
    };
    const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    const sig = sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
    return `${input}.${b64url(sig)}`;
  };
  const accessFor = (scopeList: string[]) =>
    scopeList.flatMap((s) => {
      const m = /^(repository|registry):([^:]+):(.+)$/.exec(s);
      return m ? [{ type: m[1]!, name: m[2]!, actions: m[3]!.split(',') }] : [];
    });

  const server: Server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (c: Buffer) => parts.push(c));
    req.on('end', () => {
      const u = new URL(req.url ?? '/', 'http://x');
      let scopeList: string[];
      let kind: keyof typeof issued;
      if (req.method === 'POST') {
        const form = new URLSearchParams(Buffer.concat(parts).toString());
        if (form.get('grant_type') !== 'refresh_token' || form.get('refresh_token') !== refreshToken) {
          res.writeHead(401, { 'content-type': 'application/json' });
          res.end('{"error":"invalid_grant"}');
          return;
        }
        scopeList = (form.get('scope') ?? '').split(' ').filter(Boolean);
        kind = 'refresh';
      } else {
        scopeList = u.searchParams.getAll('scope');
        const auth = req.headers.authorization;
        if (!auth) {
          issued.anonymous++;
          scopes.push(...scopeList);
          const access = accessFor(scopeList)
            .filter((a) => a.type === 'repository' && a.name.startsWith('public/'))
            .map((a) => ({ ...a, actions: a.actions.filter((x) => x === 'pull') }));
          res.writeHead(200, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ token: jwt(access), expires_in: 300 }));
          return;
        }
        const [u2, p2] = Buffer.from(auth.replace(/^Basic /, ''), 'base64')
          .toString()
          .split(':');
        if (u2 !== user || p2 !== password) {
          res.writeHead(401, { 'content-type': 'application/json' });
          res.end('{"details":"bad credentials"}');
          return;
        }
        kind = 'password';
      }
      issued[kind]++;
      scopes.push(...scopeList);
      const token = jwt(accessFor(scopeList));
      const body: Record<string, unknown> = {
        token,
        access_token: token,
        expires_in: opts.expiresIn ?? 300,
        issued_at: new Date().toISOString(),
      };
      if (kind === 'password' && u.searchParams.get('offline_token') === 'true') body.refresh_token = refreshToken;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    realm: `http://127.0.0.1:${port}/token`,
    service,
    issuer,
    rootcertbundle: certFile,
    issued,
    scopes,
    refreshToken,
    stop: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => {
          rmSync(dir, { recursive: true, force: true });
          r();
        });
      }),
  };
}
