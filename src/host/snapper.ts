/**
 * snapper, run without D-Bus on a root directory (`/` or a mounted sysroot) and its `root`
 * config. Facts about Debian's snapper 0.10.4 this relies on (checked by the integration
 * tests): `--jsonout list` works; `create --from N --read-write` snapshots only the root
 * subvolume (a nested /etc subvolume comes out as an empty directory); `modify` has no
 * `--read-only` and no `--default`; an empty userdata value removes the key; `delete` fails
 * while the snapshot still holds a nested subvolume.
 */
import { run } from './exec.ts';
import { TiuError } from '../errors.ts';

export class SnapperError extends TiuError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super('SNAPPER_FAILED', message, details);
  }
}

export interface SnapperSnapshot {
  number: number;
  type: string;
  default: boolean;
  active: boolean;
  date: string;
  description: string;
  cleanup: string;
  userdata: Record<string, string>;
}

export interface Snapper {
  readonly root: string;
  readonly config: string;
  list(): Promise<SnapperSnapshot[]>;
  create(opts: {
    from: number;
    readWrite: boolean;
    description: string;
    cleanup?: string;
    userdata?: Record<string, string>;
  }): Promise<number>;
  modify(n: number, opts: { description?: string; cleanup?: string; userdata?: Record<string, string> }): Promise<void>;
  delete(n: number): Promise<void>;
}

/** Userdata as snapper's command line takes it: `k=v,k2=v2`; an empty value removes the key. */
export function formatUserdata(data: Record<string, string>): string {
  return Object.entries(data)
    .map(([k, v]) => {
      if (!/^[A-Za-z0-9_.-]+$/.test(k)) throw new SnapperError(`invalid snapper userdata key '${k}'`, { key: k });
      if (/[,=\n]/.test(v))
        throw new SnapperError(`snapper userdata value for '${k}' contains ',', '=' or a newline: '${v}'`, {
          key: k,
          value: v,
        });
      return `${k}=${v}`;
    })
    .join(',');
}

function parseList(json: string, config: string): SnapperSnapshot[] {
  let doc: unknown;
  try {
    doc = JSON.parse(json);
  } catch {
    throw new SnapperError(`snapper --jsonout list printed something that is not JSON: ${json.slice(0, 200)}`);
  }
  const rows = (doc as Record<string, unknown> | null)?.[config];
  if (!Array.isArray(rows)) throw new SnapperError(`snapper --jsonout list has no '${config}' array`);
  const str = (v: unknown): string => (typeof v === 'string' ? v : typeof v === 'number' ? String(v) : '');
  return rows.map((raw: unknown) => {
    const r = raw as Record<string, unknown>;
    const ud = r.userdata && typeof r.userdata === 'object' ? (r.userdata as Record<string, unknown>) : {};
    return {
      number: Number(r.number),
      type: str(r.type),
      default: r.default === true,
      active: r.active === true,
      date: str(r.date),
      description: str(r.description),
      cleanup: str(r.cleanup),
      userdata: Object.fromEntries(Object.entries(ud).map(([k, v]) => [k, str(v)])),
    };
  });
}

/** Whether the snapper program can be run here. */
export async function snapperInstalled(): Promise<boolean> {
  try {
    await run('snapper', ['--version']);
    return true;
  } catch {
    return false;
  }
}

export function snapper(root = '/', config = 'root'): Snapper {
  const base = ['--no-dbus', ...(root !== '/' ? ['--root', root] : []), '-c', config];
  const sn = (args: string[]) => run('snapper', [...base, ...args]);
  return {
    root,
    config,
    async list() {
      const r = await run('snapper', [
        '--jsonout',
        ...base,
        'list',
        '--columns',
        'number,type,default,active,date,description,cleanup,userdata',
      ]);
      return parseList(r.stdout, config).filter((s) => s.number !== 0);
    },
    async create(o) {
      const args = [
        'create',
        '--from',
        String(o.from),
        o.readWrite ? '--read-write' : '--read-only',
        '--print-number',
        '--description',
        o.description,
      ];
      if (o.cleanup) args.push('--cleanup-algorithm', o.cleanup);
      if (o.userdata && Object.keys(o.userdata).length) args.push('--userdata', formatUserdata(o.userdata));
      const r = await sn(args);
      const n = Number(r.stdout.trim());
      if (!Number.isInteger(n) || n <= 0)
        throw new SnapperError(`snapper create printed '${r.stdout.trim()}' instead of a snapshot number`);
      return n;
    },
    async modify(n, o) {
      const args = ['modify'];
      if (o.description !== undefined) args.push('--description', o.description);
      if (o.cleanup !== undefined) args.push('--cleanup-algorithm', o.cleanup);
      if (o.userdata && Object.keys(o.userdata).length) args.push('--userdata', formatUserdata(o.userdata));
      args.push(String(n));
      await sn(args);
    },
    async delete(n) {
      await sn(['delete', String(n)]);
    },
  };
}
