/**
 * A loopback HTTP reverse proxy that counts every byte it passes, in front of a registry (all
 * paths) and, optionally, static directories served under a path prefix (casync's chunk store).
 * Clients talk to the proxy as if it were the registry; the Host header is passed through so
 * the registry's Location headers point back at the proxy.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createServer, request, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, normalize } from 'node:path';

export interface Counters {
  /** Bytes sent to clients: status lines, headers and bodies. */
  down: number;
  /** Bytes received from clients: request lines, headers and bodies. */
  up: number;
  requests: number;
}

export interface CountingProxy {
  host: string;
  url: string;
  counters: Counters;
  reset(): Counters;
  /** Point the registry side at another upstream (a fresh registry). */
  setUpstream(host: string, port: number): void;
  /** Serve the files of `dir` under the path `prefix` (e.g. /casync/). */
  serve(prefix: string, dir: string): void;
  stop(): Promise<void>;
}

function headerBytes(statusOrLine: string, headers: Record<string, string | string[] | number | undefined>): number {
  let n = statusOrLine.length + 2;
  for (const [k, v] of Object.entries(headers)) {
    if (v === undefined) continue;
    for (const x of Array.isArray(v) ? v : [v]) n += k.length + 2 + String(x).length + 2;
  }
  return n + 2;
}

export async function startProxy(upstream: { host: string; port: number }, statics: Record<string, string> = {}): Promise<CountingProxy> {
  const counters: Counters = { down: 0, up: 0, requests: 0 };
  let up = { ...upstream };

  const serveStatic = async (dir: string, rel: string, req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const p = normalize(join(dir, decodeURIComponent(rel)));
    if (!p.startsWith(dir)) { res.writeHead(403).end(); return; }
    try {
      const st = await stat(p);
      if (!st.isFile()) throw new Error('not a file');
      const headers = { 'content-length': st.size, 'content-type': 'application/octet-stream' };
      counters.down += headerBytes('HTTP/1.1 200 OK', headers);
      res.writeHead(200, headers);
      if (req.method === 'HEAD') { res.end(); return; }
      const s = createReadStream(p);
      s.on('data', (d) => { counters.down += d.length; });
      s.pipe(res);
    } catch {
      counters.down += headerBytes('HTTP/1.1 404 Not Found', {});
      res.writeHead(404).end();
    }
  };

  const server = createServer((req, res) => {
    counters.requests++;
    counters.up += headerBytes(`${req.method} ${req.url} HTTP/1.1`, req.headers);
    req.on('data', (d: Buffer) => { counters.up += d.length; });
    const url = req.url ?? '/';
    for (const [prefix, dir] of Object.entries(statics)) {
      if (url.startsWith(prefix)) { void serveStatic(dir, url.slice(prefix.length).split('?')[0]!, req, res); return; }
    }
    const fwd = request({ host: up.host, port: up.port, method: req.method, path: url, headers: req.headers }, (ures) => {
      counters.down += headerBytes(`HTTP/1.1 ${ures.statusCode} ${ures.statusMessage}`, ures.headers);
      res.writeHead(ures.statusCode ?? 502, ures.statusMessage, ures.headers);
      ures.on('data', (d: Buffer) => { counters.down += d.length; });
      ures.pipe(res);
    });
    fwd.on('error', () => { if (!res.headersSent) res.writeHead(502); res.end(); });
    req.pipe(fwd);
  });
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    host: `127.0.0.1:${port}`,
    url: `http://127.0.0.1:${port}`,
    counters,
    reset() {
      const c = { ...counters };
      counters.down = 0; counters.up = 0; counters.requests = 0;
      return c;
    },
    setUpstream(host, p) { up = { host, port: p }; },
    serve(prefix, dir) { statics[prefix] = dir; },
    stop: () => new Promise((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}
