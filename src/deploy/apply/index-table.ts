/**
 * The content index's table: (inode, size, mtime, ctime) -> sha256, every row as numbers and
 * bytes (four 64-bit integers, 32 digest bytes, a flag) in growing typed arrays, found through an
 * open-addressing table of row numbers. The key was a string `ino:size:mtime:ctime` (~70 bytes)
 * in a Map (~30 more a slot) beside the digest: an index holds one row per file of a snapshot,
 * and the executor records one for every file it leaves in the new tree.
 *
 * Rows keep the order they were added in (`keys`/`entries` give them so): the saved file lists
 * its members in the order it always did.
 */
import type { ExistingEntry } from './types.ts';
import { freeArray, resized } from '../../util/typed-resize.ts';
import { HIGH, LOW } from '../../util/word-order.ts';
import { digestBytesAre, digestTextAt, writeDigestAt } from './digest-bytes.ts';

export type IndexKeyParts = Pick<ExistingEntry, 'ino' | 'size' | 'mtimeNs' | 'ctimeNs'>;

const DIGEST_BYTES = 32;
const EMPTY = -1;
const U64 = (1n << 64n) - 1n;
const I64_MIN = -(1n << 63n);
const I64_MAX = (1n << 63n) - 1n;
const TWO_32 = 2 ** 32;

/** A key as the saved file spells it: `ino:size:mtimeNs:ctimeNs`, in decimal. */
export function keyText(k: IndexKeyParts): string {
  return `${k.ino}:${k.size}:${k.mtimeNs}:${k.ctimeNs}`;
}

/** Can these parts be a row (ino an unsigned 64-bit number, size a safe integer, times signed 64-bit)? */
export function keyFits(k: IndexKeyParts): boolean {
  return (
    k.ino >= 0n &&
    k.ino <= U64 &&
    Number.isSafeInteger(k.size) &&
    k.size >= 0 &&
    k.mtimeNs >= I64_MIN &&
    k.mtimeNs <= I64_MAX &&
    k.ctimeNs >= I64_MIN &&
    k.ctimeNs <= I64_MAX
  );
}

export class IndexTable {
  /** ino (as its 64 bits), size, mtimeNs, ctimeNs per row. */
  #keys: BigInt64Array;
  /**
   * The same memory as 32-bit words, which a lookup compares: reading a BigInt64Array makes a
   * BigInt of every element read, and the planner looks up a row for each file of an update.
   */
  #keys32: Uint32Array;
  /** The key being looked up, as a row stores it (written, never read as BigInts). */
  readonly #probe = new BigInt64Array(4);
  readonly #probe32 = new Uint32Array(this.#probe.buffer);
  #digests: Buffer;
  /** Rows whose digest this process read from the file itself. */
  #hashedHere: Uint8Array;
  /** Row numbers by hash position (EMPTY: free); a power of two long, at most half full. */
  #table: Int32Array;
  #size = 0;
  #allocations = 0;

  /**
   * Room for `rows` rows before it grows: a caller that knows how many it will add (the
   * executor, the new tree's files) gets them without the growth's copies and garbage.
   */
  constructor(rows = 256) {
    const room = Math.max(256, Math.ceil(rows));
    this.#keys = new BigInt64Array(4 * room);
    this.#keys32 = new Uint32Array(this.#keys.buffer);
    this.#digests = Buffer.alloc(DIGEST_BYTES * room);
    this.#hashedHere = new Uint8Array(room);
    let cap = 512;
    while (room * 2 > cap) cap *= 2;
    this.#table = new Int32Array(cap).fill(EMPTY);
  }

  get size(): number {
    return this.#size;
  }

  /** Rows it has arrays for. */
  get room(): number {
    return this.#hashedHere.length;
  }

  /** Forget every row, keeping the arrays for the rows set next. */
  clear(): void {
    this.#size = 0;
    this.#hashedHere.fill(0);
    this.#table.fill(EMPTY);
  }

  /** How many times the rows were made anew (each time the old ones are garbage): a load makes them once. */
  get allocations(): number {
    return this.#allocations;
  }

  /** The row of these key parts, or -1. */
  find(k: IndexKeyParts): number {
    if (!keyFits(k)) return EMPTY;
    return this.#table[this.#position(k)]!;
  }

