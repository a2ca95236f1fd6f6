/**
 * A reader of the content index file's text (scan.ts, ContentIndex) as its bytes come:
 * `{"version":1,"entries":{"<ino>:<size>:<mtimeNs>:<ctimeNs>":"sha256:<hex>",...}}`, exactly
 * as `save` writes it. Members go to `onMember` one by one; between pieces only the unfinished
 * member is kept, so loading an index of any size holds one read buffer and a member, not the
 * file and a text copy of it (~10 MiB for a 45k-file tree). Anything else makes it invalid:
 * the index is only an accelerator, and the caller then starts from an empty one.
 */
export const INDEX_HEAD = '{"version":1,"entries":{';
const MEMBER = /"(\d+:\d+:-?\d+:-?\d+)":"(sha256:[0-9a-f]{64})"(,|\}\})/y;
/** The shortest member with its separator: `"0:0:0:0":"sha256:<64 hex>",`. */
export const MIN_MEMBER = 9 + 1 + 73 + 1;
/** The longest member: four 20-digit numbers (two signed), `:`s, quotes, a digest, `}}`. */
const MAX_MEMBER = 4 * 21 + 3 + 2 + 3 + 71 + 2 + 2;

export class IndexTextParser {
  readonly #onMember: (key: string, digest: string) => void;
  /** The unfinished text after the last whole member (latin1: the file is ASCII). */
  #carry = '';
  #started = false;
  #done = false;
  #valid = true;
  /** The most characters kept between pieces so far (tests check the bound). */
  maxHeld = 0;

  constructor(onMember: (key: string, digest: string) => void) {
    this.#onMember = onMember;
  }

  get valid(): boolean {
    return this.#valid;
  }

  /** The next piece of the file; false once the text is known not to be an index. */
  push(piece: Uint8Array): boolean {
    if (!this.#valid) return false;
    if (this.#done) return this.#fail();
    const text = this.#carry + Buffer.from(piece.buffer, piece.byteOffset, piece.length).toString('latin1');
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
      const m = MEMBER.exec(text);
      if (!m) return text.length - at < MAX_MEMBER ? this.#keep(text, at) : this.#fail();
      // Flat copies of the key and digest: a slice of `text` would keep all of it alive.
      this.#onMember(Buffer.from(m[1]!, 'latin1').toString('latin1'), m[2]!);
      at = MEMBER.lastIndex;
      if (m[3] === '}}') {
        this.#done = true;
        this.#carry = '';
        return at === text.length || this.#fail();
      }
    }
  }

  /** The end of the file: true when it was a whole index. */
  end(): boolean {
    if (!this.#done) this.#fail();
    return this.#valid;
  }

  #keep(text: string, at: number): boolean {
    this.#carry = Buffer.from(text.slice(at), 'latin1').toString('latin1');
    this.maxHeld = Math.max(this.maxHeld, this.#carry.length);
    return true;
  }

  #fail(): false {
    this.#valid = false;
    this.#carry = '';
    return false;
  }
}
