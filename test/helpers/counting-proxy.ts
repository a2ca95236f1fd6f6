/**
 * A loopback HTTP proxy in front of a registry, for tests and benchmarks that measure or
 * disturb downloads. The one shared helper: it counts every byte it passes (per request, with
 * the blob digest and the Range asked for; and in total with status lines and headers, both
 * ways), can strip Range headers (a registry that ignores Range), can cut blob bodies after N
 * bytes (a dropped connection), and can serve static directories under a path prefix (casync's
 * chunk store in the benchmark). The Host header passes through, so the registry's Location
 * headers point back at the proxy.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { join, normalize } from 'node:path';

/** Totals on the wire: status lines, headers and bodies. */
export interface Counters {
  /** Bytes sent to clients. */
  down: number;
  /** Bytes received from clients. */
  up: number;
  requests: number;
}

export interface ProxiedRequest {
  method: string;
  path: string;
  /** The blob digest for /v2/<name>/blobs/<digest> requests. */
  blob?: string;
  /** The Range header the client sent ('' when none), before any stripping. */
  range: string;
  status: number;
  /** Response body bytes forwarded to the client. */
  bytes: number;
}

export interface CountingProxy {
  host: string;
  port: number;
  /** http://host:port */
  url: string;
  counters: Counters;
  /** Every request so far, in order of arrival. */
  requests: ProxiedRequest[];
  /** Response body bytes of all requests. */
  readonly bodyBytes: number;
  /** Response body bytes of blob GETs (all, or of the given digests). */
  blobBytes(digests?: Iterable<string>): number;
  /** Drop the Range and If-Range headers of every request from now on (the registry then answers 200). */
  stripRange(on: boolean): void;
  /** Cut the next `count` blob GET bodies after `after` bytes. */
  cut(after: number, count?: number): void;
  /**
   * The network dies once `afterBytes` more response-body bytes have gone out: open
   * connections are reset and new ones are dropped on arrival, until up().
   */
  down(afterBytes?: number): void;
  up(): void;
  /** Forget the counts; returns the totals until now. */
  reset(): Counters;
  /** Point the proxy at another upstream (a fresh registry). */
  setUpstream(host: string, port: number): void;
  /** Serve the files of `dir` under the path `prefix` (e.g. /casync/). */
  serve(prefix: string, dir: string): void;
  stop(): Promise<void>;
}

function headerBytes(line: string, headers: Record<string, string | string[] | number | undefined>): number {
  let n = line.length + 2;
  for (const [k, v] of Object.entries(headers)) {
    if (v === undefined) continue;
    for (const x of Array.isArray(v) ? v : [v]) n += k.length + 2 + String(x).length + 2;
  }
  return n + 2;
}

