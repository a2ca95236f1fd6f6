/** A blob written to a file as it is made: its size and sha256 digest computed on the way. */
import { createHash, type Hash } from 'node:crypto';
import { closeSync, openSync, writeSync } from 'node:fs';
import type { Digest } from '../oci/types.ts';

export class BlobFile {
  readonly fd: number;
  readonly #hash: Hash = createHash('sha256');
  size = 0;
  constructor(path: string) {
    this.fd = openSync(path, 'w', 0o600);
  }
  write(b: Uint8Array): void {
    let off = 0;
    while (off < b.length) off += writeSync(this.fd, b, off, b.length - off);
    this.#hash.update(b);
    this.size += b.length;
  }
  #closed = false;
  close(): Digest {
    this.#closed = true;
    closeSync(this.fd);
    return `sha256:${this.#hash.digest('hex')}`;
  }
  /**
   * Close after a failure (the file is removed with the build's temp dir); nothing if it is
   * closed already: its descriptor number may belong to another file by then.
   */
  closeQuietly(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      closeSync(this.fd);
    } catch {
      /* the failure was closing it */
    }
  }
}
