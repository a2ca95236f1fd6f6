/**
 * A loopback HTTP proxy in front of a registry, for tests that measure or disturb downloads.
 * One shared helper: it counts every byte it forwards (per request, with the blob digest and
 * the Range asked for), can strip Range headers (a registry that ignores Range), and can cut
 * blob bodies after N bytes (a dropped connection). The Host header passes through, so the
 * registry's Location headers point back at the proxy.
 */
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

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
  /** Forget the counts. */
  reset(): void;
  stop(): Promise<void>;
}

export async function startCountingProxy(upstreamPort: number, upstreamHost = '127.0.0.1'): Promise<CountingProxy> {
  let strip = false;
  let cutAfter = 0;
  let cuts = 0;
  const requests: ProxiedRequest[] = [];
  const server: Server = createServer((req, res) => {
    const path = req.url ?? '/';
    const m = /\/blobs\/(sha256:[0-9a-f]{64})/.exec(path);
    const rec: ProxiedRequest = { method: req.method ?? 'GET', path, range: String(req.headers.range ?? ''), status: 0, bytes: 0 };
    if (m) rec.blob = m[1];
    requests.push(rec);
    const headers = { ...req.headers };
    if (strip) {
      delete headers.range;
      delete headers['if-range'];
    }
    const isBlobGet = rec.method === 'GET' && rec.blob !== undefined;
    const up = request({ host: upstreamHost, port: upstreamPort, method: req.method, path, headers }, (ures) => {
      rec.status = ures.statusCode ?? 502;
      res.writeHead(rec.status, ures.statusMessage, ures.headers);
      const cutThis = isBlobGet && cuts > 0 && (rec.status === 200 || rec.status === 206);
      if (cutThis) cuts--;
      ures.on('data', (c: Buffer) => {
        if (cutThis && rec.bytes + c.length >= cutAfter) {
          const part = c.subarray(0, Math.max(0, cutAfter - rec.bytes));
          rec.bytes += part.length;
          res.write(part, () => res.socket?.destroy());
          ures.destroy();
          return;
        }
        rec.bytes += c.length;
        res.write(c);
      });
      ures.on('end', () => res.end());
      ures.on('error', () => res.destroy());
    });
    up.on('error', () => {
      if (!res.headersSent) res.writeHead(502);
      res.end();
    });
    req.pipe(up);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    host: `127.0.0.1:${port}`,
    port,
    requests,
    get bodyBytes() {
      return requests.reduce((n, r) => n + r.bytes, 0);
    },
    blobBytes(digests) {
      const want = digests ? new Set(digests) : undefined;
      return requests.filter((r) => r.method === 'GET' && r.blob !== undefined && (!want || want.has(r.blob))).reduce((n, r) => n + r.bytes, 0);
    },
    stripRange(on) {
      strip = on;
    },
    cut(after, count = 1) {
      cutAfter = after;
      cuts = count;
    },
    reset() {
      requests.length = 0;
    },
    stop: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}
