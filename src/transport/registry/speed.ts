/**
 * The minimum-throughput rule and the deadline of registry requests (like curl's
 * --speed-limit/--speed-time and --max-time): a registry that keeps a connection alive with a
 * byte now and then must not hold an update (or a copy) for ever, which the idle-socket
 * timeout alone allows.
 *
 *   - a request whose transfer stays below `minBytesPerSec` for `speedTimeMs` (measured over
 *     consecutive windows of that length, while tiu is waiting for the network rather than the
 *     network for tiu) ends with REGISTRY_TOO_SLOW;
 *   - no request takes longer than `deadlineFloorMs` plus its expected size at
 *     `minBytesPerSec` (a blob that keeps the minimum speed always finishes before it).
 *
 * Defaults suit devices on poor links: 1 KiB/s over 60 s, a 10 minute floor. tiu.conf sets
 * them (min-speed, speed-time, request-deadline); the environment overrides both for tests and
 * one-off runs: TIU_MIN_SPEED (bytes/s, K/M suffixes), TIU_SPEED_TIME and TIU_REQUEST_DEADLINE
 * (seconds). 0 turns a rule off.
 */
import { parseSize } from '../../format.ts';
import { TiuError } from '../../errors.ts';

export interface SpeedLimits {
  /** Bytes per second a transfer must keep up (0: no rule). */
  minBytesPerSec: number;
  /** Over this long. */
  speedTimeMs: number;
  /** Every request may take at least this long; 0: no deadline. */
  deadlineFloorMs: number;
}

export type SpeedSettings = Partial<SpeedLimits>;

export const DEFAULT_SPEED_LIMITS: SpeedLimits = { minBytesPerSec: 1024, speedTimeMs: 60_000, deadlineFloorMs: 600_000 };

function envSize(v: string | undefined, name: string): number | undefined {
  if (v === undefined || v === '') return undefined;
  const n = parseSize(v);
  if (n === undefined) throw new TiuError('USAGE', `${name}=${JSON.stringify(v)} is not a number of bytes per second (e.g. 1024, 1K, 2M)`);
  return n;
}

function envSeconds(v: string | undefined, name: string): number | undefined {
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new TiuError('USAGE', `${name}=${JSON.stringify(v)} is not a number of seconds`);
  return Math.round(n * 1000);
}

/** The limits in force: the defaults, then `settings` (tiu.conf), then the environment. */
export function speedLimits(settings: SpeedSettings = {}, env: NodeJS.ProcessEnv = process.env): SpeedLimits {
  const fromEnv: SpeedSettings = {};
  const min = envSize(env.TIU_MIN_SPEED, 'TIU_MIN_SPEED');
  if (min !== undefined) fromEnv.minBytesPerSec = min;
  const time = envSeconds(env.TIU_SPEED_TIME, 'TIU_SPEED_TIME');
  if (time !== undefined) fromEnv.speedTimeMs = time;
  const floor = envSeconds(env.TIU_REQUEST_DEADLINE, 'TIU_REQUEST_DEADLINE');
  if (floor !== undefined) fromEnv.deadlineFloorMs = floor;
  return { ...DEFAULT_SPEED_LIMITS, ...settings, ...fromEnv };
}

/**
 * How long a request expecting `expectedBytes` (undefined: unknown, small) may take in all;
 * Infinity for none. A transfer that keeps the minimum speed finishes before it.
 */
export function deadlineMs(l: SpeedLimits, expectedBytes: number | undefined): number {
  if (l.deadlineFloorMs <= 0) return Number.POSITIVE_INFINITY;
  if (!expectedBytes) return l.deadlineFloorMs;
  if (l.minBytesPerSec <= 0) return Number.POSITIVE_INFINITY;
  return l.deadlineFloorMs + Math.ceil((expectedBytes * 1000) / l.minBytesPerSec);
}

/**
 * The throughput rule as a pure state machine: `sample(now, bytes, waiting)` with the bytes
 * received so far; `waiting` false while the reader is behind (its buffer is full), which
 * restarts the window. Returns the bytes of a window that was too slow, else undefined.
 */
export class SpeedWindow {
  readonly #l: SpeedLimits;
  #start: number;
  #bytes: number;

  constructor(l: SpeedLimits, now: number, bytes = 0) {
    this.#l = l;
    this.#start = now;
    this.#bytes = bytes;
  }

  sample(now: number, bytes: number, waiting: boolean): number | undefined {
    if (this.#l.minBytesPerSec <= 0 || this.#l.speedTimeMs <= 0) return undefined;
    if (!waiting) {
      this.#start = now;
      this.#bytes = bytes;
      return undefined;
    }
    const elapsed = now - this.#start;
    if (elapsed < this.#l.speedTimeMs) return undefined;
    const got = bytes - this.#bytes;
    if ((got * 1000) / elapsed < this.#l.minBytesPerSec) return got;
    this.#start = now;
    this.#bytes = bytes;
    return undefined;
  }
}

/** A human rate: "1 KiB/s", "512 B/s". */
export function rate(bytesPerSec: number): string {
  if (bytesPerSec >= 1024 * 1024 && bytesPerSec % (1024 * 1024) === 0) return `${bytesPerSec / 1024 / 1024} MiB/s`;
  if (bytesPerSec >= 1024 && bytesPerSec % 1024 === 0) return `${bytesPerSec / 1024} KiB/s`;
  return `${bytesPerSec} B/s`;
}
