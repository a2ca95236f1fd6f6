/**
 * A small in-memory registry for the cases a real distribution 2.8 can't show: the referrers
 * API, injected faults (5xx, 429 with Retry-After), corrupted content, oversized manifests,
 * registries without Range support. It speaks just enough of the distribution spec.
 */
import { createHash, randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface Fault {
  /** Matched against `METHOD /path?query`. */
  match: RegExp;
  status: number;
  headers?: Record<string, string>;
  /** How many matching requests fail; default 1. */
  times?: number;
}

export interface FakeRegistryOptions {
  referrersApi?: boolean;
  ranges?: boolean;
}

export interface FakeRegistryControls {
  /** The next N PATCHes keep only the first half of their body and say so in Range (no 416). */
  shortPatches: number;
}

interface Repo {
  manifests: Map<string, { bytes: Buffer; mediaType: string }>;
  tags: Map<string, string>;
  blobs: Map<string, Buffer>;
}

export interface FakeRegistry extends FakeRegistryControls {
  host: string;
  url: string;
  faults: Fault[];
  /** `METHOD /path` of every request, in order. */
  log: string[];
  /** Blobs served with one byte flipped. */
  corrupt: Set<string>;
  /** Put a manifest straight into storage (no checks: for oversized ones). */
  putRaw(repo: string, tag: string, bytes: Buffer, mediaType: string): string;
  putBlob(repo: string, data: Buffer): string;
  stop(): Promise<void>;
}

const sha = (b: Buffer): string => 'sha256:' + createHash('sha256').update(b).digest('hex');

async function body(req: IncomingMessage): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of req) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

