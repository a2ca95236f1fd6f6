/**
 * A reader of the content index file's text (scan.ts, ContentIndex) as its bytes come:
 * `{"version":1,"entries":{"<ino>:<size>:<mtimeNs>:<ctimeNs>":"sha256:<hex>",...}}`, exactly
 * as `save` writes it. Members go to `onMember` one by one; between pieces only the unfinished
 * member is kept, so loading an index of any size holds its read buffer and a piece, not the
 * file and a text copy of it (~10 MiB for a 45k-file tree). Anything else makes it invalid:
 * the index is only an accelerator, and the caller then starts from an empty one.
 */
import type { IndexKeyParts } from './index-table.ts';

export const INDEX_HEAD = '{"version":1,"entries":{';
/**
 * One member and what follows it. Tested, not executed: a match array with its captures, and
 * the key split into strings, were most of the ~42 MiB a load of the bench's larger tree's index
 * (45,000 members) allocated (sampled); the parts are read from the text at known positions.
 */
const MEMBER = /"\d+:\d+:-?\d+:-?\d+":"sha256:[0-9a-f]{64}"(?:,|\}\})/y;
/** `":"` between a member's key and its digest, and the digest's length. */
const KEY_TO_DIGEST = 3;
const DIGEST_CHARS = 71;
/** Digits (and a sign) a double holds exactly: read as a number, not through a string. */
const EXACT_CHARS = 15;
const COLON = 0x3a;
const QUOTE = 0x22;
const CLOSE_BRACE = 0x7d;
const MINUS = 0x2d;
const ZERO = 0x30;
/** The shortest member with its separator: `"0:0:0:0":"sha256:<64 hex>",`. */
export const MIN_MEMBER = 9 + 1 + 73 + 1;
/** The longest member: four 20-digit numbers (two signed), `:`s, quotes, a digest, `}}`. */
const MAX_MEMBER = 4 * 21 + 3 + 2 + 3 + 71 + 2 + 2;

export class IndexTextParser {
  readonly #onMember: (key: IndexKeyParts, digest: string) => void;
  /**
   * The unfinished member's bytes, at the start of a buffer the next piece is copied in after:
   * the text made of both is one string (a carried string joined to each piece's was flattened,
   * another copy of the piece: ~4 MiB of heap per load of the larger bench tree's index, sampled).
   */
  #work = Buffer.alloc(0);
  #carried = 0;
  #started = false;
  #done = false;
  #valid = true;
  /** The most characters kept between pieces so far (tests check the bound). */
  maxHeld = 0;

  /** `onMember` gets each member's key parts and its digest (a slice of the piece's text: copy it to keep it). */
  constructor(onMember: (key: IndexKeyParts, digest: string) => void) {
    this.#onMember = onMember;
  }

  get valid(): boolean {
    return this.#valid;
  }

  /** The next piece of the file; false once the text is known not to be an index. */
  push(piece: Uint8Array): boolean {
    if (!this.#valid) return false;
    if (this.#done) return this.#fail();
    const length = this.#carried + piece.length;
    if (this.#work.length < length) {
      const grown = Buffer.allocUnsafe(Math.max(length, 2 * this.#work.length));
      this.#work.copy(grown, 0, 0, this.#carried);
      this.#work = grown;
    }
    this.#work.set(piece, this.#carried);
    const text = this.#work.toString('latin1', 0, length);
    let at = 0;
    if (!this.#started) {
      if (text.length < INDEX_HEAD.length + 2) return this.#keep(text, 0);
      if (!text.startsWith(INDEX_HEAD)) return this.#fail();
      this.#started = true;
      at = INDEX_HEAD.length;
      if (text.startsWith('}}', at)) {
        this.#done = true;
        return text.length === at + 2 || this.#fail();
      }
    }
    for (;;) {
      MEMBER.lastIndex = at;
      if (!MEMBER.test(text)) return text.length - at < MAX_MEMBER ? this.#keep(text, at) : this.#fail();
      const c1 = charAfter(text, at + 1, COLON);
      const c2 = charAfter(text, c1 + 1, COLON);
      const c3 = charAfter(text, c2 + 1, COLON);
      const end = charAfter(text, c3 + 1, QUOTE);
      const digestAt = end + KEY_TO_DIGEST;
      this.#onMember(
        {
          ino: bigIntAt(text, at + 1, c1),
          size: numberAt(text, c1 + 1, c2),
          mtimeNs: bigIntAt(text, c2 + 1, c3),
          ctimeNs: bigIntAt(text, c3 + 1, end),
        },
        text.slice(digestAt, digestAt + DIGEST_CHARS),
      );
      at = MEMBER.lastIndex;
      if (text.charCodeAt(at - 1) === CLOSE_BRACE) {
        this.#done = true;
        this.#carried = 0;
        return at === text.length || this.#fail();
      }
    }
  }

  /** The end of the file: true when it was a whole index. */
  end(): boolean {
    if (!this.#done) this.#fail();
    return this.#valid;
  }

  /** Carry the text from `at` on (its bytes, one to a character) to the next piece. */
  #keep(text: string, at: number): boolean {
    this.#work.copyWithin(0, at, text.length);
    this.#carried = text.length - at;
    this.maxHeld = Math.max(this.maxHeld, this.#carried);
    return true;
  }

  #fail(): false {
    this.#valid = false;
    this.#carried = 0;
    return false;
  }
}

/** Where `code` is next in `text` from `from` (the member's shape was tested: it is there). */
function charAfter(text: string, from: number, code: number): number {
  let i = from;
  while (text.charCodeAt(i) !== code) i++;
  return i;
}

/** The decimal integer text[from, to) (an optional minus, digits: tested), as a number. */
function numberAt(text: string, from: number, to: number): number {
  if (to - from > EXACT_CHARS) return Number(text.slice(from, to));
  const negative = text.charCodeAt(from) === MINUS;
  let n = 0;
  for (let i = negative ? from + 1 : from; i < to; i++) n = n * 10 + (text.charCodeAt(i) - ZERO);
  return negative ? -n : n;
}

/** The same as a BigInt, exactly whatever its length. */
function bigIntAt(text: string, from: number, to: number): bigint {
  return to - from > EXACT_CHARS ? BigInt(text.slice(from, to)) : BigInt(numberAt(text, from, to));
}
