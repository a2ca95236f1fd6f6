/**
 * The host's deployment state, read from snapper (the snapshot list and its userdata), the
 * btrfs default subvolume and what is mounted at the sysroot. Nothing here comes from a side
 * file: snapper's userdata is the source of truth for what tiu put into a snapshot.
 */
import { join } from 'node:path';
import { realpath } from 'node:fs/promises';
import { snapper as openSnapper, snapperInstalled, type Snapper, type SnapperSnapshot } from '../host/snapper.ts';
import { plainSnapshots } from './plain-snapshots.ts';
import { existsSync } from 'node:fs';
import { TiuError } from '../errors.ts';
import { attemptsOf, healthOf, type HealthMark } from './health.ts';
import { bootedSnapshot, defaultSnapshot } from './snapshot-location.ts';
import { ageFrom, normalCreated, normalVersion, type ImageAge } from './image-age.ts';
import { escapeUserdata, unescapeUserdata } from './userdata-text.ts';

export { bootedSnapshot, defaultSnapshot, snapshotNumberOf, snapshotPath } from './snapshot-location.ts';

/** Userdata keys tiu writes. */
export const UD = {
  inProgress: 'tiu-in-progress',
  image: 'tiu-image',
  digest: 'tiu-digest',
  etcConflicts: 'tiu-etc-conflicts',
  /** The image's signed created time and version (./image-age.ts), escaped (./userdata-text.ts). */
  created: 'tiu-created',
  version: 'tiu-version',
} as const;

export class NotMicroOSError extends TiuError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super('SYSROOT_NOT_SNAPSHOT', message, details);
  }
}

export interface SnapshotState {
  number: number;
  description: string;
  date: string;
  /** The image reference and manifest digest tiu deployed into it (from userdata). */
  image?: string;
  digest?: string;
  /** The deployed image's signed created time and version, as recorded at commit (absent before issue 17). */
  created?: string;
  version?: string;
  /** Marked by an update that has not finished (yet, or ever: a crash). */
  inProgress: boolean;
  etcConflicts: number;
  /** The boot health verdict (tiu health --boot): good once a boot passed, bad when it was rolled back. */
  health?: HealthMark;
  /** Boots counted by the health check before the verdict. */
  bootAttempts: number;
  booted: boolean;
  default: boolean;
  userdata: Record<string, string>;
}

export interface SystemState {
  sysroot: string;
  snapshots: SnapshotState[];
  booted?: number;
  default?: number;
  /** The default when it is not what runs: the next boot starts it. */
  staged?: number;
  /** What `tiu rollback` without a number picks. */
  rollback?: number;
}

export interface Context {
  sysroot: string;
  /** snapper itself, or plain btrfs keeping snapper's info.xml where snapper is absent. */
  snapper: Snapper;
  backend: 'snapper' | 'btrfs';
}

/**
 * The system at `sysroot`: snapper with its `root` config when snapper is installed and the
 * system has that config; plain btrfs otherwise (or when `backend` says so).
 */
export async function openContext(sysroot = '/', opts: { backend?: 'snapper' | 'btrfs' } = {}): Promise<Context> {
  const real = await realpath(sysroot).catch(() => {
    throw new NotMicroOSError(`system root ${sysroot} does not exist`, { sysroot });
  });
  if (!existsSync(join(real, '.snapshots'))) {
    throw new NotMicroOSError(`${real} has no /.snapshots: not a snapshot-based system`, { sysroot: real });
  }
  const backend =
    opts.backend ??
    (existsSync(join(real, 'etc/snapper/configs/root')) && (await snapperInstalled()) ? 'snapper' : 'btrfs');
  return { sysroot: real, snapper: backend === 'snapper' ? openSnapper(real) : plainSnapshots(real), backend };
}

/** The age recorded in userdata; a value tiu did not write (not exactly escaped, not valid) counts as absent. */
function recordedAge(userdata: Record<string, string>): ImageAge {
  const raw = (k: string) => (userdata[k] ? unescapeUserdata(userdata[k]) : undefined);
  return ageFrom(normalCreated(raw(UD.created)), normalVersion(raw(UD.version)));
}

/** The userdata that records `age` (escaped; a value too long to record is left out). */
export function ageUserdata(age: ImageAge | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of [
    [UD.created, age?.created],
    [UD.version, age?.version],
  ] as const) {
    const text = v === undefined ? undefined : escapeUserdata(v);
    if (text) out[k] = text;
  }
  return out;
}

/** The pure part: snapper rows + booted + default -> state. */
export function deriveState(
  sysroot: string,
  rows: SnapperSnapshot[],
  booted: number | undefined,
  def: number | undefined,
): SystemState {
  const snapshots: SnapshotState[] = rows
    .filter((r) => r.number > 0)
    .map((r) => ({
      number: r.number,
      description: r.description,
      date: r.date,
      image: r.userdata[UD.image] || undefined,
      digest: r.userdata[UD.digest] || undefined,
      ...recordedAge(r.userdata),
      inProgress: r.userdata[UD.inProgress] === 'yes',
      etcConflicts: Number(r.userdata[UD.etcConflicts] ?? 0) || 0,
      health: healthOf(r),
      bootAttempts: attemptsOf(r),
      booted: r.number === booted,
      default: r.number === def,
      userdata: r.userdata,
    }))
    .sort((a, b) => a.number - b.number);
  const state: SystemState = { sysroot, snapshots, booted, default: def };
  if (def !== undefined && booted !== undefined && def !== booted) state.staged = def;
  state.rollback = pickRollback(state);
  return state;
}

/**
 * The previous good snapshot: while an update is staged, the running one (undo the update);
 * otherwise the newest finished snapshot older than the default that the health check has not
 * marked bad, preferring one it marked good.
 */
export function pickRollback(state: SystemState): number | undefined {
  if (state.staged !== undefined && state.booted !== undefined) return state.booted;
  const def = state.default;
  if (def === undefined) return undefined;
  const older = state.snapshots.filter((s) => s.number < def && !s.inProgress && s.health !== 'bad');
  return (older.filter((s) => s.health === 'good').at(-1) ?? older.at(-1))?.number;
}

export async function readState(ctx: Context): Promise<SystemState> {
  const [rows, booted, def] = await Promise.all([
    ctx.snapper.list(),
    bootedSnapshot(ctx.sysroot),
    defaultSnapshot(ctx.sysroot),
  ]);
  return deriveState(ctx.sysroot, rows, booted, def);
}
