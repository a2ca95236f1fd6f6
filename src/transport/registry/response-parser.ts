/**
 * The framing of one HTTP/1.1 response, as a pure state machine over the bytes of a connection:
 * the status line and headers (bounded), then the body by Content-Length, by
 * `Transfer-Encoding: chunked` or up to the connection's close. It never copies body bytes: a
 * feed() reports where the body piece lies in the bytes it was given, so the caller copies it
 * straight from its socket buffer to its consumer.
 *
 * A registry, and the storage it redirects to, is untrusted: whatever HTTP allows two readings
 * of (Content-Length with Transfer-Encoding, differing Content-Lengths, folded or malformed
 * header lines, a bad chunk size) is refused with REGISTRY_BAD_RESPONSE instead of guessed at.
 */
import type { IncomingHttpHeaders } from 'node:http';
import { RegistryError } from './errors.ts';

/** Status line and headers together; node:http's default is 16 KiB. */
export const MAX_HEAD_BYTES = 32 * 1024;
/** A chunk-size line or one trailer line. */
const MAX_LINE_BYTES = 1024;
/** All trailer lines of a chunked body. */
const MAX_TRAILER_BYTES = 16 * 1024;
/** 13 hex digits: below 2^53, so a chunk size stays an exact number. */
const MAX_CHUNK_HEX_DIGITS = 13;

export class BadResponseError extends RegistryError {
  constructor(host: string, why: string) {
    super('REGISTRY_BAD_RESPONSE', `${host} sent an HTTP response tiu refuses: ${why}`, { host });
  }
}

export interface ResponseHead {
  status: number;
  /** Lower-case names; repeated headers joined with ", " (set-cookie: a list), as node:http does. */
  headers: IncomingHttpHeaders;
}

export type Framing = 'length' | 'chunked' | 'close' | 'none';

type State = 'head' | 'length' | 'close' | 'size' | 'data' | 'data-cr' | 'data-lf' | 'trailer' | 'done';

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
// Field values: visible ASCII, obs-text, space and tab; no other control characters.
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;
const CR = 13;
const LF = 10;

export class ResponseParser {
  readonly #headBuf = Buffer.allocUnsafe(MAX_HEAD_BYTES);
  #headLen = 0;
  #state: State = 'done';
  #method = 'GET';
  #host = '';
  #left = 0;
  #line = '';
  #trailerBytes = 0;
  head: ResponseHead | undefined;
  framing: Framing = 'none';
  /** The body piece found by the last feed(): [pieceStart, pieceEnd) of the bytes it was given. */
  pieceStart = 0;
  pieceEnd = 0;
  /** Body bytes so far. */
  bodyBytes = 0;
  /** Content-Length, when the body is framed by one. */
  declaredLength: number | undefined;

  /** Start reading the answer to a `method` request sent to `host` (named in errors). */
  begin(method: string, host: string): void {
    this.#method = method;
    this.#host = host;
    this.#state = 'head';
    this.#headLen = 0;
    this.#left = 0;
    this.#line = '';
    this.#trailerBytes = 0;
    this.head = undefined;
    this.framing = 'none';
    this.bodyBytes = 0;
    this.declaredLength = undefined;
    this.pieceStart = this.pieceEnd = 0;
  }

  get done(): boolean {
    return this.#state === 'done';
  }

  /** The body is in progress (the head is read, the end not yet). */
  get inBody(): boolean {
    return this.head !== undefined && this.#state !== 'done';
  }

