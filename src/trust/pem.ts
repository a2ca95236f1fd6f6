/** PEM (RFC 7468) blocks: encode DER under a label, find blocks in a text. */

export interface PemBlock {
  label: string;
  der: Buffer;
}

export function pemEncode(label: string, der: Uint8Array): string {
  const b64 = Buffer.from(der).toString('base64');
  const lines = b64.match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`;
}

/** Every PEM block in `text`, in order. Headers (RFC 1421 style) are not accepted. */
export function pemDecodeAll(text: string): PemBlock[] {
  const out: PemBlock[] = [];
  const re = /-----BEGIN ([A-Z0-9 ]+)-----\r?\n([\s\S]*?)-----END \1-----/g;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    const body = m[2]!.replace(/\s+/g, '');
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(body)) continue;
    out.push({ label: m[1]!, der: Buffer.from(body, 'base64') });
  }
  return out;
}

/**
 * The PEM blocks of a text that holds nothing else (only whitespace around them), or undefined:
 * hostile text must not smuggle a second block, a header or a malformed body past a reader
 * that takes the first block.
 */
export function pemDecodeStrict(text: string): PemBlock[] | undefined {
  const blocks = pemDecodeAll(text);
  const begins = text.split('-----BEGIN ').length - 1;
  const rest = text.replace(/-----BEGIN ([A-Z0-9 ]+)-----\r?\n[\s\S]*?-----END \1-----/g, '');
  return blocks.length > 0 && blocks.length === begins && rest.trim() === '' ? blocks : undefined;
}
