/**
 * GET requests whose body is read into the consumer's buffers (blob downloads and Range GETs),
 * on net/tls sockets of our own instead of node:http.
 *
 * Why: node:http reads every socket chunk into a new 64 KiB Buffer and its parser copies each
 * body piece into another new Buffer, so a 200 MiB download leaves ~400 MiB of short-lived
 * Buffers that V8 frees on its own schedule (tens of MiB of dead memory at any moment). Here
 * each connection has one read buffer (`onread`), the socket is paused while the consumer has
 * not taken what it holds, and read(into) copies body bytes from it into the consumer's buffer
 * (a RingWriter slot, a span): no allocation per read.
 *
 * Connections are kept alive per origin (a file-level update makes many Range GETs to one host)
 * and unref'd while idle. The retry, redirect and logging rules are HttpClient's (http.ts); the
 * idle timeout, AbortSignal and the speed rule/deadline (speed.ts) are applied here, over the
 * request and its body.
 */
import type { Socket } from 'node:net';
import type { ConnectionOptions, TLSSocket } from 'node:tls';
import { BadResponseError, ResponseParser, type ResponseHead } from './response-parser.ts';
import { TooSlowError } from './errors.ts';
import { deadlineMs, rate, SpeedWindow, type SpeedLimits } from './speed.ts';
import type { TlsSettings } from './tls-settings.ts';

/** Bytes per connection read buffer. */
export const READ_BUFFER_BYTES = 64 * 1024;
/** Idle connections kept per origin. */
const MAX_IDLE_PER_ORIGIN = 8;
/** An idle connection is closed after this long. */
const IDLE_KEEP_MS = 30_000;

export interface StreamedGetOptions {
  timeoutMs: number;
  userAgent: string;
  tls: ((hostport: string) => Promise<TlsSettings>) | undefined;
  speed: SpeedLimits;
}

export interface StreamedGetRequest {
  url: URL;
  method: 'GET' | 'HEAD';
  headers: Record<string, string>;
  signal: AbortSignal | undefined;
  what: string;
  expectedBytes: number | undefined;
}

/** A failure of the connection itself, classified like node's (http.ts isConnectionFailure). */
class ConnectionError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.code = code;
  }
}

/** No bytes for the idle timeout: the same code as http.ts's, which the retry loop maps to REGISTRY_TIMEOUT. */
class IdleTimeout extends Error {
  readonly code = 'TIMEOUT';
}

class AbortError extends Error {
  override readonly name = 'AbortError';
}

/** One socket with its one read buffer and response parser. */
class Connection {
  readonly key: string;
  readonly buf = Buffer.allocUnsafe(READ_BUFFER_BYTES);
  readonly parser = new ResponseParser();
  socket!: Socket | TLSSocket;
  /** Unconsumed bytes of `buf`: [at, end). */
  at = 0;
  end = 0;
  /** Bytes read from the socket in all. */
  bytesRead = 0;
  lastActivity = Date.now();
  /** The socket ended (FIN) or closed. */
  ended = false;
  failure: Error | undefined;
  /** A reader waiting for bytes or for the end. */
  waiter: (() => void) | undefined;
  /** The connection has answered a request before (a failure before the head is a stale keep-alive). */
  reused = false;
  idleTimer: NodeJS.Timeout | undefined;
  /** When an idle connection sees bytes or a close, it leaves the pool by this. */
  onIdleEvent: (() => void) | undefined;

  constructor(key: string) {
    this.key = key;
  }

  get pending(): boolean {
    return this.at < this.end;
  }

  /** The socket's onread: the bytes stay in `buf` until consumed; the socket is paused meanwhile. */
  onRead = (nread: number): boolean => {
    if (this.pending) {
      // onread only runs while the socket flows, which it does only once `buf` is drained.
      this.destroy(new ConnectionError('EPROTO', 'socket read while its buffer was still in use'));
      return false;
    }
    this.at = 0;
    this.end = nread;
    this.bytesRead += nread;
    this.lastActivity = Date.now();
    if (this.onIdleEvent) {
      this.onIdleEvent();
      return false;
    }

    this.wake();
    if (!this.pending) return true;
    // Returning false stops the handle's reads but leaves the stream flowing; pause() makes
    // the later resume() start them again.
    this.socket.pause();
    return false;
  };

  wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  resumeIfDrained(): void {
    if (!this.pending && !this.ended && !this.failure && this.socket.isPaused()) this.socket.resume();
  }

  destroy(e: Error): void {
    this.failure ??= e;
    this.socket.destroy();
    this.wake();
  }
}

/** The body of a response, read into the caller's buffers (a BlobReader). */
export class StreamedBody {
  readonly #conn: Connection;
  readonly #finish: (reusable: boolean) => void;
  #closed = false;

  constructor(conn: Connection, finish: (reusable: boolean) => void) {
    this.#conn = conn;
    this.#finish = finish;
  }

  /** Body bytes so far. */
  get bytes(): number {
    return this.#conn.parser.bodyBytes;
  }

  /** Content-Length of the answer, when it had one. */
  get declaredLength(): number | undefined {
    return this.#conn.parser.declaredLength;
  }

  /** The next body bytes copied into `into`; 0 at the end of the body. */
  async read(into: Buffer): Promise<number> {
    if (into.length === 0) throw new RangeError('StreamedBody.read() needs room for at least one byte');
    if (this.#closed) return 0;
    try {
      return await this.#read(into);
    } catch (e) {
      this.destroy(e instanceof Error ? e : new Error(String(e)));
      throw e;
    }
  }

  async #read(into: Buffer): Promise<number> {
    const c = this.#conn;
    const p = c.parser;
    for (;;) {
      let copied = 0;
      while (c.pending && !p.done && copied < into.length) {
        c.at = p.feed(c.buf, c.at, c.end, into.length - copied);
        if (p.pieceEnd > p.pieceStart) {
          c.buf.copy(into, copied, p.pieceStart, p.pieceEnd);
          copied += p.pieceEnd - p.pieceStart;
        }
      }
      if (copied > 0) {
        if (!p.done) c.resumeIfDrained();
        return copied;
      }
      if (p.done) {
        this.#end();
        return 0;
      }
      if (c.failure) throw c.failure;
      if (c.ended && !c.pending) {
        if (p.closed()) continue;
        const declared = p.declaredLength !== undefined ? ` of ${p.declaredLength}` : '';
        throw new ConnectionError('ECONNRESET', `connection closed after ${p.bodyBytes}${declared} body bytes`);
      }
      c.resumeIfDrained();
      await new Promise<void>((resolve) => (c.waiter = resolve));
    }
  }

  #end(): void {
    if (this.#closed) return;
    this.#closed = true;
    const c = this.#conn;
    // Bytes past the end of the body on the same read: the body was longer than it said.
    if (c.pending) {
      const e = new BadResponseError(c.key, `${c.end - c.at} bytes after the end of the body`);
      c.destroy(e);
      this.#finish(false);
      throw e;
    }
    this.#finish(true);
  }

  /** Stop reading; the connection is closed unless the body was read to its end. */
  async close(): Promise<void> {
    this.destroy();
    return Promise.resolve();
  }

  /** Give up the body (an error answer, a redirect): the connection is closed unless it was done. */
  resume(): void {
    this.destroy();
  }

  destroy(e?: Error): void {
    if (this.#closed) return;
    this.#closed = true;
    const c = this.#conn;
    if (c.parser.done && !c.pending && !c.failure) return this.#finish(true);
    c.destroy(e ?? new AbortError('body closed before its end'));
    this.#finish(false);
  }

  /** Copies of the body (small error bodies: readBody/bodyExcerpt). */
  async *[Symbol.asyncIterator](): AsyncGenerator<Buffer> {
    const b = Buffer.allocUnsafe(16 * 1024);
    for (;;) {
      const n = await this.read(b);
      if (n === 0) return;
      yield Buffer.from(b.subarray(0, n));
    }
  }
}

export interface StreamedResponse extends ResponseHead {
  body: StreamedBody;
}

export class StreamedGets {
  readonly #o: StreamedGetOptions;
  readonly #idle = new Map<string, Connection[]>();
  readonly #tls = new Map<string, Promise<TlsSettings>>();
  /** Connections opened (tests check keep-alive by it). */
  connectionsOpened = 0;

  constructor(o: StreamedGetOptions) {
    this.#o = o;
  }

