/**
 * Text from image data as a snapper userdata value. snapper's command line takes userdata as
 * `k=v,k2=v2`, so a value cannot hold ',', '=' or a newline, and snapper may trim blanks: an
 * image's annotation (hostile) is escaped exactly, never written as it came. Every byte outside
 * a small safe set becomes `%XX` of its UTF-8 encoding (`%` itself too), so decoding gives back
 * exactly the text that was recorded; a value whose escaped form is longer than
 * MAX_USERDATA_VALUE is not recorded at all.
 */

/** Escaped length above which a value is not recorded (userdata is listed with every snapshot). */
export const MAX_USERDATA_VALUE = 256;

const SAFE = /^[A-Za-z0-9._:+~^-]$/;

/** The escaped form of `text`; undefined when it is longer than MAX_USERDATA_VALUE. */
export function escapeUserdata(text: string): string | undefined {
  let out = '';
  for (const ch of text) {
    if (SAFE.test(ch)) out += ch;
    else for (const b of Buffer.from(ch, 'utf8')) out += `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
    if (out.length > MAX_USERDATA_VALUE) return undefined;
  }
  return out;
}

/** The text an escaped value stands for; undefined when it is not exactly what escapeUserdata writes. */
export function unescapeUserdata(value: string): string | undefined {
  if (value.length > MAX_USERDATA_VALUE || !/^(?:[A-Za-z0-9._:+~^-]|%[0-9A-F]{2})*$/.test(value)) return undefined;
  const bytes: number[] = [];
  for (let i = 0; i < value.length; i++) {
    if (value[i] === '%') {
      bytes.push(parseInt(value.slice(i + 1, i + 3), 16));
      i += 2;
    } else bytes.push(value.charCodeAt(i));
  }
  const buf = Buffer.from(bytes);
  const text = buf.toString('utf8');
  // Invalid UTF-8 would decode to replacement characters: not a value tiu recorded.
  return Buffer.from(text, 'utf8').equals(buf) ? text : undefined;
}
