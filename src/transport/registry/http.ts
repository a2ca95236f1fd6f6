/**
 * HTTP for the registry client on node:http/https: keep-alive agents per host with that host's
 * CA/client certificate, an idle timeout, AbortSignal, redirects, and bounded retries
 * (exponential backoff with full jitter on connection errors and 5xx; 429 honours Retry-After).
 * Requests whose body is a stream are sent once: a stream can't be replayed.
 */
import type http from 'node:http';
import type https from 'node:https';
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Readable, Writable } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import { TiuError } from '../../errors.ts';
import { AbortedError, TlsError, TooSlowError, UnreachableError } from './errors.ts';
import { deadlineMs, rate, speedLimits, SpeedWindow, type SpeedLimits, type SpeedSettings } from './speed.ts';
import { StreamedGets, type StreamedBody } from './streamed-get.ts';
import type { TlsSettings } from './tls-settings.ts';

export type { TlsSettings };

export interface HttpOptions {
  /** Idle time on a socket before the request fails (and is retried). Default 30 s. */
  timeoutMs?: number;
  /** Retries after the first attempt for replayable requests. Default 4. */
  retries?: number;
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  /** Longest Retry-After tiu waits for; longer answers fail at once. Default 60 s. */
  retryAfterMaxMs?: number;
  /** TLS settings of a host[:port]. */
  tls?: (hostport: string) => Promise<TlsSettings>;
  userAgent?: string;
  /** Minimum throughput and deadline (speed.ts); the environment's TIU_MIN_SPEED … override. */
  speed?: SpeedSettings;
}

export interface HttpRequest {
  method: string;
  url: URL;
  headers?: Record<string, string>;
  /** A Buffer can be re-sent on retry; a stream or a BodyWriter is sent once. */
  body?: Buffer | Readable | BodyWriter;
  signal?: AbortSignal | undefined;
  /** Follow 30x (blob GETs go to storage backends); Authorization is dropped on a host change. */
  followRedirects?: boolean;
  /** Override: no retries at all. */
  noRetry?: boolean;
  /** Body bytes expected (a blob's size, a range's length): scales the deadline. */
  expectedBytes?: number;
  /** What is fetched, for REGISTRY_TOO_SLOW ("blob sha256:… in os/microos"); default: method and path. */
  what?: string;
}

/**
 * A request body written by the caller into the request (then ended by the client), for a
 * sender that reuses its buffers: it may reuse one once its write's callback has run. A
 * rejection destroys the request with that error.
 */
export type BodyWriter = (req: Writable) => Promise<void>;

/** What every response body offers: given up, destroyed, or read (small bodies) as Buffers. */
export interface ResponseBody {
  resume(): void;
  destroy(error?: Error): void;
  [Symbol.asyncIterator](): AsyncIterator<unknown>;
}

export interface HttpResponse<B extends ResponseBody = ResponseBody> {
  status: number;
  headers: IncomingHttpHeaders;
  body: B;
  /** The URL that answered (after redirects). */
  url: URL;
}

/**
 * node:http and node:https as CommonJS objects, not ESM imports: an ESM import of node:http
 * reads every export, and its lazy getters (WebSocket, CloseEvent, MessageEvent) load undici,
 * ~14 MiB of RSS that tiu never uses. https (and with it OpenSSL's root store) only for an
 * https URL.
 */
const httpModule = (): typeof http => process.getBuiltinModule('node:http');
const httpsModule = (): typeof https => process.getBuiltinModule('node:https');

const RETRY_CODES = new Set([
  'ECONNRESET', 'ECONNREFUSED', 'ETIMEDOUT', 'EPIPE', 'EAI_AGAIN', 'ECONNABORTED', 'EHOSTUNREACH',
  'ENETUNREACH', 'UND_ERR_SOCKET', 'TIMEOUT',
]);

function errCode(e: unknown): string {
  return typeof e === 'object' && e !== null && 'code' in e ? String((e).code) : '';
}

export function isTlsFailure(e: unknown): boolean {
  const c = errCode(e);
  return (
    c.startsWith('ERR_TLS') || c.startsWith('ERR_SSL') || c.startsWith('CERT_') || c.includes('SELF_SIGNED') ||
    c.startsWith('UNABLE_TO_') || c === 'HOSTNAME_MISMATCH' || c === 'ERR_TLS_CERT_ALTNAME_INVALID' || c === 'EPROTO'
  );
}

export function isConnectionFailure(e: unknown): boolean {
  return RETRY_CODES.has(errCode(e)) || (e instanceof Error && /socket hang up|aborted/.test(e.message) && !(e instanceof TiuError));
}

