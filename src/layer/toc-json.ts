/**
 * The TOC's JSON, with names as bytes. JSON text is UTF-8, but tar names are bytes, and the
 * TOC must carry them exactly (containers/storage checks every TOC entry against the tar header
 * tar-split holds, byte for byte). So, as containers/storage's own reader does:
 *
 * - Writing: every string is a binary string (one char per byte) and goes out as those raw
 *   bytes; only `"`, `\` and control characters below 0x20 are escaped. A valid UTF-8 name is
 *   plain JSON; a name that is not UTF-8 keeps its bytes inside the string.
 * - Reading: raw bytes inside a string stay those bytes; an escape `\uXXXX` becomes the UTF-8
 *   bytes of that code point, a surrogate pair is joined into one code point, and a lone
 *   surrogate becomes U+FFFD. So `"\u00e9"` and the raw bytes C3 A9 read as the same name.
 *
 * Reading works on the bytes directly, one value at a time: a TOC of a Debian tree is tens of
 * MB of JSON, and the device reads its entries one by one (readTocJson) instead of holding the
 * document as text and as a parsed array next to the entries made from it.
 */

/** JSON text of a TOC whose strings are binary strings (JSON.stringify of latin1 text escapes exactly `"`, `\` and controls). */
export function encodeTocJson(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value), 'latin1');
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;

/** The UTF-8 bytes of a code point, as a binary string. */
function utf8Chars(cp: number): string {
  if (cp < 0x80) return String.fromCharCode(cp);
  if (cp < 0x800) return String.fromCharCode(0xc0 | (cp >> 6), 0x80 | (cp & 63));
  if (cp < 0x10000) return String.fromCharCode(0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 63), 0x80 | (cp & 63));
  return String.fromCharCode(0xf0 | (cp >> 18), 0x80 | ((cp >> 12) & 63), 0x80 | ((cp >> 6) & 63), 0x80 | (cp & 63));
}

const SIMPLE_ESCAPES: Record<number, string> = {
  0x22: '"',
  0x5c: '\\',
  0x2f: '/',
  0x62: '\b',
  0x66: '\f',
  0x6e: '\n',
  0x72: '\r',
  0x74: '\t',
};

/** A member of a parsed object as JSON.parse sets it: an own property even for "__proto__", the last of duplicate keys wins. */
function setMember(o: Record<string, unknown>, k: string, v: unknown): void {
  if (k === '__proto__')
    Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
  else o[k] = v;
}

/** Thrown by a reader that is not final when a value runs past its bytes: the caller waits for more. */
const INCOMPLETE = new Error('the JSON goes on in bytes not read yet');

const NUMBER = /^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?$/;

/**
 * Keys the reader returns as these constants when their bytes match (TocJsonReader.knownKey):
 * those of a TOC, its entries (containers/storage's zstd:chunked fields) and of tiu's own.
 * Any other key is read as a string, as before.
 */
const KEYS = [
  'version',
  'entries',
  'type',
  'name',
  'linkName',
  'mode',
  'size',
  'uid',
  'gid',
  'userName',
  'groupName',
  'modtime',
  'accesstime',
  'changetime',
  'devMajor',
  'devMinor',
  'xattrs',
  'digest',
  'offset',
  'endOffset',
  'chunkSize',
  'chunkOffset',
  'chunkDigest',
  'chunkType',
];
const KEYS_BY_LENGTH: (string[] | undefined)[] = [];
for (const k of KEYS) (KEYS_BY_LENGTH[k.length] ??= []).push(k);
/** How far a known key's closing quote is looked for: past the longest key, it is not one. */
const KEY_END_SEARCH = Math.max(...KEYS.map((k) => k.length)) + 1;

/**
 * Objects and arrays inside each other deeper than this are refused: a TOC nests four levels
 * (document, entries, entry, xattrs), and the reader recurses, so a hostile `[[[[…` would
 * otherwise end in a RangeError from a full stack instead of a SyntaxError naming the TOC.
 */
export const MAX_JSON_DEPTH = 64;

/** A JSON reader over bytes whose strings come back as binary strings (see above). Errors are SyntaxErrors. */
class TocJsonReader {
  readonly #b: Uint8Array;
  /** `#b` as a Buffer, made once: its text is cut out by toString('latin1', from, to), no Buffer per token. */
  readonly #buf: Buffer;
  /** All of the text is here (false: more may follow, and a value cut off by the end is INCOMPLETE, not an error). */
  readonly #final: boolean;
  /** Where `bytes` start in the document (for messages). */
  readonly #base: number;
  #i = 0;
  #depth = 0;