  /** Close idle connections. */
  close(): void {
    for (const list of this.#idle.values()) for (const c of list) this.#drop(c);
    this.#idle.clear();
  }

  async request(req: StreamedGetRequest): Promise<StreamedResponse> {
    const key = `${req.url.protocol}//${req.url.host}`;
    for (;;) {
      const conn = this.#takeIdle(key) ?? (await this.#connect(req.url, key));
      try {
        return await this.#exchange(conn, req);
      } catch (e) {
        // A kept-alive connection the server closed meanwhile: once more on a new one.
        if (conn.reused && conn.parser.head === undefined && conn.bytesRead === 0 && !(e instanceof TooSlowError) && !req.signal?.aborted) continue;
        throw e;
      }
    }
  }

  #takeIdle(key: string): Connection | undefined {
    const list = this.#idle.get(key);
    for (let c = list?.pop(); c; c = list?.pop()) {
      clearTimeout(c.idleTimer);
      c.onIdleEvent = undefined;
      if (c.failure || c.ended || c.socket.destroyed) continue;
      c.socket.ref();
      c.reused = true;
      c.bytesRead = 0;
      return c;
    }
    return undefined;
  }

  #release(c: Connection, reusable: boolean, keepAlive: boolean): void {
    if (!reusable || !keepAlive || c.failure || c.ended || c.socket.destroyed) return this.#drop(c);
    const list = this.#idle.get(c.key) ?? [];
    if (list.length >= MAX_IDLE_PER_ORIGIN) return this.#drop(c);
    list.push(c);
    this.#idle.set(c.key, list);
    c.socket.unref();
    const leave = (): void => {
      clearTimeout(c.idleTimer);
      c.onIdleEvent = undefined;
      const i = list.indexOf(c);
      if (i >= 0) list.splice(i, 1);
      this.#drop(c);
    };
    c.onIdleEvent = leave;
    c.idleTimer = setTimeout(leave, IDLE_KEEP_MS);
    c.idleTimer.unref();
    // An idle socket must report what it reads (then it leaves the pool).
    c.socket.resume();
  }