  /**
   * Take framing bytes of `bytes[at, end)` and at most `room` body bytes (one piece, reported in
   * pieceStart/pieceEnd); returns where it stopped: at `end`, after a body piece, or at the end
   * of the response (bytes after it are not this response's).
   */
  feed(bytes: Buffer, at: number, end: number, room: number): number {
    this.pieceStart = this.pieceEnd = at;
    while (at < end) {
      switch (this.#state) {
        case 'head':
          at = this.#feedHead(bytes, at, end);
          break;
        case 'length':
        case 'data':
        case 'close': {
          const n = Math.min(end - at, room, this.#state === 'close' ? Infinity : this.#left);
          if (n === 0) return at;
          this.pieceStart = at;
          this.pieceEnd = at + n;
          this.bodyBytes += n;
          if (this.#state !== 'close') {
            this.#left -= n;
            if (this.#left === 0) this.#state = this.#state === 'length' ? 'done' : 'data-cr';
          }
          return at + n;
        }
        case 'data-cr':
        case 'data-lf':
          if (bytes[at] !== (this.#state === 'data-cr' ? CR : LF)) this.#fail('a chunk is not followed by CRLF');
          this.#state = this.#state === 'data-cr' ? 'data-lf' : 'size';
          at++;
          break;
        case 'size':
        case 'trailer': {
          const next = this.#feedLine(bytes, at, end);
          if (this.#state === 'trailer') {
            this.#trailerBytes += next - at;
            if (this.#trailerBytes > MAX_TRAILER_BYTES) this.#fail(`trailers over ${MAX_TRAILER_BYTES} bytes`);
          }
          at = next;
          const line = this.#takeLine();
          if (line !== undefined) this.#lineDone(line);
          break;
        }
        case 'done':
          return at;
      }
    }
    return at;
  }

  /** The connection closed: the end of a close-delimited body; any other unfinished state is a cut. */
  closed(): boolean {
    if (this.#state === 'close') {
      this.#state = 'done';
      return true;
    }
    return this.#state === 'done';
  }

  #fail(why: string): never {
    this.#state = 'done';
    throw new BadResponseError(this.#host, why);
  }

  #feedHead(bytes: Buffer, at: number, end: number): number {
    const before = this.#headLen;
    const n = Math.min(end - at, MAX_HEAD_BYTES - before);
    bytes.copy(this.#headBuf, before, at, at + n);
    this.#headLen += n;
    const found = this.#headBuf.subarray(0, this.#headLen).indexOf('\r\n\r\n', Math.max(0, before - 3), 'latin1');
    if (found < 0) {
      if (this.#headLen >= MAX_HEAD_BYTES) this.#fail(`status line and headers over ${MAX_HEAD_BYTES} bytes`);
      return at + n;
    }
    const used = found + 4 - before;
    this.#parseHead(this.#headBuf.toString('latin1', 0, found));
    return at + used;
  }

  #parseHead(text: string): void {
    const lines = text.split('\r\n');
    const m = /^HTTP\/1\.[01] ([1-5]\d\d)(?: [^\r\n]*)?$/.exec(lines[0] ?? '');
    if (!m) this.#fail(`status line ${JSON.stringify((lines[0] ?? '').slice(0, 80))}`);
    const status = Number(m[1]);
    const headers: Record<string, string | string[]> = {};
    const lengths: string[] = [];
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(':');
      const name = colon > 0 ? line.slice(0, colon) : '';
      if (!TOKEN.test(name)) this.#fail(`header line ${JSON.stringify(line.slice(0, 80))}`);
      const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, '');
      if (!FIELD_VALUE.test(value)) this.#fail(`control characters in header ${name}`);
      const key = name.toLowerCase();
      if (key === 'content-length') lengths.push(...value.split(',').map((v) => v.trim()));
      const had = headers[key];
      if (key === 'set-cookie') headers[key] = [...((had as string[] | undefined) ?? []), value];
      else headers[key] = had === undefined ? value : `${had as string}, ${value}`;
    }
    if (status >= 100 && status < 200) {
      // An interim answer (100 Continue, 103 Early Hints): the real one follows.
      if (status === 101) this.#fail('101 Switching Protocols to a plain request');
      this.#headLen = 0;
      return;
    }
    this.head = { status, headers };
    this.#frame(status, headers['transfer-encoding'] as string | undefined, lengths);
  }

  #frame(status: number, te: string | undefined, lengths: string[]): void {
    if (this.#method === 'HEAD' || status === 204 || status === 304) {
      this.framing = 'none';
      this.#state = 'done';
      return;
    }
    if (te !== undefined) {
      if (lengths.length) this.#fail('both Transfer-Encoding and Content-Length');
      if (te.toLowerCase() !== 'chunked') this.#fail(`Transfer-Encoding ${JSON.stringify(te.slice(0, 80))}`);
      this.framing = 'chunked';
      this.#state = 'size';
      return;
    }
    if (lengths.length) {
      const first = lengths[0]!;
      if (!/^\d{1,15}$/.test(first) || lengths.some((l) => l !== first)) {
        this.#fail(`Content-Length ${JSON.stringify(lengths.join(', ').slice(0, 80))}`);
      }
      this.framing = 'length';
      this.declaredLength = this.#left = Number(first);
      this.#state = this.#left === 0 ? 'done' : 'length';
      return;
    }
    this.framing = 'close';
    this.#state = 'close';
  }

  /** Append bytes up to and including a LF to the line being read; returns where it stopped. */
  #feedLine(bytes: Buffer, at: number, end: number): number {
    const lf = bytes.indexOf(LF, at);
    const stop = lf < 0 || lf >= end ? end : lf + 1;
    if (this.#line.length + (stop - at) > MAX_LINE_BYTES) {
      this.#fail(this.#state === 'size' ? `a chunk-size line over ${MAX_LINE_BYTES} bytes` : `a trailer line over ${MAX_LINE_BYTES} bytes`);
    }
    this.#line += bytes.toString('latin1', at, stop);
    return stop;
  }

  /** The finished line without its CRLF, or undefined while it goes on. */
  #takeLine(): string | undefined {
    if (!this.#line.endsWith('\n')) return undefined;
    const line = this.#line;
    this.#line = '';
    if (!line.endsWith('\r\n') || line.slice(0, -2).includes('\r')) this.#fail('a line not ended by CRLF in a chunked body');
    return line.slice(0, -2);
  }

  #lineDone(line: string): void {
    if (this.#state === 'trailer') {
      if (line === '') this.#state = 'done';
      return;
    }
    const m = /^0*([0-9a-fA-F]*)[ \t]*(?:;[^\r\n]*)?$/.exec(line);
    if (!m || !/^[0-9a-fA-F]/.test(line)) this.#fail(`chunk size ${JSON.stringify(line.slice(0, 40))}`);
    const hex = m[1]!;
    if (hex.length > MAX_CHUNK_HEX_DIGITS) this.#fail(`chunk size ${JSON.stringify(line.slice(0, 40))} overflows`);
    const size = hex === '' ? 0 : parseInt(hex, 16);
    if (size === 0) {
      this.#state = 'trailer';
      return;
    }
    this.#left = size;
    this.#state = 'data';
  }
}
