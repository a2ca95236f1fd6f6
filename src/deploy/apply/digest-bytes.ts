/** Digests kept as their 32 bytes (a content index's rows) against the `sha256:<hex>` texts they are asked about. */
const DIGEST_BYTES = 32;
const SHA256_PREFIX = 'sha256:';
/** The char codes of lowercase hex digits, by value. */
const HEX = Array.from('0123456789abcdef', (c) => c.charCodeAt(0));

/** Are the 32 bytes of `bytes` at `at` this `sha256:<64 lowercase hex>` text? Compared character by character, no string made. */
export function digestBytesAre(bytes: Buffer, at: number, digest: string): boolean {
  if (digest.length !== SHA256_PREFIX.length + 2 * DIGEST_BYTES || !digest.startsWith(SHA256_PREFIX)) return false;
  for (let i = 0, c = SHA256_PREFIX.length; i < DIGEST_BYTES; i++, c += 2) {
    const byte = bytes[at + i]!;
    if (digest.charCodeAt(c) !== HEX[byte >> 4] || digest.charCodeAt(c + 1) !== HEX[byte & 15]) return false;
  }
  return true;
}

/** The `sha256:<hex>` text of the 32 bytes of `bytes` at `at`. */
export function digestTextAt(bytes: Buffer, at: number): string {
  return `${SHA256_PREFIX}${bytes.toString('hex', at, at + DIGEST_BYTES)}`;
}

/** Write the bytes of `digest` (`sha256:<64 lowercase hex>`, checked by the caller) at `at` of `bytes`. */
export function writeDigestAt(bytes: Buffer, at: number, digest: string): void {
  bytes.write(digest.slice(SHA256_PREFIX.length), at, DIGEST_BYTES, 'hex');
}
