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

const NUMBER = /^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?$/;

/** A JSON reader over bytes whose strings come back as binary strings (see above). Errors are SyntaxErrors. */
class TocJsonReader {
  readonly #b: Uint8Array;
  #i = 0;

  constructor(bytes: Uint8Array) {
    this.#b = bytes;
  }

  fail(why: string): never {
    throw new SyntaxError(`${why} at byte ${this.#i} of the JSON`);
  }

  /** Skip whitespace; the next byte (-1 at the end). */
  peek(): number {
    const b = this.#b;
    let i = this.#i;
    while (i < b.length && (b[i] === 0x20 || b[i] === 0x0a || b[i] === 0x0d || b[i] === 0x09)) i++;
    this.#i = i;
    return i < b.length ? b[i]! : -1;
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
    const k = this.string();
    this.expect(0x3a);
    return k;
  }

  object(): Record<string, unknown> {
    this.expect(0x7b);
    const o: Record<string, unknown> = {};
    if (this.empty(0x7d)) return o;
    do {
      const k = this.key();
      const v = this.value();
      // As JSON.parse: an own property even for "__proto__", the last of duplicate keys wins.
      if (k === '__proto__')
        Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
      else o[k] = v;
    } while (this.more(0x7d));
    return o;
  }

  array(): unknown[] {
    this.expect(0x5b);
    const a: unknown[] = [];
    if (this.empty(0x5d)) return a;
    do a.push(this.value());
    while (this.more(0x5d));
    return a;
  }

  literal(word: string, v: boolean | null): boolean | null {
    const b = this.#b;
    for (let k = 0; k < word.length; k++) if (b[this.#i + k] !== word.charCodeAt(k)) this.fail('unexpected token');
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
    const text = Buffer.from(b.buffer, b.byteOffset + start, i - start).toString('latin1');
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
    const raw = (to: number) =>
      to > from ? Buffer.from(b.buffer, b.byteOffset + from, to - from).toString('latin1') : '';
    for (;;) {
      if (i >= b.length) {
        this.#i = i;
        this.fail('unterminated string');
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

/**
 * Read a TOC document `{..., "entries": [...], ...}` entry by entry: `onEntry` gets each element
 * of `entries` as soon as it is read (nothing keeps the array). `rest` is the other members
 * (`entries` among them only when it is not an array), or the document when it is not an
 * object; `entries` the number of elements, undefined without an array. Throws SyntaxError on
 * bad JSON, also after some entries went out.
 */
export function readTocJson(
  json: Uint8Array,
  onEntry: (entry: unknown, index: number) => void,
): { rest: unknown; entries?: number } {
  const r = new TocJsonReader(json);
  if (r.peek() !== 0x7b) {
    const v = r.value();
    r.end();
    return { rest: v };
  }
  r.expect(0x7b);
  const rest: Record<string, unknown> = {};
  let entries: number | undefined;
  if (!r.empty(0x7d)) {
    do {
      const k = r.key();
      if (k !== 'entries' || r.peek() !== 0x5b) {
        const v = r.value();
        if (k === '__proto__')
          Object.defineProperty(rest, k, { value: v, enumerable: true, writable: true, configurable: true });
        else rest[k] = v;
        continue;
      }
      if (entries !== undefined) r.fail('a second "entries" array');
      delete rest.entries;
      r.expect(0x5b);
      let n = 0;
      if (!r.empty(0x5d))
        do onEntry(r.value(), n++);
        while (r.more(0x5d));
      entries = n;
    } while (r.more(0x7d));
  }
  r.end();
  return entries === undefined ? { rest } : { rest, entries };
}