type Logger = (line: string) => void;
let logger: Logger = (line) => {
  if (process.env.TIU_DEBUG) process.stderr.write(`tiu: ${line}\n`);
};
/**
 * Route the request log (one line per request: method, origin and path, status). Query
 * strings, headers and bodies are never logged: they can carry tokens and upload state.
 */
export function setHttpLogger(l: Logger): Logger {
  const prev = logger;
  logger = l;
  return prev;
}

class SocketTimeout extends Error {
  readonly code = 'TIMEOUT';
}

/** Retry-After: delta-seconds or an HTTP date; undefined when absent or unreadable. */
export function parseRetryAfter(v: string | undefined, now = Date.now()): number | undefined {
  if (!v) return undefined;
  if (/^\d+$/.test(v.trim())) return Number(v.trim()) * 1000;
  const t = Date.parse(v);
  return Number.isNaN(t) ? undefined : Math.max(0, t - now);
}

export function backoffMs(attempt: number, base: number, max: number, random = Math.random): number {
  return Math.floor(random() * Math.min(max, base * 2 ** attempt));
}

export class HttpClient {
  readonly #opts: Required<Omit<HttpOptions, 'tls' | 'userAgent' | 'speed'>> & Pick<HttpOptions, 'tls' | 'userAgent'>;
  readonly speed: SpeedLimits;
  readonly #agents = new Map<string, Promise<http.Agent>>();
  #streamed: StreamedGets | undefined;

