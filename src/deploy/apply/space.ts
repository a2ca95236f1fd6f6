/**
 * The free-space reserve: an update stops with DISK_FULL while a reserve is still free on the
 * filesystem it writes to (the running system shares it), instead of filling it to 100%.
 *
 *   - before a step, `checkRoom` compares the bytes the step is predicted to write with the
 *     free space minus the reserve (where the plan knows them: a delta's new files, a
 *     whole-layer download's blobs);
 *   - while writing, a `SpaceGuard` counts the bytes written and looks at statfs every few MiB
 *     (`wrote`), and bounds what the image's tar declares (`expand`): the new tree can reuse
 *     the old tree's content and the free space above the reserve, not more (zero files that
 *     would only be holes still cost the time to decompress them).
 *
 * The reserve is `disk-reserve` of tiu.conf: a percentage of the filesystem's size or a size
 * in bytes; by default the smaller of 5% and 1 GiB.
 */
import { statfs } from 'node:fs/promises';
import { TiuError } from '../../errors.ts';
import { humanSize, parseSize } from '../../format.ts';
import { showPath } from '../../layer/entry.ts';

export type DiskReserve = { percent: number } | { bytes: number };

export const DEFAULT_RESERVE_PERCENT = 5;
export const DEFAULT_RESERVE_MAX = 1024 * 1024 * 1024;

/** The reserve in bytes on a filesystem of `total` bytes. */
export function reserveBytes(r: DiskReserve | undefined, total: number): number {
  if (r === undefined) return Math.min(Math.floor((total * DEFAULT_RESERVE_PERCENT) / 100), DEFAULT_RESERVE_MAX);
  if ('percent' in r) return Math.floor((total * r.percent) / 100);
  return r.bytes;
}

/** `"5%"`, `"1G"`, `"512MiB"`, `"0"` or a number of bytes; undefined when not understood. */
export function parseReserve(v: unknown): DiskReserve | undefined {
  if (typeof v === 'number') return Number.isSafeInteger(v) && v >= 0 ? { bytes: v } : undefined;
  if (typeof v !== 'string') return undefined;
  const pct = /^\s*(\d+(?:\.\d+)?)\s*%\s*$/.exec(v);
  if (pct) {
    const p = Number(pct[1]);
    return p <= 50 ? { percent: p } : undefined;
  }
  const bytes = parseSize(v);
  return bytes === undefined ? undefined : { bytes };
}

export function describeReserve(r: DiskReserve | undefined): string {
  if (r === undefined) return `the smaller of ${DEFAULT_RESERVE_PERCENT}% and ${humanSize(DEFAULT_RESERVE_MAX)}`;
  return 'percent' in r ? `${r.percent}%` : humanSize(r.bytes);
}

export class DiskReserveError extends TiuError {
  constructor(fs: string, message: string, details: Record<string, unknown>) {
    super('DISK_FULL', message, { filesystem: fs, ...details });
  }
}

export interface FsSpace {
  /** Bytes an unprivileged writer may still use (f_bavail). */
  free: number;
  total: number;
  reserve: number;
}

export async function fsSpace(path: string, reserve: DiskReserve | undefined): Promise<FsSpace> {
  const st = await statfs(path);
  const total = st.blocks * st.bsize;
  return { free: st.bavail * st.bsize, total, reserve: reserveBytes(reserve, total) };
}

/**
 * DISK_FULL unless `predicted` more bytes fit on the filesystem of `path` with the reserve
 * still free. `what` says what would be written ("the new files of the update").
 */
export async function checkRoom(
  path: string,
  predicted: number,
  reserve: DiskReserve | undefined,
  what: string,
): Promise<FsSpace> {
  const s = await fsSpace(path, reserve);
  if (s.free - predicted < s.reserve) {
    throw new DiskReserveError(
      path,
      `no space left for ${what} on the filesystem of ${path}: ${humanSize(predicted)} to write, ${humanSize(s.free)} free, and a reserve of ${humanSize(s.reserve)} (disk-reserve: ${describeReserve(reserve)}) must stay free`,
      { predicted, free: s.free, reserve: s.reserve },
    );
  }
  return s;
}

/** Look at statfs after this many bytes written. */
export const CHECK_EVERY = 4 * 1024 * 1024;

/** Counts what an apply writes and stops it with DISK_FULL at the reserve. */
export class SpaceGuard {
  readonly path: string;
  readonly reserve: DiskReserve | undefined;
  readonly every: number;
  #since = 0;
  #expanded = 0;
  /** Content the tree may declare in all (set by `start`). */
  #limit = Number.POSITIVE_INFINITY;
  #reserveBytes = 0;

  constructor(path: string, reserve: DiskReserve | undefined, opts: { every?: number } = {}) {
    this.path = path;
    this.reserve = reserve;
    this.every = opts.every ?? CHECK_EVERY;
  }

  /**
   * Check the reserve now, and bound the content the new tree may declare: `reusable` bytes
   * (the old tree's files, which the apply shares or keeps) plus the free space above the reserve.
   */
  async start(reusable = 0): Promise<void> {
    const s = await this.check();
    this.#limit = reusable + (s.free - s.reserve);
  }

  /** DISK_FULL when the free space is down to the reserve. */
  async check(): Promise<FsSpace> {
    const s = await fsSpace(this.path, this.reserve);
    this.#reserveBytes = s.reserve;
    if (s.free <= s.reserve) {
      throw new DiskReserveError(
        this.path,
        `no space left on the filesystem of ${this.path} above its reserve: ${humanSize(s.free)} free, and a reserve of ${humanSize(s.reserve)} (disk-reserve: ${describeReserve(this.reserve)}) must stay free`,
        { free: s.free, reserve: s.reserve },
      );
    }
    return s;
  }

  /** `n` more bytes written (or an entry's metadata); statfs every `every` bytes. */
  async wrote(n: number): Promise<void> {
    this.#since += n;
    if (this.#since < this.every) return;
    this.#since = 0;
    await this.check();
  }

  /** The tree declares `n` more bytes of content (`entry`: its name, quoted only for a refusal). */
  /** `entry`: the tar name (a binary string), shown only in a refusal. */
  expand(n: number, entry: string): void {
    this.#expanded += n;
    if (this.#expanded > this.#limit) {
      const what = JSON.stringify(showPath(entry.slice(0, 200)));
      throw new DiskReserveError(
        this.path,
        `no space left for the image on the filesystem of ${this.path}: its content reaches ${humanSize(this.#expanded)} at ${what}, more than the old tree's files and the free space above the reserve of ${humanSize(this.#reserveBytes)} (disk-reserve: ${describeReserve(this.reserve)}) hold`,
        { expanded: this.#expanded, limit: this.#limit, entry: what },
      );
    }
  }
}
