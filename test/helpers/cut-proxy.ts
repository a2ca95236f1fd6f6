/**
 * A loopback HTTP proxy in front of a registry that cuts the connection in the middle of blob
 * downloads, and counts the blob bytes it forwards (to check what a resumed pull re-downloads).
 */
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface CutProxy {
  host: string;
  /** Blob body bytes sent to clients. */
  blobBytes: number;
  /** `Range` headers of blob GETs, '' when none. */
  ranges: string[];
  /** Cut the next `count` blob GET bodies after `after` bytes. */
  cut(after: number, count?: number): void;
  stop(): Promise<void>;
}

export async function startCutProxy(upstreamPort: number): Promise<CutProxy> {
  let cutAfter = 0;
  let cuts = 0;
  const state = { blobBytes: 0, ranges: [] as string[] };
  const server: Server = createServer((req, res) => {
    const isBlob = req.method === 'GET' && /\/blobs\/sha256:/.test(req.url ?? '');
    if (isBlob) state.ranges.push(String(req.headers.range ?? ''));
    const up = request({ host: '127.0.0.1', port: upstreamPort, method: req.method, path: req.url, headers: req.headers }, (ures) => {
      res.writeHead(ures.statusCode ?? 502, ures.headers);
      const cutThis = isBlob && cuts > 0 && (ures.statusCode === 200 || ures.statusCode === 206);
      if (cutThis) cuts--;
      let sent = 0;
      ures.on('data', (c: Buffer) => {
        if (!isBlob) {
          res.write(c);
          return;
        }
        if (cutThis && sent + c.length >= cutAfter) {
          const part = c.subarray(0, cutAfter - sent);
          sent += part.length;
          state.blobBytes += part.length;
          res.write(part, () => res.socket?.destroy());
          ures.destroy();
          return;
        }
        sent += c.length;
        state.blobBytes += c.length;
        res.write(c);
      });
      ures.on('end', () => res.end());
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    host: `127.0.0.1:${port}`,
    get blobBytes() {
      return state.blobBytes;
    },
    ranges: state.ranges,
    cut(after, count = 1) {
      cutAfter = after;
      cuts = count;
    },
    stop: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}