  constructor(opts: HttpOptions = {}) {
    this.#opts = {
      timeoutMs: opts.timeoutMs ?? 30_000,
      retries: opts.retries ?? 4,
      backoffBaseMs: opts.backoffBaseMs ?? 200,
      backoffMaxMs: opts.backoffMaxMs ?? 5_000,
      retryAfterMaxMs: opts.retryAfterMaxMs ?? 60_000,
      tls: opts.tls,
      userAgent: opts.userAgent ?? 'tiu',
    };
    this.speed = speedLimits(opts.speed);
  }

  #agent(url: URL): Promise<http.Agent> {
    const key = `${url.protocol}//${url.host}`;
    let a = this.#agents.get(key);
    if (!a) {
      a = (async () => {
        if (url.protocol === 'http:') return new (httpModule().Agent)({ keepAlive: true, maxSockets: 8 });
        const https = httpsModule();
        const { rootCertificates } = process.getBuiltinModule('node:tls');
        const tls = this.#opts.tls ? await this.#opts.tls(url.host) : { verify: true };
        return new https.Agent({
          keepAlive: true,
          maxSockets: 8,
          rejectUnauthorized: tls.verify,
          ...(tls.ca?.length ? { ca: [...rootCertificates, ...tls.ca.map((b) => b.toString())] } : {}),
          ...(tls.cert && tls.key ? { cert: tls.cert, key: tls.key } : {}),
        });
      })();
      this.#agents.set(key, a);
    }
    return a;
  }

  /** Close idle sockets (tests; a process that is done). */
  async close(): Promise<void> {
    for (const a of this.#agents.values()) (await a).destroy();
    this.#agents.clear();
    this.#streamed?.close();
  }

  /**
   * One request (with retries and redirects). A GET or HEAD without a body goes through
   * requestStreamed(): a pull never loads node:http, and no request reads its body through
   * a Buffer per socket read.
   */
  async request(req: HttpRequest): Promise<HttpResponse<ResponseBody>> {
    if (req.body === undefined && (req.method === 'GET' || req.method === 'HEAD')) {
      return this.requestStreamed({ ...req, method: req.method });
    }
    return this.#loop(req, (method, url, headers) =>
      this.#once(method, url, headers, req.body, req.signal, { what: req.what ?? `${method} ${url.pathname}`, expectedBytes: req.expectedBytes }),
    );
  }

  /**
   * A GET (or HEAD) whose body is read into the caller's buffers (streamed-get.ts: no Buffer per
   * socket read): blob downloads and Range GETs. Retries, redirects and the log line as request().
   */
  async requestStreamed(req: Omit<HttpRequest, 'body' | 'method'> & { method?: 'GET' | 'HEAD' }): Promise<HttpResponse<StreamedBody>> {
    this.#streamed ??= new StreamedGets({
      timeoutMs: this.#opts.timeoutMs,
      userAgent: this.#opts.userAgent ?? 'tiu',
      tls: this.#opts.tls,
      speed: this.speed,
    });
    const streamed = this.#streamed;
    return this.#loop({ ...req, method: req.method ?? 'GET' }, async (method, url, headers) => {
      const r = await streamed.request({
        url,
        method: method === 'HEAD' ? 'HEAD' : 'GET',
        headers,
        signal: req.signal,
        what: req.what ?? `${method} ${url.pathname}`,
        expectedBytes: req.expectedBytes,
      });
      return { ...r, url };
    });
  }

  /** Connections opened by requestStreamed() (tests check that they are kept alive). */
  get streamedConnections(): number {
    return this.#streamed?.connectionsOpened ?? 0;
  }

  async #loop<R extends HttpResponse<ResponseBody>>(
    req: HttpRequest,
    once: (method: string, url: URL, headers: Record<string, string>) => Promise<R>,
  ): Promise<R> {
    const replayable = !req.noRetry && (req.body === undefined || Buffer.isBuffer(req.body));
    const retries = replayable ? this.#opts.retries : 0;
    let url = req.url;
    let headers = { ...req.headers };
    let method = req.method;
    let redirects = 0;
    for (let attempt = 0; ; attempt++) {
      if (req.signal?.aborted) throw new AbortedError(`${req.method} ${hostOf(url)}`);
      let res: R;
      try {
        res = await once(method, url, headers);
      } catch (e) {
        if (e instanceof TiuError) throw e;
        if (req.signal?.aborted || (e instanceof Error && e.name === 'AbortError')) throw new AbortedError(`${req.method} ${hostOf(url)}`);
        if (isTlsFailure(e)) {
          const c = errCode(e);
          throw new TlsError(url.host, e instanceof Error ? e.message : String(e), !(c.startsWith('ERR_SSL') || c === 'EPROTO'));
        }
        logger(`http ${method} ${url.origin}${url.pathname} failed: ${errCode(e) || (e instanceof Error ? e.message : String(e))}`);
        if (isConnectionFailure(e) && attempt < retries) {
          await this.#sleep(backoffMs(attempt, this.#opts.backoffBaseMs, this.#opts.backoffMaxMs), req);
          continue;
        }
        const msg = e instanceof Error ? `${errCode(e) || e.name}: ${e.message}` : String(e);
        throw new UnreachableError(url.host, msg, errCode(e) === 'TIMEOUT' ? 'REGISTRY_TIMEOUT' : 'REGISTRY_UNREACHABLE');
      }
      const s = res.status;
      logger(`http ${method} ${url.origin}${url.pathname} -> ${s}${attempt > 0 ? ` (attempt ${attempt + 1})` : ''}`);
      if (req.followRedirects && [301, 302, 303, 307, 308].includes(s) && res.headers.location && redirects < 5) {
        res.body.resume();
        const next = new URL(res.headers.location, url);
        if (next.host !== url.host) {
          headers = Object.fromEntries(Object.entries(headers).filter(([k]) => k.toLowerCase() !== 'authorization'));
        }
        if (s === 303 && method !== 'HEAD') method = 'GET';
        url = next;
        redirects++;
        attempt--;
        continue;
      }
      if ((s === 429 || (s >= 500 && s !== 501 && s !== 505)) && attempt < retries) {
        let wait = backoffMs(attempt, this.#opts.backoffBaseMs, this.#opts.backoffMaxMs);
        if (s === 429 || s === 503) {
          const ra = parseRetryAfter(headerOne(res.headers['retry-after']));
          if (ra !== undefined) {
            if (ra > this.#opts.retryAfterMaxMs) return res;
            wait = ra;
          }
        }
        res.body.resume();
        await this.#sleep(wait, req);
        continue;
      }
      return res;
    }
  }

  async #sleep(ms: number, req: HttpRequest): Promise<void> {
    try {
      await delay(ms, undefined, req.signal ? { signal: req.signal } : {});
    } catch {
      throw new AbortedError(`${req.method} ${hostOf(req.url)}`);
    }
  }

  async #once(method: string, url: URL, headers: Record<string, string>, body: Buffer | Readable | BodyWriter | undefined, signal: AbortSignal | undefined, o: { what: string; expectedBytes: number | undefined }): Promise<HttpResponse> {
    const agent = await this.#agent(url);
    const mod = url.protocol === 'https:' ? httpsModule() : httpModule();
    const h: Record<string, string> = { 'user-agent': this.#opts.userAgent ?? 'tiu', ...headers };
    if (Buffer.isBuffer(body)) h['content-length'] = String(body.length);
    return new Promise<HttpResponse>((resolve, reject) => {
      const r = mod.request(url, { method, headers: h, agent, ...(signal ? { signal } : {}) }, (res) => {
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: res, url });
      });
      watchSpeed(r, this.speed, url.host, o.what, o.expectedBytes);
      r.setTimeout(this.#opts.timeoutMs, () => r.destroy(new SocketTimeout(`no data for ${this.#opts.timeoutMs} ms`)));
      r.on('error', reject);
      if (body === undefined) r.end();
      else if (Buffer.isBuffer(body)) r.end(body);
      else if (typeof body === 'function') {
        body(r).then(
          () => r.end(),
          (e: unknown) => r.destroy(e instanceof Error ? e : new Error(String(e))),
        );
      } else {
        body.on('error', (e) => r.destroy(e));
        body.pipe(r);
      }
    });
  }
}

