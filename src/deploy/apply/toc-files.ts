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
 *
 * A block's columns are one buffer, so that with a spill (row-spill.ts) a complete block can be
 * written out and read back whole: an update then holds a few blocks of rows, not all of them.
 */
import { mtimeParts, NO_XATTRS } from '../../layer/entry.ts';
import { SpillBlock, type RowSpill } from './row-spill.ts';
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

/** Bytes of a block: its columns side by side in one buffer (one allocation; what the spill writes and reads). */
const NUMBERS_AT = 0;
const IDS_AT = NUMBERS_AT + BLOCK_ROWS * F64 * 8;
const DIGESTS_AT = IDS_AT + BLOCK_ROWS * U32 * 4;
const MODES_AT = DIGESTS_AT + BLOCK_ROWS * DIGEST_BYTES;
const BLOCK_BYTES = MODES_AT + BLOCK_ROWS * 2;

class FileBlock extends SpillBlock {
  digests!: Buffer;
  numbers!: Float64Array;
  ids!: Uint32Array;
  modes!: Uint16Array;
  /** Ids at WIDE or above, by row * U32 + field. */
  wideIds: Map<number, number> | undefined;
  /** Only the rows that have xattrs (most files have none). */
  xattrs: Map<number, Record<string, Buffer>> | undefined;
  used = 0;
  readonly layer: number;

  /** `spill`: where the block may go once complete; without one it stays in memory. */
  constructor(layer: number, spill: RowSpill | undefined) {
    super(BLOCK_BYTES, spill);
    this.layer = layer;
    this.attach(new ArrayBuffer(BLOCK_BYTES));
  }

  setViews(bytes: ArrayBuffer): void {
    this.numbers = new Float64Array(bytes, NUMBERS_AT, BLOCK_ROWS * F64);
    this.ids = new Uint32Array(bytes, IDS_AT, BLOCK_ROWS * U32);
    this.digests = Buffer.from(bytes, DIGESTS_AT, BLOCK_ROWS * DIGEST_BYTES);
    this.modes = new Uint16Array(bytes, MODES_AT, BLOCK_ROWS);
  }
}

/** What a row stores: the checked values of one regular file of the TOC. */
export type TocFileFields = Pick<TreeEntry, 'mode' | 'uid' | 'gid' | 'mtimeNs' | 'xattrs' | 'size'> & {
  /** `sha256:<64 lowercase hex>` (checked by the reader). */
  digest: string;
  offset: number;
  endOffset: number;
};

/**
 * A regular file of the TOC read from its row. It holds its path, its block and its row number
 * alone: a table of the new tree (path-table.ts) keeps a file as its path and a row reference
 * (`tocFileRow`) and makes this object again when it is asked for one (a short-lived object),
 * so that the plan holds no object per file.
 */
export class TocFile implements TreeEntry {
  readonly path: string;
  // Plain fields and no private methods: a class with a private method stamps a brand on every
  // instance (one more word per file, tens of thousands of them while a TOC is read).
  readonly block: FileBlock;
  readonly row: number;

  constructor(path: string, block: FileBlock, row: number) {
    this.path = path;
    this.block = block;
    this.row = row;
  }

  get type(): 'reg' {
    return 'reg';
  }
  get mode(): number {
    return this.block.inMemory().modes[this.row]!;
  }
  get uid(): number {
    return idOf(this.block, this.row, 0);
  }
  get gid(): number {
    return idOf(this.block, this.row, 1);
  }
  get mtimeNs(): bigint {
    const b = this.block.inMemory();
    const sec = b.numbers[this.row * F64 + 3]!;
    return BigInt(sec) * 1_000_000_000n + BigInt(b.ids[this.row * U32 + 2]!);
  }
  get xattrs(): Record<string, Buffer> {
    return this.block.xattrs?.get(this.row) ?? NO_XATTRS;
  }
  get size(): number {
    return this.block.inMemory().numbers[this.row * F64]!;
  }
  get digest(): string {
    const at = this.row * DIGEST_BYTES;
    return `sha256:${this.block.inMemory().digests.toString('hex', at, at + DIGEST_BYTES)}`;
  }
  get source(): ContentSource {
    const at = this.row * F64;
    const n = this.block.inMemory().numbers;
    return { layer: this.block.layer, offset: n[at + 1]!, endOffset: n[at + 2]! };
  }

  /** Further frames of this file follow its last one (TOC `chunk` entries): its range ends at `endOffset` now. */
  widenTo(endOffset: number): void {
    const b = this.block.inMemory();
    b.changed();
    b.numbers[this.row * F64 + 2] = endOffset;
  }
}

function idOf(block: FileBlock, row: number, field: number): number {
  const at = row * U32 + field;
  const id = block.inMemory().ids[at]!;
  return id === WIDE ? block.wideIds!.get(at)! : id;
}

/** Rows of a block, for a row reference: a block number times this plus the row. */
export const TOC_BLOCK_ROWS = BLOCK_ROWS;

export type { FileBlock };

/**
 * The rows of one layer's regular files, block by block. With a spill (row-spill.ts), each
 * complete block may leave memory, and the rows are read back when asked for.
 */
export class TocFiles {
  readonly #layer: number;
  readonly #spill: RowSpill | undefined;
  /** The block being filled (always in memory). */
  #block: FileBlock | undefined;

  constructor(layer: number, spill?: RowSpill) {
    this.#layer = layer;
    this.#spill = spill;
  }

  /** No more rows: the last block may leave memory too. */
  finish(): void {
    if (this.#block) this.#spill?.release(this.#block);
    this.#block = undefined;
  }

  add(path: string, f: TocFileFields): TocFile {
    let b = this.#block;
    if (!b || b.used === BLOCK_ROWS) {
      if (b) this.#spill?.release(b);
      this.#block = b = new FileBlock(this.#layer, this.#spill);
    }
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