  #drop(c: Connection): void {
    clearTimeout(c.idleTimer);
    c.socket.destroy();
  }

  async #tlsOf(host: string): Promise<TlsSettings> {
    let t = this.#tls.get(host);
    if (!t) {
      t = this.#o.tls ? this.#o.tls(host) : Promise.resolve({ verify: true });
      this.#tls.set(host, t);
    }
    return t;
  }

  async #connect(url: URL, key: string): Promise<Connection> {
    const conn = new Connection(key);
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    const port = Number(url.port || (url.protocol === 'https:' ? 443 : 80));
    const onread = { buffer: conn.buf, callback: conn.onRead };
    if (url.protocol === 'https:') {
      const t = await this.#tlsOf(url.host);
      const tls = process.getBuiltinModule('node:tls');
      const isIp = process.getBuiltinModule('node:net').isIP(host) !== 0;
      // TLSSocket takes `onread` like net.Socket, though @types/node only declares it for net.
      const options: ConnectionOptions & { onread: typeof onread } = {
        host,
        port,
        ...(isIp ? {} : { servername: host }),
        rejectUnauthorized: t.verify,
        ALPNProtocols: ['http/1.1'],
        ...(t.ca?.length ? { ca: [...tls.rootCertificates, ...t.ca.map((b) => b.toString())] } : {}),
        ...(t.cert && t.key ? { cert: t.cert, key: t.key } : {}),
        onread,
      };
      conn.socket = tls.connect(options);
    } else {
      conn.socket = process.getBuiltinModule('node:net').connect({ host, port, onread });
    }
    this.connectionsOpened++;
    const s = conn.socket;
    s.setNoDelay(true);
    s.on('end', () => {
      conn.ended = true;
      if (conn.onIdleEvent) conn.onIdleEvent();
      else conn.wake();
    });
    s.on('error', (e: Error) => {
      conn.failure ??= e;
      conn.wake();
    });
    s.on('close', () => {
      conn.ended = true;
      if (conn.onIdleEvent) conn.onIdleEvent();
      else {
        conn.failure ??= conn.parser.inBody || conn.parser.head === undefined ? new ConnectionError('ECONNRESET', 'socket hang up') : undefined;
        conn.wake();
      }
    });
    return conn;
  }

  /** Send the request on `conn` and read its head; the body is the caller's to read. */
  async #exchange(conn: Connection, req: StreamedGetRequest): Promise<StreamedResponse> {
    const { url } = req;
    const lines = [`${req.method} ${url.pathname}${url.search} HTTP/1.1`, `host: ${url.host}`, `user-agent: ${this.#o.userAgent}`];
    for (const [k, v] of Object.entries(req.headers)) {
      if (/[\r\n]/.test(k) || /[\r\n]/.test(v)) throw new TypeError(`header ${k} holds a line break`);
      lines.push(`${k}: ${v}`);
    }
    conn.parser.begin(req.method, url.host);
    conn.lastActivity = Date.now();
    const watch = this.#watch(conn, req);
    let finished = false;
    const finish = (reusable: boolean, keepAlive: boolean): void => {
      if (finished) return;
      finished = true;
      watch.stop();
      this.#release(conn, reusable, keepAlive);
    };
    try {
      conn.socket.write(`${lines.join('\r\n')}\r\n\r\n`, 'latin1');
      const p = conn.parser;
      for (;;) {
        if (conn.failure) throw conn.failure;
        while (conn.pending && p.head === undefined) conn.at = p.feed(conn.buf, conn.at, conn.end, 0);
        if (p.head) break;
        if (conn.ended) throw new ConnectionError('ECONNRESET', 'socket hang up');
        conn.resumeIfDrained();
        await new Promise<void>((resolve) => (conn.waiter = resolve));
      }
      const head = p.head;
      const keepAlive = !/\bclose\b/i.test(String(head.headers.connection ?? '')) && p.framing !== 'close';
      const body = new StreamedBody(conn, (reusable) => finish(reusable, keepAlive));
      return { status: head.status, headers: head.headers, body };
    } catch (e) {
      conn.destroy(e instanceof Error ? e : new Error(String(e)));
      finish(false, false);
      throw e;
    }
  }

  /**
   * The idle timeout, the AbortSignal and the speed rule/deadline over one request and its body:
   * each ends the connection with its error, which the next read (or the head's wait) throws.
   */
  #watch(conn: Connection, req: StreamedGetRequest): { stop: () => void } {
    const l = this.#o.speed;
    const started = Date.now();
    const deadline = deadlineMs(l, req.expectedBytes);
    const ruleOn = l.minBytesPerSec > 0 && l.speedTimeMs > 0;
    const window = new SpeedWindow(l, started, 0);
    const timeoutMs = this.#o.timeoutMs;
    const host = req.url.host;
    const tick = (): void => {
      const now = Date.now();
      if (now - started > deadline) {
        return conn.destroy(new TooSlowError(host, req.what, `no answer within the deadline of ${Math.round(deadline / 1000)} s (request-deadline, TIU_REQUEST_DEADLINE)`));
      }
      const waiting = !conn.pending;
      if (waiting && now - conn.lastActivity > timeoutMs) {
        return conn.destroy(new IdleTimeout(`no data for ${timeoutMs} ms`));
      }
      if (!waiting) conn.lastActivity = now;
      const slow = window.sample(now, conn.bytesRead, waiting);
      if (slow !== undefined) {
        conn.destroy(new TooSlowError(host, req.what, `${slow} bytes in the last ${Math.round(l.speedTimeMs / 1000)} s, below the minimum of ${rate(l.minBytesPerSec)} (min-speed and speed-time, TIU_MIN_SPEED and TIU_SPEED_TIME)`));
      }
    };
    const period = Math.max(50, Math.min(1000, timeoutMs / 4, ruleOn ? l.speedTimeMs / 4 : 1000, Number.isFinite(deadline) ? deadline / 4 : 1000));
    const timer = setInterval(tick, period);
    timer.unref();
    const onAbort = (): void => conn.destroy(new AbortError(`${req.what} aborted`));
    req.signal?.addEventListener('abort', onAbort, { once: true });
    if (req.signal?.aborted) onAbort();
    function stop(): void {
      clearInterval(timer);
      req.signal?.removeEventListener('abort', onAbort);
    }
    return { stop };
  }
}
