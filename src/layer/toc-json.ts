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
 * Both directions work on latin1 text, where char k is byte k: JSON.stringify of a binary
 * string escapes exactly `"`, `\` and controls, and JSON.parse keeps every other char.
 */

/** The UTF-8 bytes of a code point, as `\u00XX` escapes (which JSON.parse then reads as one char per byte). */
function utf8Escapes(codePoint: number): string {
  let out = '';
  for (const b of Buffer.from(String.fromCodePoint(codePoint), 'utf8'))
    out += '\\u00' + b.toString(16).padStart(2, '0');
  return out;
}

/** JSON text of a TOC whose strings are binary strings. */
export function encodeTocJson(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value), 'latin1');
}

/** Parse TOC JSON bytes; strings come back as binary strings (see above). Throws SyntaxError on bad JSON. */
export function parseTocJson(json: Uint8Array): unknown {
  const text = Buffer.from(json).toString('latin1');
  // A backslash only occurs inside strings, and each escape is consumed whole (`\\` too), so
  // every `\u` matched here is a real escape.
  const rewritten = text.replace(
    /\\u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})|\\u([0-9a-fA-F]{4})|\\[^u]/g,
    (all: string, hi?: string, lo?: string, one?: string) => {
      if (hi !== undefined && lo !== undefined)
        return utf8Escapes(0x10000 + ((parseInt(hi, 16) - 0xd800) << 10) + (parseInt(lo, 16) - 0xdc00));
      if (one === undefined) return all;
      const cp = parseInt(one, 16);
      // A lone surrogate has no UTF-8 form.
      return utf8Escapes(cp >= 0xd800 && cp <= 0xdfff ? 0xfffd : cp);
    },
  );
  return JSON.parse(rewritten) as unknown;
}
