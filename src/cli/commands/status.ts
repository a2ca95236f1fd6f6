import type { Command } from '../command.ts';
import { optString } from '../command.ts';
import { join } from 'node:path';
import { openContext, readState, snapshotPath } from '../../deploy/state.ts';
import { pendingEtcConflicts } from '../../deploy/etc-conflicts.ts';
import { shortDigest } from '../../format.ts';
import { loadConfig } from '../../deploy/config.ts';
import { detectBoot, type BootStatus } from '../../deploy/boot/index.ts';
import { HEALTH_UD } from '../../deploy/health.ts';
import { TocStore } from '../../deploy/delta/index.ts';
import { snapshotAge } from '../../deploy/snapshot-age.ts';
import { hostPlatform } from '../../oci/platform.ts';

const command: Command = {
  name: 'status',
  summary: 'Show the snapshots, what tiu deployed in them, and which one runs and boots next',
  usage: 'tiu status [--sysroot DIR] [--json]',
  help:
    'Everything shown comes from snapper (userdata tiu-image, tiu-digest, tiu-in-progress,\n' +
    "tiu-version, tiu-created: the image's signed org.opencontainers.image.version and .created,\n" +
    'which downgrade protection compares; for snapshots committed before tiu recorded them, from\n' +
    "the image's manifests kept in the cache), the\n" +
    'btrfs default subvolume and what is mounted: B = booted (running), D = default (boots next).\n' +
    'health: good = a boot passed its health checks, bad = it failed them and was rolled back,\n' +
    '?N = booted N times without a verdict yet (tiu health --boot).\n' +
    'boot: the systemd-boot entry of the snapshot, when the host boots with systemd-boot:\n' +
    'ok = blessed, +N = N tries left (+N-D: D tries done), bad = no tries left, - = no entry;\n' +
    "~ = parked (newer than the default: not the loader's choice).\n" +
    '/etc conflicts are listed for snapshots whose update reported some, as long as their\n' +
    '<file>.tiunew is still there.',
  options: { sysroot: { type: 'string' } },
  positionals: [0, 0],
  async run(_p, options, out) {
    const ctx = await openContext(optString(options, 'sysroot') ?? '/');
    const state = await readState(ctx);
    const config = await loadConfig(ctx.sysroot);
    const sd = await detectBoot(ctx.sysroot, config);
    const boot: BootStatus = sd ? await sd.status() : { integration: 'none', entries: {} };
    const store = TocStore.open(join(ctx.sysroot, config.cache), { write: false });
    const platform = hostPlatform();
    const snapshots = [];
    for (const s of state.snapshots) {
      const { age, from } = await snapshotAge(s, store, platform);
      const conflicts =
        s.etcConflicts > 0 ? await pendingEtcConflicts(join(snapshotPath(ctx.sysroot, s.number), 'etc')) : [];
      snapshots.push({
        ...s,
        version: age?.version ?? null,
        created: age?.created ?? null,
        ageFrom: from,
        pendingEtcConflicts: conflicts,
        ...(sd ? { bootEntry: boot.entries[s.number] ?? null } : {}),
      });
    }
    const lines = [
      `  #  BD  health  ${sd ? 'boot    ' : ''}image                                     digest               version     created               date                 description`,
    ];
    for (const s of snapshots) {
      const marks = `${s.booted ? 'B' : ' '}${s.default ? 'D' : ' '}`;
      const img = s.inProgress ? `(unfinished) ${s.image ?? ''}` : (s.image ?? '-');
      const health = s.health ?? (s.bootAttempts > 0 ? `?${s.bootAttempts}` : '-');
      const e = boot.entries[s.number];
      const entry = !e
        ? '-'
        : `${e.parked ? '~' : ''}${e.state === 'blessed' ? 'ok' : e.state === 'bad' ? 'bad' : `+${e.triesLeft}${e.triesDone !== undefined ? `-${e.triesDone}` : ''}`}`;
      lines.push(
        `${String(s.number).padStart(3)}  ${marks}  ${health.padEnd(6)}  ${sd ? `${entry.padEnd(6)}  ` : ''}${img.padEnd(40)}  ${(s.digest ? shortDigest(s.digest) : '-').padEnd(19)}  ${(s.version ?? '-').padEnd(10)}  ${(s.created ?? '-').padEnd(20)}  ${s.date.padEnd(19)}  ${s.description}`,
      );
    }
    for (const s of snapshots)
      if (s.health === 'bad' && s.userdata[HEALTH_UD.failed])
        lines.push(`snapshot ${s.number} is bad: ${s.userdata[HEALTH_UD.failed]}`);
    lines.push(
      sd
        ? `boot integration: systemd-boot on ${boot.esp} (loader.conf default ${boot.loaderDefault ?? '-'}; next boot: ${boot.selected ?? 'no entry'})`
        : 'boot integration: none (tiu sets the btrfs default only)',
    );
    if (state.staged !== undefined)
      lines.push(
        `\nsnapshot ${state.staged} boots next; snapshot ${state.booted} runs now ('tiu rollback' keeps ${state.booted})`,
      );
    else if (state.rollback !== undefined)
      lines.push(`\n'tiu rollback' would make snapshot ${state.rollback} the default`);
    for (const s of snapshots) {
      for (const c of s.pendingEtcConflicts)
        lines.push(
          `snapshot ${s.number}: /etc conflict: ${c} kept as changed locally, the image's version is ${c}.tiunew`,
        );
    }
    out.result(lines.join('\n'), {
      sysroot: state.sysroot,
      boot: {
        integration: boot.integration,
        esp: boot.esp,
        loaderDefault: boot.loaderDefault,
        efiEntryDefault: boot.efiEntryDefault,
        selected: boot.selected,
      },
      booted: state.booted,
      default: state.default,
      staged: state.staged,
      rollback: state.rollback,
      snapshots,
    });
  },
};
export default command;
