/**
 * Blocks of per-file rows set aside in a file of the cache, at most `resident` of them in memory.
 *
 * An update holds a row for every file of the image while it plans, fetches and writes (the TOC
 * rows of toc-files.ts: 78 bytes a file, ~2.9 MiB for the 37,121 files of the bench's larger tree
 * in a heap snapshot of its update): memory that grows with the image. Here a complete block may leave memory: it is written to a file (once, or again
 * when it changed) and read back when a row of it is next asked for. The planner and the writing
 * go through the files in path order, a few blocks at a time (one per layer), so a small window
 * serves them; a read is of the page cache. The file is unlinked as soon as it is made: nothing
 * is left on disk whatever ends the process, and nobody else can open it.
 *
 * The file takes only what the disk has above its reserve (tiu.conf `disk-reserve`, as the
 * download's room is judged), measured when it is made: past that, and on a failed write (a full
 * disk), blocks stay in memory, as without a spill; the update reports a full disk where it
 * writes its own data. A failed read is an error (SPILL_LOST): the rows are nowhere else.
 */
import { closeSync, openSync, readSync, statfsSync, unlinkSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { TiuError } from '../../errors.ts';
import { detach } from '../../util/buffer-pool.ts';
import { reserveBytes, type DiskReserve } from './space.ts';

/** Blocks kept in memory: a layer's current block in each of the planner's interleaved passes, and room for hardlink targets. */
export const RESIDENT_BLOCKS = 32;

/**
 * A block of rows in one buffer, which a spill may take out of memory and give back. A subclass
 * sets its typed views on the buffer (`setViews`); every read of a row goes through `inMemory()`
 * and every write marks the block `changed()`.
 */
export abstract class SpillBlock {
  /** The rows' bytes while in memory; undefined while only in the spill's file. */
  bytes: ArrayBuffer | undefined;
  /** Where the block is in the spill's file (-1: not written yet). */
  offset = -1;
  /** The file lacks the block's current bytes. */
  dirty = true;
  /** Complete: handed to the spill, it may leave memory. */
  released = false;
  readonly size: number;
  readonly spill: RowSpill | undefined;

  /** A subclass then attaches a new buffer of `size` bytes. */
  constructor(size: number, spill: RowSpill | undefined) {
    this.size = size;
    this.spill = spill;
  }

  abstract setViews(bytes: ArrayBuffer): void;

  attach(bytes: ArrayBuffer): void {
    this.bytes = bytes;
    this.setViews(bytes);
  }

  /** This block, its rows in memory (read back from the spill if they left). */
  inMemory(): this {
    if (this.bytes === undefined) this.spill!.load(this);
    return this;
  }

  /** Its rows are being changed: a copy in the file is stale (written again when it leaves memory). */
  changed(): void {
    this.dirty = true;
  }

  /** Free its memory now; its views read as empty until the next `attach`. */
  drop(): void {
    const bytes = this.bytes;
    this.bytes = undefined;
    if (bytes) detach(bytes);
  }
}

/** Closes a spill's file if the spill is collected without `close()` (a caller that did not own its end). */
const closing = new FinalizationRegistry<number>((fd) => {
  try {
    closeSync(fd);
  } catch {
    // already closed: nothing to give back
  }
});

export class RowSpill {
  #fd: number | undefined;
  #end = 0;
  /** The most the file may grow to. */
  readonly #limit: number;
  readonly #resident: number;
  /** Blocks in memory that may leave it, oldest first (from `#head` on). */
  #queue: SpillBlock[] = [];
  #head = 0;
  /** A write failed: every block stays in memory from now on. */
  #stuck = false;

  /**
   * `fd`: a file open for reading and writing that nothing else uses (tests give one, e.g.
   * /dev/full); `limit`: the bytes it may take.
   */
  constructor(fd: number, resident = RESIDENT_BLOCKS, limit = Number.MAX_SAFE_INTEGER) {
    this.#fd = fd;
    this.#resident = resident;
    this.#limit = limit;
    closing.register(this, fd, this);
  }

  /**
   * A spill in a new, unlinked file of `dir` (the cache), which takes at most what its
   * filesystem has free above `reserve`; undefined when none can be made there (a read-only or
   * missing directory, no room): the rows then stay in memory, as without a spill.
   */
  static open(dir: string, reserve?: DiskReserve, resident = RESIDENT_BLOCKS): RowSpill | undefined {
    const path = join(dir, `.tiu-rows-${process.pid}-${randomBytes(6).toString('hex')}`);
    let fd: number;
    let room: number;
    try {
      const st = statfsSync(dir);
      room = st.bavail * st.bsize - reserveBytes(reserve, st.blocks * st.bsize);
      if (room <= 0) return undefined;
      // O_EXCL: never a file (or a link) that is there already.
      fd = openSync(path, 'wx+', 0o600);
    } catch {
      return undefined;
    }
    try {
      unlinkSync(path);
    } catch {
      closeSync(fd);
      return undefined;
    }
    return new RowSpill(fd, resident, room);
  }

  /** Blocks in memory that may leave it (for tests). */
  get inMemory(): number {
    return this.#queue.length - this.#head;
  }

  /** `b` is complete: from now on it may leave memory (its bytes are written when it does). Once is enough. */
  release(b: SpillBlock): void {
    if (b.released) return;
    b.released = true;
    this.#enqueue(b);
  }

  /** Bring `b` back into memory (its `bytes` are undefined): read from where it was written. */
  load(b: SpillBlock): void {
    if (this.#fd === undefined || b.offset < 0)
      throw new TiuError('INTERNAL', 'a block of rows that is neither in memory nor in the spill file');
    const size = b.size;
    const bytes = new ArrayBuffer(size);
    const view = new Uint8Array(bytes);
    let done = 0;
    try {
      while (done < size) {
        const n = readSync(this.#fd, view, done, size - done, b.offset + done);
        if (n === 0) break;
        done += n;
      }
    } catch (e) {
      throw lost(`${(e as Error).message}`, e);
    }
    if (done < size) throw lost(`the file ended after ${b.offset + done} of ${b.offset + size} bytes`);
    b.attach(bytes);
    this.#enqueue(b);
  }

  /** Close the file: no block that left memory can come back after this. */
  close(): void {
    if (this.#fd === undefined) return;
    closing.unregister(this);
    try {
      closeSync(this.#fd);
    } finally {
      this.#fd = undefined;
    }
  }

  #enqueue(b: SpillBlock): void {
    this.#queue.push(b);
    if (this.#stuck || this.#fd === undefined) return;
    while (this.inMemory > this.#resident) {
      const old = this.#queue[this.#head]!;
      if (!this.#setAside(old)) return;
      this.#head++;
    }
    // The queue's front is dropped now and then rather than shifted per block.
    if (this.#head > 1024) {
      this.#queue = this.#queue.slice(this.#head);
      this.#head = 0;
    }
  }

  /** Write `b` (if the file lacks its current bytes) and free its memory; false: it stays (a write failed). */
  #setAside(b: SpillBlock): boolean {
    const bytes = b.bytes;
    if (!bytes) return true; // its owner let it go (a released scan): nothing to keep
    if (b.dirty) {
      const at = b.offset >= 0 ? b.offset : this.#end;
      const view = new Uint8Array(bytes);
      if (at + view.length > this.#limit) {
        this.#stuck = true;
        return false;
      }
      try {
        for (let done = 0; done < view.length;) done += writeSync(this.#fd!, view, done, view.length - done, at + done);
      } catch {
        this.#stuck = true;
        return false;
      }
      if (b.offset < 0) {
        b.offset = at;
        this.#end = at + view.length;
      }
      b.dirty = false;
    }
    b.drop();
    return true;
  }
}

function lost(why: string, cause?: unknown): TiuError {
  return new TiuError(
    'SPILL_LOST',
    `rows set aside in a temporary file of the cache could not be read back: ${why}`,
    { why },
    cause === undefined ? undefined : { cause },
  );
}