export async function startFakeRegistry(opts: FakeRegistryOptions = {}): Promise<FakeRegistry> {
  const repos = new Map<string, Repo>();
  const uploads = new Map<string, { repo: string; data: Buffer[] }>();
  const faults: Fault[] = [];
  const log: string[] = [];
  const corrupt = new Set<string>();
  const controls: FakeRegistryControls = { shortPatches: 0 };
  const repo = (n: string): Repo => {
    let r = repos.get(n);
    if (!r) repos.set(n, (r = { manifests: new Map(), tags: new Map(), blobs: new Map() }));
    return r;
  };
  const err = (res: ServerResponse, status: number, code: string): void => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ errors: [{ code, message: code.toLowerCase() }] }));
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const u = new URL(req.url ?? '/', 'http://x');
    const line = `${req.method} ${u.pathname}${u.search}`;
    log.push(line);
    const f = faults.find((x) => x.match.test(line) && (x.times ?? 1) > 0);
    if (f) {
      f.times = (f.times ?? 1) - 1;
      await body(req);
      res.writeHead(f.status, f.headers ?? {});
      res.end();
      return;
    }
    if (u.pathname === '/v2/' || u.pathname === '/v2') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
      return;
    }
    const m = /^\/v2\/(.+?)\/(manifests|blobs|tags|referrers)\/(.*)$/.exec(u.pathname);
    if (!m) return err(res, 404, 'NOT_FOUND');
    const [, name, kind, rest] = m as unknown as [string, string, string, string];
    const r = repo(name);
    if (kind === 'manifests') {
      const ref = rest;
      if (req.method === 'PUT') {
        const b = await body(req);
        const d = sha(b);
        const mediaType = (req.headers['content-type'] ?? '').split(';')[0]!;
        r.manifests.set(d, { bytes: b, mediaType });
        if (!ref.startsWith('sha256:')) r.tags.set(ref, d);
        else if (ref !== d) return err(res, 400, 'DIGEST_INVALID');
        const h: Record<string, string> = { 'docker-content-digest': d, location: `/v2/${name}/manifests/${d}` };
        const doc = JSON.parse(b.toString()) as { subject?: { digest: string } };
        if (doc.subject && opts.referrersApi) h['oci-subject'] = doc.subject.digest;
        res.writeHead(201, h);
        res.end();
        return;
      }
      const d = ref.startsWith('sha256:') ? ref : r.tags.get(ref);
      const man = d ? r.manifests.get(d) : undefined;
      if (!d || !man) return err(res, 404, 'MANIFEST_UNKNOWN');
      if (req.method === 'DELETE') {
        r.manifests.delete(d);
        for (const [t, v] of r.tags) if (v === d) r.tags.delete(t);
        res.writeHead(202);
        res.end();
        return;
      }
      let bytes = man.bytes;
      if (corrupt.has(d)) bytes = Buffer.concat([bytes, Buffer.from(' ')]);
      res.writeHead(200, {
        'content-type': man.mediaType,
        'content-length': String(bytes.length),
        'docker-content-digest': d,
      });
      res.end(req.method === 'HEAD' ? undefined : bytes);
      return;
    }
    if (kind === 'referrers') {
      if (!opts.referrersApi) return err(res, 404, 'NOT_FOUND');
      const at = u.searchParams.get('artifactType');
      const manifests = [];
      for (const [d, man] of r.manifests) {
        const doc = JSON.parse(man.bytes.toString()) as {
          subject?: { digest: string };
          artifactType?: string;
          config?: { mediaType: string };
          annotations?: Record<string, string>;
        };
        if (doc.subject?.digest !== rest) continue;
        const artifactType = doc.artifactType ?? doc.config?.mediaType;
        if (at && artifactType !== at) continue;
        manifests.push({
          mediaType: man.mediaType,
          digest: d,
          size: man.bytes.length,
          artifactType,
          ...(doc.annotations ? { annotations: doc.annotations } : {}),
        });
      }
      res.writeHead(200, {
        'content-type': 'application/vnd.oci.image.index.v1+json',
        ...(at ? { 'oci-filters-applied': 'artifactType' } : {}),
      });
      res.end(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests }));
      return;
    }
    if (kind === 'tags') {
      const all = [...r.tags.keys()].sort();
      const n = Number(u.searchParams.get('n') ?? 1000);
      const last = u.searchParams.get('last');
      const from = last ? all.findIndex((t) => t > last) : 0;
      const page = from < 0 ? [] : all.slice(from, from + n);
      const h: Record<string, string> = { 'content-type': 'application/json' };
      if (from >= 0 && from + n < all.length)
        h.link = `</v2/${name}/tags/list?n=${n}&last=${encodeURIComponent(page[page.length - 1]!)}>; rel="next"`;
      res.writeHead(200, h);
      res.end(JSON.stringify({ name, tags: page }));
      return;
    }
    // blobs
    if (rest.startsWith('uploads')) {
      const id = rest.slice('uploads/'.length);
      if (req.method === 'POST') {
        const mount = u.searchParams.get('mount');
        const from = u.searchParams.get('from');
        if (mount && from && repos.get(from)?.blobs.has(mount)) {
          r.blobs.set(mount, repos.get(from)!.blobs.get(mount)!);
          res.writeHead(201, { location: `/v2/${name}/blobs/${mount}`, 'docker-content-digest': mount });
          res.end();
          return;
        }
        const b = await body(req);
        const dg = u.searchParams.get('digest');
        if (dg && b.length > 0) {
          if (sha(b) !== dg) return err(res, 400, 'DIGEST_INVALID');
          r.blobs.set(dg, b);
          res.writeHead(201, { location: `/v2/${name}/blobs/${dg}` });
          res.end();
          return;
        }
        const nid = randomUUID();
        uploads.set(nid, { repo: name, data: [] });
        res.writeHead(202, { location: `/v2/${name}/blobs/uploads/${nid}`, range: '0-0' });
        res.end();
        return;
      }
      const up = uploads.get(id);
      if (!up) return err(res, 404, 'BLOB_UPLOAD_UNKNOWN');
      if (req.method === 'DELETE') {
        uploads.delete(id);
        res.writeHead(204);
        res.end();
        return;
      }
      if (req.method === 'GET') {
        const held = up.data.reduce((a, x) => a + x.length, 0);
        res.writeHead(204, { location: `/v2/${name}/blobs/uploads/${id}`, range: `0-${Math.max(0, held - 1)}` });
        res.end();
        return;
      }
      let b = await body(req);
      if (req.method === 'PATCH' && controls.shortPatches > 0) {
        controls.shortPatches--;
        b = b.subarray(0, Math.floor(b.length / 2));
      }
      up.data.push(b);
      const len = up.data.reduce((a, x) => a + x.length, 0);
      if (req.method === 'PATCH') {
        // A new id each time: clients must follow the latest Location.
        const nid = randomUUID();
        uploads.delete(id);
        uploads.set(nid, up);
        res.writeHead(202, { location: `/v2/${name}/blobs/uploads/${nid}`, range: `0-${len - 1}` });
        res.end();
        return;
      }
      if (req.method === 'PUT') {
        const all = Buffer.concat(up.data);
        const dg = u.searchParams.get('digest');
        uploads.delete(id);
        if (!dg || sha(all) !== dg) return err(res, 400, 'DIGEST_INVALID');
        r.blobs.set(dg, all);
        res.writeHead(201, { location: `/v2/${name}/blobs/${dg}`, 'docker-content-digest': dg });
        res.end();
        return;
      }
      return err(res, 405, 'UNSUPPORTED');
    }
    const data = r.blobs.get(rest);
    if (!data) return err(res, 404, 'BLOB_UNKNOWN');
    let out = data;
    if (corrupt.has(rest)) {
      out = Buffer.from(data);
      out[0] = out[0]! ^ 0xff;
    }
    const range = req.headers.range;
    const rm = range && opts.ranges !== false ? /^bytes=(\d+)-(\d*)$/.exec(range) : null;
    if (rm) {
      const s = Number(rm[1]);
      const e = rm[2] ? Number(rm[2]) : out.length - 1;
      res.writeHead(206, { 'content-range': `bytes ${s}-${e}/${out.length}`, 'content-length': String(e - s + 1) });
      res.end(req.method === 'HEAD' ? undefined : out.subarray(s, e + 1));
      return;
    }
    res.writeHead(200, { 'content-length': String(out.length), 'docker-content-digest': rest });
    res.end(req.method === 'HEAD' ? undefined : out);
  };

  const server: Server = createServer((req, res) => {
    handle(req, res).catch((e: unknown) => {
      res.writeHead(500);
      res.end(String(e));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    get shortPatches() {
      return controls.shortPatches;
    },
    set shortPatches(n: number) {
      controls.shortPatches = n;
    },
    host: `127.0.0.1:${port}`,
    url: `http://127.0.0.1:${port}`,
    faults,
    log,
    corrupt,
    putRaw(name, tag, bytes, mediaType) {
      const d = sha(bytes);
      repo(name).manifests.set(d, { bytes, mediaType });
      repo(name).tags.set(tag, d);
      return d;
    },
    putBlob(name, data) {
      const d = sha(data);
      repo(name).blobs.set(d, data);
      return d;
    },
    stop: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}