  constructor(bytes: Uint8Array, final = true, base = 0) {
    this.#b = bytes;
    this.#buf = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
    this.#final = final;
    this.#base = base;
  }

  get pos(): number {
    return this.#i;
  }

  /** The bytes end here: an error, or, while more may follow, INCOMPLETE. */
  cutOff(why: string): never {
    if (!this.#final) throw INCOMPLETE;
    return this.fail(why);
  }

  fail(why: string): never {
    throw new SyntaxError(`${why} at byte ${this.#base + this.#i} of the JSON`);
  }

  /** Skip whitespace; the next byte (-1 at the end). */
  peek(): number {
    const b = this.#b;
    let i = this.#i;
    while (i < b.length && (b[i] === 0x20 || b[i] === 0x0a || b[i] === 0x0d || b[i] === 0x09)) i++;
    this.#i = i;
    if (i < b.length) return b[i]!;
    if (!this.#final) throw INCOMPLETE;
    return -1;
  }

  expect(ch: number): void {
    if (this.peek() !== ch) this.fail(`expected ${JSON.stringify(String.fromCharCode(ch))}`);
    this.#i++;
  }

  /** After a value: `,` (true: more follow) or the closing `close` (false). */
  more(close: number): boolean {
    const c = this.peek();
    if (c === 0x2c) {
      this.#i++;
      return true;
    }
    if (c === close) {
      this.#i++;
      return false;
    }
    return this.fail('expected "," or the end of the object or array');
  }

  /** `{` or `[` opened and immediately closed again. */
  empty(close: number): boolean {
    if (this.peek() !== close) return false;
    this.#i++;
    return true;
  }

  end(): void {
    if (this.peek() !== -1) this.fail('unexpected data after the JSON value');
  }

  value(): unknown {
    const c = this.peek();
    if (c === QUOTE) return this.string();
    if (c === 0x7b) return this.object();
    if (c === 0x5b) return this.array();
    if (c === 0x74) return this.literal('true', true);
    if (c === 0x66) return this.literal('false', false);
    if (c === 0x6e) return this.literal('null', null);
    return this.number();
  }

  /** The key of the next member of an object, its `:` consumed. */
  key(): string {
    if (this.peek() !== QUOTE) this.fail('expected a string key');
    const k = this.#knownKey() ?? this.string();
    this.expect(0x3a);
    return k;
  }

  /**
   * A key without escapes that is one of KEYS, read without making a string (a TOC repeats the
   * same eight or so keys in every entry: ~400,000 strings for a 45k-entry TOC); else undefined
   * and nothing consumed.
   */
  #knownKey(): string | undefined {
    const b = this.#b;
    const start = this.#i + 1;
    const len = KEY_END_SEARCH > b.length - start ? b.length - start : KEY_END_SEARCH;
    let end = -1;
    for (let k = 0; k < len; k++) {
      const c = b[start + k]!;
      if (c === QUOTE) {
        end = start + k;
        break;
      }
      if (c === BACKSLASH || c < 0x20) return undefined;
    }
    if (end < 0) return undefined;
    const candidates = KEYS_BY_LENGTH[end - start];
    if (!candidates) return undefined;
    outer: for (const key of candidates) {
      for (let k = 0; k < key.length; k++) if (b[start + k] !== key.charCodeAt(k)) continue outer;
      this.#i = end + 1;
      return key;
    }
    return undefined;
  }

  /** Into an object or array: refused past MAX_JSON_DEPTH. */
  #enter(): void {
    if (++this.#depth > MAX_JSON_DEPTH) this.fail(`objects and arrays nested deeper than ${MAX_JSON_DEPTH} levels`);
  }

  object(): Record<string, unknown> {
    this.expect(0x7b);
    this.#enter();
    const o: Record<string, unknown> = {};
    if (!this.empty(0x7d)) {
      do {
        const k = this.key();
        const v = this.value();
        setMember(o, k, v);
      } while (this.more(0x7d));
    }
    this.#depth--;
    return o;
  }

  array(): unknown[] {
    this.expect(0x5b);
    this.#enter();
    const a: unknown[] = [];
    if (!this.empty(0x5d)) {
      do a.push(this.value());
      while (this.more(0x5d));
    }
    this.#depth--;
    return a;
  }

  literal(word: string, v: boolean | null): boolean | null {
    const b = this.#b;
    for (let k = 0; k < word.length; k++) {
      if (this.#i + k >= b.length) this.cutOff('unexpected end of the JSON');
      if (b[this.#i + k] !== word.charCodeAt(k)) this.fail('unexpected token');
    }
    this.#i += word.length;
    return v;
  }

  number(): number {
    const b = this.#b;
    const start = this.#i;
    let i = start;
    // Digits, sign, point and exponent; the grammar is checked on the slice.
    while (
      i < b.length &&
      ((b[i]! >= 0x30 && b[i]! <= 0x39) ||
        b[i] === 0x2d ||
        b[i] === 0x2b ||
        b[i] === 0x2e ||
        b[i] === 0x65 ||
        b[i] === 0x45)
    )
      i++;
    // A number that runs to the end may go on in the next bytes.
    if (i === b.length && !this.#final) throw INCOMPLETE;
    // Most numbers of a TOC are sizes and offsets: digits alone, computed here without a string
    // (exact: at most 15 digits stay below 2^53). A leading 0 before more digits is not JSON.
    const digits = i - start;
    if (digits > 0 && digits <= 15 && (digits === 1 || b[start] !== 0x30)) {
      let v = 0;
      let k = start;
      for (; k < i; k++) {
        const d = b[k]! - 0x30;
        if (d < 0 || d > 9) break;
        v = v * 10 + d;
      }
      if (k === i) {
        this.#i = i;
        return v;
      }
    }
    const text = this.#buf.toString('latin1', start, i);
    if (!NUMBER.test(text))
      this.fail(text === '' ? 'unexpected token' : `bad number ${JSON.stringify(text.slice(0, 40))}`);
    this.#i = i;
    return Number(text);
  }

  /** Four hex digits at `at`, or -1. */
  hex4(at: number): number {
    const b = this.#b;
    let v = 0;
    for (let k = 0; k < 4; k++) {
      const c = b[at + k];
      if (c === undefined) return -1;
      const d =
        c >= 0x30 && c <= 0x39 ? c - 0x30 : c >= 0x61 && c <= 0x66 ? c - 0x57 : c >= 0x41 && c <= 0x46 ? c - 0x37 : -1;
      if (d < 0) return -1;
      v = v * 16 + d;
    }
    return v;
  }

  string(): string {
    const b = this.#b;
    let i = this.#i + 1;
    let out = '';
    let from = i;
    const raw = (to: number) => (to > from ? this.#buf.toString('latin1', from, to) : '');
    for (;;) {
      if (i >= b.length) {
        this.#i = i;
        this.cutOff('unterminated string');
      }
      const c = b[i]!;
      if (c === QUOTE) break;
      if (c < 0x20) {
        this.#i = i;
        this.fail('control character in a string');
      }
      if (c !== BACKSLASH) {
        i++;
        continue;
      }
      out += raw(i);
      // An escape is decided with its next 12 bytes at most (a surrogate pair): wait for them.
      if (i + 12 > b.length) {
        this.#i = i;
        if (!this.#final) throw INCOMPLETE;
      }
      const e = b[i + 1];
      if (e === 0x75) {
        let cp = this.hex4(i + 2);
        if (cp < 0) {
          this.#i = i;
          this.fail('bad \\u escape');
        }
        i += 6;
        if (cp >= 0xd800 && cp <= 0xdbff && b[i] === BACKSLASH && b[i + 1] === 0x75) {
          const lo = this.hex4(i + 2);
          if (lo >= 0xdc00 && lo <= 0xdfff) {
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            i += 6;
          }
        }
        // A lone surrogate has no UTF-8 form.
        out += utf8Chars(cp >= 0xd800 && cp <= 0xdfff ? 0xfffd : cp);
      } else {
        const s = e === undefined ? undefined : SIMPLE_ESCAPES[e];
        if (s === undefined) {
          this.#i = i;
          this.fail('bad escape');
        }
        out += s;
        i += 2;
      }
      from = i;
    }
    out += raw(i);
    this.#i = i + 1;
    return out;
  }
}

/** Parse TOC JSON bytes; strings come back as binary strings (see above). Throws SyntaxError on bad JSON. */
export function parseTocJson(json: Uint8Array): unknown {
  const r = new TocJsonReader(json);
  const v = r.value();
  r.end();
  return v;
}

type Stage = 'start' | 'firstKey' | 'key' | 'firstEntry' | 'entry' | 'afterEntry' | 'afterMember' | 'trailing' | 'done';

/**
 * A TOC document `{..., "entries": [...], ...}` read from its bytes as they come (`push`, then
 * `end`): `onEntry` gets each element of `entries` as soon as its last byte is there, and only
 * the bytes of a value not yet complete are kept. Throws SyntaxError on bad JSON, also after
 * some entries went out.
 */
export class TocJsonStream {
  readonly #onEntry: (entry: unknown, index: number) => void;
  #pending: Buffer = Buffer.alloc(0);
  /** Bytes of the document before `#pending`. */
  #consumed = 0;
  #stage: Stage = 'start';
  #retryAt = 0;
  #rest: Record<string, unknown> = {};
  #entries: number | undefined;

  constructor(onEntry: (entry: unknown, index: number) => void) {
    this.#onEntry = onEntry;
  }

  push(chunk: Buffer): void {
    this.#pending = this.#pending.length ? Buffer.concat([this.#pending, chunk]) : chunk;
    // A value cut off is read again from its start: only once its bytes doubled, so that a huge
    // value costs linear, not quadratic, time.
    if (this.#pending.length >= this.#retryAt) this.#run(false);
  }

  /**
   * No more bytes: the rest of the document. `rest` is its other members (`entries` among them
   * only when it is not an array); `entries` the number of elements, undefined without an array.
   */
  end(): { rest: Record<string, unknown>; entries?: number } {
    this.#run(true);
    return this.#entries === undefined ? { rest: this.#rest } : { rest: this.#rest, entries: this.#entries };
  }

  #run(final: boolean): void {
    const r = new TocJsonReader(this.#pending, final, this.#consumed);
    let done = 0;
    try {
      for (;;) {
        this.#step(r);
        done = r.pos;
        if (this.#stage === 'done') break;
      }
    } catch (e) {
      if (e !== INCOMPLETE) throw e;
    }
    this.#retryAt = 2 * (this.#pending.length - done);
    this.#pending = this.#pending.subarray(done);
    this.#consumed += done;
  }

  /** One step of the document; a step is redone from its start when its bytes were not all there. */
  #step(r: TocJsonReader): void {
    const rest = this.#rest;
    switch (this.#stage) {
      case 'start':
        if (r.peek() !== 0x7b) r.fail('the document is not an object');
        r.expect(0x7b);
        this.#stage = 'firstKey';
        return;
      case 'firstKey':
        this.#stage = r.empty(0x7d) ? 'trailing' : 'key';
        return;
      case 'key': {
        const k = r.key();
        if (k === 'entries' && r.peek() === 0x5b) {
          if (this.#entries !== undefined) r.fail('a second "entries" array');
          r.expect(0x5b);
          delete rest.entries;
          this.#entries = 0;
          this.#stage = 'firstEntry';
          return;
        }
        const v = r.value();
        setMember(rest, k, v);
        this.#stage = 'afterMember';
        return;
      }
      case 'firstEntry':
        this.#stage = r.empty(0x5d) ? 'afterMember' : 'entry';
        return;
      case 'entry': {
        const v = r.value();
        this.#stage = 'afterEntry';
        this.#onEntry(v, this.#entries!++);
        return;
      }
      case 'afterEntry':
        this.#stage = r.more(0x5d) ? 'entry' : 'afterMember';
        return;
      case 'afterMember':
        this.#stage = r.more(0x7d) ? 'key' : 'trailing';
        return;
      case 'trailing':
        r.end();
        this.#stage = 'done';
        return;
      case 'done':
        return;
    }
  }
}

/** A whole TOC document read with TocJsonStream (see there). */
export function readTocJson(
  json: Uint8Array,
  onEntry: (entry: unknown, index: number) => void,
): { rest: Record<string, unknown>; entries?: number } {
  const s = new TocJsonStream(onEntry);
  s.push(Buffer.from(json.buffer, json.byteOffset, json.length));
  return s.end();
}
