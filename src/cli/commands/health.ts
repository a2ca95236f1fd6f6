import type { Command, OptionValues } from '../command.ts';
import { optBool, optString } from '../command.ts';
import { TiuError } from '../../errors.ts';
import { bootHealth } from '../../agent/health.ts';
import { discoverChecks, runChecks, DEFAULT_CHECK_TIMEOUT_MS } from '../../deploy/health-checks.ts';
import type { CheckResult } from '../../deploy/health.ts';

class UsageError extends TiuError {
  constructor(message: string) {
    super('USAGE', message);
  }
}

function positiveInt(options: OptionValues, name: string, min: number, max: number): number | undefined {
  const text = optString(options, name);
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isInteger(n) || n < min || n > max)
    throw new UsageError(`--${name} must be an integer from ${min} to ${max}, got ${text}`);
  return n;
}

function checkLine(c: CheckResult): string {
  const how = c.ok ? 'ok' : c.timedOut ? 'FAILED (timed out)' : `FAILED (exit ${c.exitCode ?? 'none'})`;
  const out = !c.ok && c.output ? `\n    ${c.output.split('\n').slice(-5).join('\n    ')}` : '';
  return `  ${c.name}: ${how}${out}`;
}

const command: Command = {
  name: 'health',
  summary: 'Run the health checks; at boot, mark the snapshot good or roll back',
  usage: 'tiu health [--boot] [--sysroot DIR] [--max-attempts N] [--check-timeout SECONDS] [--no-reboot] [--json]',
  help:
    "Checks: executables in /usr/libexec/tiu/health.d/ (the image's) and /etc/tiu/health.d/ (the admin's,\n" +
    'same name replaces, empty file or /dev/null symlink disables), and openSUSE health-checker plugins\n' +
    'in /usr/lib/health-checker/*.sh (run with "check"). A check passes when it exits 0.\n' +
    'Without --boot the checks only run and report (exit 1 when one fails).\n' +
    '  --boot              what tiu-health.service runs: count the boot, run the checks, mark the booted\n' +
    '                      snapshot good (snapper userdata tiu-health=good); when a new snapshot fails,\n' +
    '                      or was not marked good after --max-attempts boots, mark it bad, make the\n' +
    '                      last good snapshot the default and reboot\n' +
    '  --max-attempts N    boots a new snapshot gets to be marked good (default 3)\n' +
    `  --check-timeout S   seconds each check may take (default ${DEFAULT_CHECK_TIMEOUT_MS / 1000})\n` +
    '  --no-reboot         roll back without rebooting',
  options: {
    boot: { type: 'boolean' },
    sysroot: { type: 'string' },
    'max-attempts': { type: 'string' },
    'check-timeout': { type: 'string' },
    'no-reboot': { type: 'boolean' },
  },
  positionals: [0, 0],
  async run(_pos, options, out) {
    const sysroot = optString(options, 'sysroot') ?? '/';
    const maxAttempts = positiveInt(options, 'max-attempts', 1, 100);
    const timeoutS = positiveInt(options, 'check-timeout', 1, 86400);
    const checkTimeoutMs = timeoutS === undefined ? undefined : timeoutS * 1000;
    if (!optBool(options, 'boot')) {
      const results = await runChecks(await discoverChecks(sysroot), checkTimeoutMs);
      const failed = results.filter((r) => !r.ok).map((r) => r.name);
      const human =
        results.length === 0
          ? 'no health checks installed'
          : results.map(checkLine).join('\n') +
            `\n${failed.length ? `${failed.length} of ${results.length} checks failed` : 'healthy'}`;
      out.result(human, { healthy: failed.length === 0, checks: results, failed });
      return failed.length ? 1 : 0;
    }
    const r = await bootHealth({
      sysroot,
      maxAttempts,
      checkTimeoutMs,
      reboot: !optBool(options, 'no-reboot'),
      log: (l) => out.info(`tiu-health: ${l}`),
    });
    const what = {
      good: `snapshot ${r.snapshot} is healthy: marked good`,
      verified: `snapshot ${r.snapshot} is healthy`,
      'failed-proven': `snapshot ${r.snapshot} fails its checks (${r.failed.join(', ')}) but was good before: not rolled back`,
      'rolled-back': `snapshot ${r.snapshot} is unhealthy (${r.failed.join(', ')}): snapshot ${r.rollbackTo} is the default${r.rebooting ? ', rebooting' : ''}`,
      'no-rollback-target': `snapshot ${r.snapshot} is unhealthy (${r.failed.join(', ')}) and there is no good snapshot to roll back to`,
    }[r.outcome];
    const settled =
      r.boot?.failed !== undefined
        ? [
            `snapshot ${r.boot.failed} never reached userspace (its boot counter ran out): marked bad, snapshot ${r.boot.backTo} is the default again`,
          ]
        : [];
    out.result([...settled, ...r.checks.map(checkLine), what].join('\n'), r);
    return r.outcome === 'good' || r.outcome === 'verified' ? 0 : 1;
  },
};

export default command;