  /** `sha256:<hex>` of row `r`. */
  digestAt(r: number): string {
    return digestTextAt(this.#digests, r * DIGEST_BYTES);
  }

  /** Is row `r`'s digest this `sha256:<hex>` text? Compared character by character, no string made. */
  digestIs(r: number, digest: string): boolean {
    return digestBytesAre(this.#digests, r * DIGEST_BYTES, digest);
  }

  hashedHereAt(r: number): boolean {
    return this.#hashedHere[r] === 1;
  }

  /**
   * Record `digest` (`sha256:<64 lowercase hex>`, checked by the caller) for these key parts:
   * their row, new or updated (`hashedHere` marks it read by this process; a later set does not
   * unmark it); -1 when the parts cannot be a row (nothing is recorded: the index only saves
   * hashing).
   */
  set(k: IndexKeyParts, digest: string, hashedHere = false): number {
    if (!keyFits(k)) return EMPTY;
    const pos = this.#position(k);
    let r = this.#table[pos]!;
    if (r === EMPTY) {
      r = this.#size++;
      this.#ensure(this.#size);
      // #position left the key in the probe.
      this.#keys32.set(this.#probe32, r * 8);
      this.#table[pos] = r;
      if (this.#size * 2 > this.#table.length) this.#rehash(this.#table.length * 2);
    }
    writeDigestAt(this.#digests, r * DIGEST_BYTES, digest);
    if (hashedHere) this.#hashedHere[r] = 1;
    return r;
  }

  /** Row `r`'s key as the saved file spells it (keyText). */
  keyAt(r: number): string {
    const k = this.#keys;
    return `${BigInt.asUintN(64, k[r * 4]!)}:${k[r * 4 + 1]!}:${k[r * 4 + 2]!}:${k[r * 4 + 3]!}`;
  }

  /** Keep only the rows in `keep`, in their order (row numbers change: earlier ones are invalid after). */
  retain(keep: ReadonlySet<number>): void {
    let to = 0;
    for (let r = 0; r < this.#size; r++) {
      if (!keep.has(r)) continue;
      if (r !== to) {
        this.#keys.copyWithin(to * 4, r * 4, r * 4 + 4);
        this.#digests.copy(this.#digests, to * DIGEST_BYTES, r * DIGEST_BYTES, (r + 1) * DIGEST_BYTES);
        this.#hashedHere[to] = this.#hashedHere[r]!;
      }
      to++;
    }
    this.#size = to;
    // Shrink to fit (at least the first size) and find the rows again.
    this.#resize(Math.max(to, 256));
    let cap = 512;
    while (this.#size * 2 > cap) cap *= 2;
    this.#rehash(cap);
  }

  /**
   * Room for `rows` rows at once (a loaded index knows its count): grown row by row, the table was
   * copied at every growth and once more by trim, each copy garbage beside the next (~5 MiB of
   * ArrayBuffers over the 2.4 MiB index of the bench's larger tree, at the planning's peak).
   */
  reserve(rows: number): void {
    if (rows * DIGEST_BYTES <= this.#digests.length) return;
    this.#resize(rows);
    let cap = this.#table.length;
    while (rows * 2 > cap) cap *= 2;
    if (cap !== this.#table.length) this.#rehash(cap);
  }

  /** Give back the room rows were not added to (an index loaded whole gets no more rows for a while). */
  trim(): void {
    if (this.#size * DIGEST_BYTES < this.#digests.length) this.#resize(Math.max(this.#size, 256));
  }

  #ensure(rows: number): void {
    if (rows * DIGEST_BYTES <= this.#digests.length) return;
    // By half again, not double: the room a full table leaves unused is a third at most.
    this.#resize(Math.ceil((this.#digests.length / DIGEST_BYTES) * 1.5));
  }

  /**
   * Room for `rows` rows, the first `size` kept. Moved, not copied (util/typed-resize.ts): the
   * executor's records grow the table during the writing, and each old copy was garbage there
   * until a full collection. Rows past `size` are zeroed (a moved buffer keeps what was there).
   */
  #resize(rows: number): void {
    this.#allocations++;
    this.#keys = resized(this.#keys, 4 * rows).fill(0n, 4 * this.#size);
    this.#keys32 = new Uint32Array(this.#keys.buffer);
    this.#digests = resized(this.#digests, DIGEST_BYTES * rows).fill(0, this.#size * DIGEST_BYTES);
    this.#hashedHere = resized(this.#hashedHere, rows).fill(0, this.#size);
  }

  /** A row's hash, from the low 32 bits of each of its four numbers (at `at` in `words`): inode numbers alone are nearly unique in a tree. */
  #hashOf(words: Uint32Array, at: number): number {
    let h = words[at + LOW]! ^ Math.imul(words[at + 2 + LOW]!, 0x9e3779b1);
    h = Math.imul(h ^ words[at + 4 + LOW]!, 0x85ebca6b);
    h = Math.imul(h ^ words[at + 6 + LOW]!, 0xc2b2ae35);
    return (h ^ (h >>> 16)) >>> 0;
  }

  /**
   * Where `k` is in the table, or the free position it would take (linear probing); `k` is left
   * in the probe, as a row stores it.
   */
  #position(k: IndexKeyParts): number {
    const probe = this.#probe;
    const p32 = this.#probe32;
    // Stored into a BigInt64Array, ino wraps to its signed 64 bits (BigInt.asIntN): nothing is made.
    probe[0] = k.ino;
    p32[2 + LOW] = k.size % TWO_32;
    p32[2 + HIGH] = Math.floor(k.size / TWO_32);
    probe[2] = k.mtimeNs;
    probe[3] = k.ctimeNs;
    const mask = this.#table.length - 1;
    const keys = this.#keys32;
    for (let pos = this.#hashOf(p32, 0) & mask; ; pos = (pos + 1) & mask) {
      const r = this.#table[pos]!;
      if (r === EMPTY) return pos;
      const at = r * 8;
      if (
        keys[at] === p32[0] &&
        keys[at + 1] === p32[1] &&
        keys[at + 2] === p32[2] &&
        keys[at + 3] === p32[3] &&
        keys[at + 4] === p32[4] &&
        keys[at + 5] === p32[5] &&
        keys[at + 6] === p32[6] &&
        keys[at + 7] === p32[7]
      )
        return pos;
    }
  }

  #rehash(capacity: number): void {
    const table = new Int32Array(capacity).fill(EMPTY);
    const mask = capacity - 1;
    const words = this.#keys32;
    for (let r = 0; r < this.#size; r++) {
      let pos = this.#hashOf(words, r * 8) & mask;
      while (table[pos] !== EMPTY) pos = (pos + 1) & mask;
      table[pos] = r;
    }
    freeArray(this.#table);
    this.#table = table;
  }
}
