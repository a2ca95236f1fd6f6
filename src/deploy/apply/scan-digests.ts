/**
 * A content index loaded beside the scan of its tree (scan.ts, ContentIndex.load with a scan):
 * each digest hangs off the scan's rows that have its key, instead of a table of its own keyed
 * by (inode, size, mtime, ctime). Those four numbers are in the scan's rows already; stored again
 * with their table of slots they were 2.9 MiB of a plan of the bench's larger tree (37,000 files:
 * keys 1.2, digests 1.2, slots 0.5), here the digests and a slot number per scan row (1.4).
 *
 * A digest is read for an entry only when the scan has its path and that row has its key
 * exactly (keyIs): the same check as the table's. Rows of one inode (hardlinks) share a digest.
 * The digests' bytes are blocks of 256, which wait in the scan's spill (row-spill.ts) as its
 * rows do.
 */
import type { ScanEntries } from './scan-entries.ts';
import type { IndexKeyParts } from './index-table.ts';
import { digestBytesAre, digestTextAt, writeDigestAt } from './digest-bytes.ts';
import { resized } from '../../util/typed-resize.ts';
import { SpillBlock, type RowSpill } from './row-spill.ts';

const DIGEST_BYTES = 32;
const NONE = -1;
const BLOCK_SHIFT = 8;
const PER_BLOCK = 1 << BLOCK_SHIFT;
const BLOCK_BYTES = PER_BLOCK * DIGEST_BYTES;

/** 256 digests' bytes: one buffer, which a spill may take out of memory whole. */
class DigestBlock extends SpillBlock {
  view!: Buffer;

  constructor(spill: RowSpill | undefined) {
    super(BLOCK_BYTES, spill);
    this.attach(new ArrayBuffer(BLOCK_BYTES));
  }

  setViews(bytes: ArrayBuffer): void {
    this.view = Buffer.from(bytes);
  }
}

/** An entry as the index is asked about it: a scan's entry has its path. */
export type KeyedEntry = IndexKeyParts & { readonly path?: string };

export class ScanDigests {
  readonly #scan: ScanEntries;
  /** By scan row: the digest's number, or NONE. */
  readonly #digestOf: Int32Array;
  /** The digests' bytes by number, 256 to a block: complete blocks may wait in the scan's spill. */
  readonly #blocks: DigestBlock[] = [];
  readonly #spill: RowSpill | undefined;
  #hashedHere: Uint8Array;
  #count = 0;

  /** For `scan`'s rows; room for `expected` digests before it grows. */
  constructor(scan: ScanEntries, expected: number) {
    this.#scan = scan;
    this.#spill = scan.spill;
    this.#digestOf = new Int32Array(scan.size).fill(NONE);
    this.#hashedHere = new Uint8Array(Math.max(expected, 16));
  }

  /** Digests held (one per inode). */
  get size(): number {
    return this.#count;
  }

  /**
   * Loading: `digest` for the scan's files with exactly this key (those of its inode: `rows`
   * gives them), if any; a key no row has is stale and dropped. Whether one was taken.
   */
  attach(k: IndexKeyParts, digest: string, rows: (ino: bigint, f: (row: number) => void) => void): boolean {
    let d = NONE;
    rows(k.ino, (r) => {
      if (!this.#scan.keyIs(r, k)) return;
      if (d === NONE) {
        // A key met again (a file save never writes) takes its last digest, as the table's does.
        d = this.#digestOf[r]!;
        if (d === NONE) d = this.#add(digest);
        else this.#write(d, digest);
      }
      this.#digestOf[r] = d;
    });
    return d !== NONE;
  }

  /** The digest number for this entry, or NONE: its path is a row of the scan with its key, and that has one. */
  find(e: KeyedEntry): number {
    const r = this.#rowOf(e);
    return r === NONE ? NONE : this.#digestOf[r]!;
  }

  /**
   * Record a digest (`sha256:<hex>`, checked by the caller) read for this entry; NONE when the
   * scan has no row for it (nothing is recorded: the index only saves hashing).
   */
  set(e: KeyedEntry, digest: string, hashedHere: boolean): number {
    const r = this.#rowOf(e);
    if (r === NONE) return NONE;
    let d = this.#digestOf[r]!;
    if (d === NONE) d = this.#digestOf[r] = this.#add(digest);
    else this.#write(d, digest);
    if (hashedHere) this.#hashedHere[d] = 1;
    return d;
  }

  digestAt(d: number): string {
    return digestTextAt(this.#block(d).view, (d & (PER_BLOCK - 1)) * DIGEST_BYTES);
  }

  digestIs(d: number, digest: string): boolean {
    return digestBytesAre(this.#block(d).view, (d & (PER_BLOCK - 1)) * DIGEST_BYTES, digest);
  }

  hashedHereAt(d: number): boolean {
    return this.#hashedHere[d] === 1;
  }

  /** Give back the room no digest was added to (a loaded index gets few more); the last block may leave memory too. */
  trim(): void {
    if (this.#count < this.#hashedHere.length) this.#resize(Math.max(this.#count, 16));
    const last = this.#blocks[this.#blocks.length - 1];
    if (last) this.#spill?.release(last);
  }

  /** Each digest once, with its key (its first row's), in the scan's row order. */
  *rows(): Generator<[IndexKeyParts, string, boolean]> {
    const done = new Uint8Array(this.#count);
    for (let r = 0; r < this.#digestOf.length; r++) {
      const d = this.#digestOf[r]!;
      if (d === NONE || done[d]) continue;
      done[d] = 1;
      yield [this.#scan.keyPartsAt(r), this.digestAt(d), this.#hashedHere[d] === 1];
    }
  }

  #rowOf(e: KeyedEntry): number {
    if (e.path === undefined) return NONE;
    const r = this.#scan.rowOf(e.path);
    // A row added to the scan after this was made has no digest here.
    return r !== NONE && r < this.#digestOf.length && this.#scan.keyIs(r, e) ? r : NONE;
  }

  #add(digest: string): number {
    const d = this.#count++;
    if (d === this.#hashedHere.length) this.#resize(Math.ceil(d * 1.5));
    if ((d & (PER_BLOCK - 1)) === 0) {
      // The block before is complete: it may leave memory now.
      const full = this.#blocks[this.#blocks.length - 1];
      if (full) this.#spill?.release(full);
      this.#blocks.push(new DigestBlock(this.#spill));
    }
    this.#write(d, digest);
    return d;
  }

  /** Digest `d`'s block, in memory. */
  #block(d: number): DigestBlock {
    return this.#blocks[d >>> BLOCK_SHIFT]!.inMemory();
  }

  /** Write digest `d`; a block written out already is written again when it next leaves memory. */
  #write(d: number, digest: string): void {
    const b = this.#block(d);
    b.changed();
    writeDigestAt(b.view, (d & (PER_BLOCK - 1)) * DIGEST_BYTES, digest);
  }

  #resize(n: number): void {
    this.#hashedHere = resized(this.#hashedHere, n);
  }
}
