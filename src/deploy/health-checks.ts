/**
 * Which health checks a system has, and running them.
 *
 *   /usr/libexec/tiu/health.d/*     checks the image brings (run with no arguments)
 *   /etc/tiu/health.d/*             the admin's; a file with the same name replaces the image's,
 *                                   an empty file or a symlink to /dev/null disables it
 *   /usr/lib/health-checker/*.sh    openSUSE health-checker plugins (run with `check`)
 *
 * Checks run one after another in name order; a check passes when it exits 0 in time.
 */
import { readdir, stat, lstat, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { runCheckProgram } from '../host/checks.ts';
import type { CheckResult } from './health.ts';

export const CHECK_DIRS = {
  image: '/usr/libexec/tiu/health.d',
  admin: '/etc/tiu/health.d',
  healthChecker: '/usr/lib/health-checker',
} as const;

export const DEFAULT_CHECK_TIMEOUT_MS = 120_000;

export interface HealthCheck {
  name: string;
  path: string;
  args: string[];
}

async function entries(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).filter(
      (n) => !n.startsWith('.') && !n.endsWith('~') && !n.endsWith('.rpmnew') && !n.endsWith('.rpmsave'),
    );
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
}

async function isMasked(path: string): Promise<boolean> {
  const l = await lstat(path);
  if (l.isSymbolicLink()) return (await readlink(path)) === '/dev/null';
  return l.isFile() && l.size === 0;
}

/** The checks of the system at `root`, in the order they run. */
export async function discoverChecks(root = '/'): Promise<HealthCheck[]> {
  const byName = new Map<string, string>();
  for (const n of await entries(join(root, CHECK_DIRS.image))) byName.set(n, join(root, CHECK_DIRS.image, n));
  for (const n of await entries(join(root, CHECK_DIRS.admin))) byName.set(n, join(root, CHECK_DIRS.admin, n));
  const checks: HealthCheck[] = [];
  for (const [name, path] of [...byName].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    if (await isMasked(path)) continue;
    const s = await stat(path).catch(() => undefined);
    if (s?.isFile()) checks.push({ name, path, args: [] });
  }
  const hc = (await entries(join(root, CHECK_DIRS.healthChecker))).filter((n) => n.endsWith('.sh')).sort();
  for (const n of hc)
    checks.push({ name: `health-checker:${n}`, path: join(root, CHECK_DIRS.healthChecker, n), args: ['check'] });
  return checks;
}

export async function runChecks(checks: HealthCheck[], timeoutMs = DEFAULT_CHECK_TIMEOUT_MS): Promise<CheckResult[]> {
  const out: CheckResult[] = [];
  for (const c of checks) {
    const r = await runCheckProgram(c.path, c.args, timeoutMs);
    const output = r.startError ? `could not run ${c.path}: ${r.startError}` : r.output;
    out.push({
      name: c.name,
      path: c.path,
      ok: r.exitCode === 0,
      exitCode: r.exitCode,
      timedOut: r.timedOut || undefined,
      output,
    });
  }
  return out;
}
