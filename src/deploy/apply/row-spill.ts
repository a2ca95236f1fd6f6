/**
 * Blocks of per-file rows set aside in a file of the cache, at most `resident` of them in memory.
 *
 * An update holds a row for every file of the image while it plans, fetches and writes (the TOC
 * rows of toc-files.ts: ~80 bytes a file, 2.9 MiB on the bench's larger tree): memory that grows
 * with the image. Here a complete block may leave memory: it is written to a file (once, or again
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

/** A block of rows the spill may take out of memory and give back. */
export interface SpillBlock {
  /** The rows' bytes while in memory; undefined while only in the file. */
  readonly bytes: ArrayBuffer | undefined;
  /** Set its views on `bytes` (read back), or drop them (undefined: it left memory). */
  attach(bytes: ArrayBuffer | undefined): void;
}

/** Where a block is in the file and whether its bytes there are current. */
interface Placed {
  offset: number;
  dirty: boolean;
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
  readonly #placed = new WeakMap<SpillBlock, Placed>();
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

  /** `b` is complete: from now on it may leave memory (its bytes are written when it does). Again: as `changed`. */
  release(b: SpillBlock): void {
    if (this.#placed.has(b)) return this.changed(b);
    this.#placed.set(b, { offset: -1, dirty: true });
    this.#enqueue(b);
  }

  /** `b`'s rows changed after `release`: they are written again when it leaves memory. */
  changed(b: SpillBlock): void {
    const p = this.#placed.get(b);
    if (p) p.dirty = true;
  }

  /** Bring `b` back into memory (its `bytes` are undefined): read from where it was written. */
  load(b: SpillBlock, size: number): void {
    const p = this.#placed.get(b);
    if (this.#fd === undefined || !p || p.offset < 0)
      throw new TiuError('INTERNAL', 'a block of rows that is neither in memory nor in the spill file');
    const bytes = new ArrayBuffer(size);
    const view = new Uint8Array(bytes);
    let done = 0;
    try {
      while (done < size) {
        const n = readSync(this.#fd, view, done, size - done, p.offset + done);
        if (n === 0) break;
        done += n;
      }
    } catch (e) {
      throw lost(`${(e as Error).message}`, e);
    }
    if (done < size) throw lost(`the file ended after ${p.offset + done} of ${p.offset + size} bytes`);
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
    const p = this.#placed.get(b)!;
    if (!bytes) return true; // its owner let it go (a released scan): nothing to keep
    if (p.dirty) {
      const at = p.offset >= 0 ? p.offset : this.#end;
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
      if (p.offset < 0) {
        p.offset = at;
        this.#end = at + view.length;
      }
      p.dirty = false;
    }
    b.attach(undefined);
    detach(bytes);
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