export async function startCountingProxy(
  upstreamPort: number,
  upstreamHost = '127.0.0.1',
  statics: Record<string, string> = {},
): Promise<CountingProxy> {
  let strip = false;
  let cutAfter = 0;
  let cuts = 0;
  /** Body bytes left before the network dies (undefined: it stays up). */
  let dieIn: number | undefined;
  let dead = false;
  const sockets = new Set<Socket>();
  const die = (): void => {
    dead = true;
    dieIn = undefined;
    for (const s of sockets) s.destroy();
  };
  /** Count body bytes towards the failure; false once the network is dead. */
  const alive = (n: number): boolean => {
    if (dead) return false;
    if (dieIn === undefined) return true;
    dieIn -= n;
    if (dieIn >= 0) return true;
    die();
    return false;
  };
  let up = { host: upstreamHost, port: upstreamPort };
  const requests: ProxiedRequest[] = [];
  const counters: Counters = { down: 0, up: 0, requests: 0 };

  const serveStatic = async (
    dir: string,
    rel: string,
    req: IncomingMessage,
    res: ServerResponse,
    rec: ProxiedRequest,
  ): Promise<void> => {
    const p = normalize(join(dir, decodeURIComponent(rel)));
    if (!p.startsWith(dir)) {
      rec.status = 403;
      res.writeHead(403).end();
      return;
    }
    try {
      const st = await stat(p);
      if (!st.isFile()) throw new Error('not a file');
      const headers = { 'content-length': st.size, 'content-type': 'application/octet-stream' };
      counters.down += headerBytes('HTTP/1.1 200 OK', headers);
      rec.status = 200;
      res.writeHead(200, headers);
      if (req.method === 'HEAD') {
        res.end();
        return;
      }
      const s = createReadStream(p);
      s.on('data', (d) => {
        counters.down += d.length;
        rec.bytes += d.length;
      });
      s.pipe(res);
    } catch {
      counters.down += headerBytes('HTTP/1.1 404 Not Found', {});
      rec.status = 404;
      res.writeHead(404).end();
    }
  };

  const server: Server = createServer((req, res) => {
    if (dead) {
      req.socket.destroy();
      return;
    }
    const path = req.url ?? '/';
    counters.requests++;
    counters.up += headerBytes(`${req.method} ${path} HTTP/1.1`, req.headers);
    req.on('data', (d: Buffer) => {
      counters.up += d.length;
    });
    const m = /\/blobs\/(sha256:[0-9a-f]{64})/.exec(path);
    const rec: ProxiedRequest = {
      method: req.method ?? 'GET',
      path,
      range: String(req.headers.range ?? ''),
      status: 0,
      bytes: 0,
    };
    if (m) rec.blob = m[1];
    requests.push(rec);
    for (const [prefix, dir] of Object.entries(statics)) {
      if (path.startsWith(prefix)) {
        void serveStatic(dir, path.slice(prefix.length).split('?')[0]!, req, res, rec);
        return;
      }
    }
    const headers = { ...req.headers };
    if (strip) {
      delete headers.range;
      delete headers['if-range'];
    }
    const isBlobGet = rec.method === 'GET' && rec.blob !== undefined;
    const fwd = request({ host: up.host, port: up.port, method: req.method, path, headers }, (ures) => {
      rec.status = ures.statusCode ?? 502;
      counters.down += headerBytes(`HTTP/1.1 ${rec.status} ${ures.statusMessage ?? ''}`, ures.headers);
      res.writeHead(rec.status, ures.statusMessage, ures.headers);
      const cutThis = isBlobGet && cuts > 0 && (rec.status === 200 || rec.status === 206);
      if (cutThis) cuts--;
      ures.on('data', (c: Buffer) => {
        if (!alive(c.length)) {
          ures.destroy();
          return;
        }
        if (cutThis && rec.bytes + c.length >= cutAfter) {
          const part = c.subarray(0, Math.max(0, cutAfter - rec.bytes));
          rec.bytes += part.length;
          counters.down += part.length;
          res.write(part, () => res.socket?.destroy());
          ures.destroy();
          return;
        }
        rec.bytes += c.length;
        counters.down += c.length;
        res.write(c);
      });
      ures.on('end', () => res.end());
      ures.on('error', () => res.destroy());
    });
    fwd.on('error', () => {
      if (!res.headersSent) res.writeHead(502);
      res.end();
    });
    req.pipe(fwd);
  });
  server.on('connection', (s: Socket) => {
    if (dead) {
      s.destroy();
      return;
    }
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  server.keepAliveTimeout = 5000;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    host: `127.0.0.1:${port}`,
    port,
    url: `http://127.0.0.1:${port}`,
    counters,
    requests,
    get bodyBytes() {
      return requests.reduce((n, r) => n + r.bytes, 0);
    },
    blobBytes(digests) {
      const want = digests ? new Set(digests) : undefined;
      return requests
        .filter((r) => r.method === 'GET' && r.blob !== undefined && (!want || want.has(r.blob)))
        .reduce((n, r) => n + r.bytes, 0);
    },
    stripRange(on) {
      strip = on;
    },
    cut(after, count = 1) {
      cutAfter = after;
      cuts = count;
    },
    down(afterBytes = 0) {
      if (afterBytes <= 0) die();
      else dieIn = afterBytes;
    },
    up() {
      dead = false;
      dieIn = undefined;
    },
    reset() {
      const c = { ...counters };
      counters.down = 0;
      counters.up = 0;
      counters.requests = 0;
      requests.length = 0;
      return c;
    },
    setUpstream(host, p) {
      up = { host, port: p };
    },
    serve(prefix, dir) {
      statics[prefix] = dir;
    },
    stop: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}
