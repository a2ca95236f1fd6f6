/**
 * A layer's regular files from its table of contents as rows of typed arrays, not as objects
 * with strings: a file was a TreeEntry of ten fields (104 bytes), its 71-char digest string
 * (88) and a `source` object (48), ~240 bytes beside its path; here it is an object of three
 * fields (48 bytes) and a row of 78 bytes. The TOC is the largest thing the device plans with
 * (tens of thousands of files), so this is what grows with the image.
 *
 * `TocFile` is a TreeEntry whose fields are read from its row: `digest` becomes the
 * `sha256:<hex>` text each time it is read (a short-lived string), `source` a new
 * `{layer, offset, endOffset}`. The values are exactly what the TOC said (the reader,
 * apply/toc.ts, checked them before they were stored).
 */
import { mtimeParts, NO_XATTRS } from '../../layer/entry.ts';
import type { ContentSource, TreeEntry } from './types.ts';

const DIGEST_BYTES = 32;
/**
 * Rows per block: a block is allocated whole (~20 KiB) and never copied when the layer grows;
 * small enough that the last, partly used block of each layer wastes little.
 */
const BLOCK_ROWS = 256;
/** Float64 fields of a row: size, offset, endOffset, mtime seconds (exact: the reader allows safe integers). */
const F64 = 4;
/** Uint32 fields of a row: uid, gid, mtime nanoseconds. */
const U32 = 3;
/**
 * A uid or gid of 2^32-1 or more is kept exactly in `FileBlock.wideIds`: the reader allows any
 * safe integer, and one cut to 32 bits would be another owner (2^32 would be root).
 */
const WIDE = 0xffffffff;

class FileBlock {
  readonly digests = Buffer.alloc(BLOCK_ROWS * DIGEST_BYTES);
  readonly numbers = new Float64Array(BLOCK_ROWS * F64);
  readonly ids = new Uint32Array(BLOCK_ROWS * U32);
  /** Ids at WIDE or above, by row * U32 + field. */
  wideIds: Map<number, number> | undefined;
  readonly modes = new Uint16Array(BLOCK_ROWS);
  /** Only the rows that have xattrs (most files have none). */
  xattrs: Map<number, Record<string, Buffer>> | undefined;
  used = 0;
  readonly layer: number;

  constructor(layer: number) {
    this.layer = layer;
  }
}

/** What a row stores: the checked values of one regular file of the TOC. */
export type TocFileFields = Pick<TreeEntry, 'mode' | 'uid' | 'gid' | 'mtimeNs' | 'xattrs' | 'size'> & {
  /** `sha256:<64 lowercase hex>` (checked by the reader). */
  digest: string;
  offset: number;
  endOffset: number;
};

export class TocFile implements TreeEntry {
  readonly path: string;
  readonly #block: FileBlock;
  readonly #row: number;

  constructor(path: string, block: FileBlock, row: number) {
    this.path = path;
    this.#block = block;
    this.#row = row;
  }

  get type(): 'reg' {
    return 'reg';
  }
  get mode(): number {
    return this.#block.modes[this.#row]!;
  }
  get uid(): number {
    return this.#id(0);
  }
  get gid(): number {
    return this.#id(1);
  }
  #id(field: number): number {
    const at = this.#row * U32 + field;
    const id = this.#block.ids[at]!;
    return id === WIDE ? this.#block.wideIds!.get(at)! : id;
  }
  get mtimeNs(): bigint {
    const sec = this.#block.numbers[this.#row * F64 + 3]!;
    return BigInt(sec) * 1_000_000_000n + BigInt(this.#block.ids[this.#row * U32 + 2]!);
  }
  get xattrs(): Record<string, Buffer> {
    return this.#block.xattrs?.get(this.#row) ?? NO_XATTRS;
  }
  get size(): number {
    return this.#block.numbers[this.#row * F64]!;
  }
  get digest(): string {
    const at = this.#row * DIGEST_BYTES;
    return `sha256:${this.#block.digests.toString('hex', at, at + DIGEST_BYTES)}`;
  }
  get source(): ContentSource {
    const at = this.#row * F64;
    const n = this.#block.numbers;
    return { layer: this.#block.layer, offset: n[at + 1]!, endOffset: n[at + 2]! };
  }

  /** Further frames of this file follow its last one (TOC `chunk` entries): its range ends at `endOffset` now. */
  widenTo(endOffset: number): void {
    this.#block.numbers[this.#row * F64 + 2] = endOffset;
  }
}

/** The rows of one layer's regular files, block by block. */
export class TocFiles {
  readonly #layer: number;
  #block: FileBlock | undefined;

  constructor(layer: number) {
    this.#layer = layer;
  }

  add(path: string, f: TocFileFields): TocFile {
    let b = this.#block;
    if (!b || b.used === BLOCK_ROWS) this.#block = b = new FileBlock(this.#layer);
    const r = b.used++;
    b.modes[r] = f.mode;
    const { sec, nsec } = mtimeParts(f.mtimeNs);
    // Element by element: an array literal per row was garbage for every file of the TOC.
    const n = r * F64;
    b.numbers[n] = f.size;
    b.numbers[n + 1] = f.offset;
    b.numbers[n + 2] = f.endOffset;
    b.numbers[n + 3] = sec;
    const u = r * U32;
    b.ids[u] = Math.min(f.uid, WIDE);
    b.ids[u + 1] = Math.min(f.gid, WIDE);
    b.ids[u + 2] = nsec;
    if (f.uid >= WIDE) (b.wideIds ??= new Map()).set(r * U32, f.uid);
    if (f.gid >= WIDE) (b.wideIds ??= new Map()).set(r * U32 + 1, f.gid);
    b.digests.write(f.digest.slice('sha256:'.length), r * DIGEST_BYTES, DIGEST_BYTES, 'hex');
    if (f.xattrs !== NO_XATTRS) (b.xattrs ??= new Map()).set(r, f.xattrs);
    return new TocFile(path, b, r);
  }
}