/**
 * The minimum-throughput rule and the deadline on one request, from its start to the end of its
 * response body: the request (or, once it answered, its body) is destroyed with
 * REGISTRY_TOO_SLOW. Bytes are counted on the socket (request and response both: an upload
 * that creeps is as stuck as a download). A reader that is behind (the body's buffer full)
 * restarts the window: then tiu is slow, not the registry.
 */
function watchSpeed(r: http.ClientRequest, l: SpeedLimits, host: string, what: string, expectedBytes: number | undefined): void {
  const deadline = deadlineMs(l, expectedBytes);
  const ruleOn = l.minBytesPerSec > 0 && l.speedTimeMs > 0;
  if (!ruleOn && !Number.isFinite(deadline)) return;
  const started = Date.now();
  let res: IncomingMessage | undefined;
  let sock: Socket | undefined;
  const moved = (): number => (sock ? sock.bytesRead + sock.bytesWritten : 0);
  let base = 0;
  const window = new SpeedWindow(l, started, 0);
  const fail = (why: string): void => {
    stop();
    const err = new TooSlowError(host, what, why);
    if (res && !res.complete) res.destroy(err);
    else r.destroy(err);
  };
  const tick = (): void => {
    if (res?.complete) return stop();
    const now = Date.now();
    if (now - started > deadline) return fail(`no answer within the deadline of ${Math.round(deadline / 1000)} s (request-deadline, TIU_REQUEST_DEADLINE)`);
    const waiting = !res || res.readableLength < res.readableHighWaterMark;
    const slow = window.sample(now, moved() - base, waiting);
    if (slow !== undefined) fail(`${slow} bytes in the last ${Math.round(l.speedTimeMs / 1000)} s, below the minimum of ${rate(l.minBytesPerSec)} (min-speed and speed-time, TIU_MIN_SPEED and TIU_SPEED_TIME)`);
  };
  const period = Math.max(50, Math.min(1000, ruleOn ? l.speedTimeMs / 4 : 1000, Number.isFinite(deadline) ? deadline / 4 : 1000));
  const timer = setInterval(tick, period);
  timer.unref();
  function stop(): void {
    clearInterval(timer);
  }
  r.on('socket', (s) => {
    sock = s;
    base = s.bytesRead + s.bytesWritten;
  });
  r.on('response', (x: IncomingMessage) => {
    res = x;
    x.on('end', stop);
    x.on('close', stop);
    x.on('error', stop);
  });
  r.on('error', stop);
  r.on('close', () => {
    if (!res) stop();
  });
}

function hostOf(u: URL): string {
  return u.host;
}

export function headerOne(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

/** Read a whole body, failing with `tooLarge(size)` past `limit` bytes (checked before and while reading). */
export async function readBody(res: HttpResponse<ResponseBody>, limit: number, tooLarge: (size: number) => Error): Promise<Buffer> {
  const declared = Number(res.headers['content-length']);
  if (Number.isFinite(declared) && declared > limit) {
    res.body.destroy();
    throw tooLarge(declared);
  }
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of res.body) {
    const b = c as Buffer;
    n += b.length;
    if (n > limit) {
      res.body.destroy();
      throw tooLarge(n);
    }
    parts.push(b);
  }
  return Buffer.concat(parts);
}

/** A short, single-line excerpt of an error body for messages. */
export async function bodyExcerpt(res: HttpResponse<ResponseBody>): Promise<string> {
  try {
    const b = await readBody(res, 16 * 1024, () => new Error('large'));
    const text = b.toString('utf8');
    try {
      const j = JSON.parse(text) as { errors?: { code?: string; message?: string }[] };
      if (Array.isArray(j.errors) && j.errors.length) {
        return j.errors.map((e) => [e.code, e.message].filter(Boolean).join(' ')).join('; ').slice(0, 300);
      }
    } catch {
      /* not JSON */
    }
    return text.replace(/\s+/g, ' ').trim().slice(0, 200);
  } catch {
    return '';
  }
}
