import type { Command } from '../command.ts';
import { optBool, optString } from '../command.ts';
import { TiuError } from '../../errors.ts';
import { checkUpdate } from '../../deploy/update/check.ts';
import { update } from '../../deploy/update/index.ts';
import { describeTransfer } from '../../deploy/delta/index.ts';
import { describeSkipped } from '../../deploy/apply/reserved.ts';
import { describeAge } from '../../deploy/image-age.ts';
import { productionDeps } from '../../deploy/wiring.ts';
import { reboot } from '../../host/system.ts';
import { humanSize, shortDigest } from '../../format.ts';

const command: Command = {
  name: 'update',
  summary: 'Write an OS image into a new snapshot and make it the next boot',
  usage:
    'tiu update [REF] [--sysroot DIR] [--check] [--transfer auto|delta|whole-layer] [--download-only] [--offline] [--allow-downgrade] [--reboot] [--json]',
  help:
    'REF: docker://HOST/REPO:TAG, oci:/PATH[:TAG] (a USB stick), oci-archive:/FILE.tar[:TAG];\n' +
    "default: 'image' in /etc/tiu/tiu.conf. The signature policy is enforced; the running system\n" +
    'is never touched: the new snapshot becomes the default only when everything succeeded.\n' +
    '  --sysroot DIR     operate on the system mounted at DIR instead of /\n' +
    '  --download-only   fetch and verify into the cache (/var/cache/tiu) and stop\n' +
    '  --offline         update from the cache only\n' +
    '  --reboot          reboot into the new snapshot when it is ready\n' +
    '  --check           write nothing; say whether an update exists, how many bytes it would\n' +
    '                    download and how many files it would change\n' +
    '  --transfer MODE   auto (default): only the files this system lacks, by HTTP Range, where\n' +
    '                    the source and its layers allow it, else whole layers; delta: fail\n' +
    '                    instead of downloading whole layers; whole-layer: never by Range\n' +
    '  --allow-downgrade install an image older than the one this system runs or has pending\n' +
    "                    (by the signed manifest's org.opencontainers.image.created and .version);\n" +
    '                    without it such an image is refused before anything is downloaded\n' +
    'Exit status: 0 done (or, with --check, nothing to do or an update available), 1 failed,\n' +
    '2 wrong command line, 4 SIGNATURE_EXPIRED (tiu.conf require-signature-expiry and no\n' +
    'accepted signature unexpired), 5 DOWNGRADE (the image is older; --check says so the same way).\n' +
    'docs/errors.md lists every code.',
  options: {
    sysroot: { type: 'string' },
    'download-only': { type: 'boolean' },
    offline: { type: 'boolean' },
    reboot: { type: 'boolean' },
    check: { type: 'boolean' },
    transfer: { type: 'string' },
    'allow-downgrade': { type: 'boolean' },
  },
  positionals: [0, 1],
  async run([reference], options, out) {
    const sysroot = optString(options, 'sysroot') ?? '/';
    const wantReboot = optBool(options, 'reboot');
    if (wantReboot && sysroot !== '/')
      throw new TiuError('USAGE', '--reboot reboots this machine: it cannot be combined with --sysroot');
    const transfer = optString(options, 'transfer') ?? 'auto';
    const allowDowngrade = optBool(options, 'allow-downgrade');
    if (transfer !== 'auto' && transfer !== 'delta' && transfer !== 'whole-layer')
      throw new TiuError('USAGE', `--transfer must be auto, delta or whole-layer, not ${JSON.stringify(transfer)}`);
    if (optBool(options, 'check')) {
      if (wantReboot || optBool(options, 'download-only') || optBool(options, 'offline'))
        throw new TiuError(
          'USAGE',
          '--check only looks: it cannot be combined with --reboot, --download-only or --offline',
        );
      const c = await checkUpdate(productionDeps, { sysroot, reference, transfer, allowDowngrade });
      if (c.status === 'already-present')
        out.result(`${c.image} (${shortDigest(c.digest)}) is already deployed in snapshot ${c.snapshot}: no update`, c);
      else
        out.result(
          [
            `update available: ${c.image} (${shortDigest(c.digest)}), ${describeAge(c.age.offered)}`,
            `  ${describeTransfer(c.transfer)}`,
            ...c.age.older.map((why) => `  older (installed only with --allow-downgrade): ${why}`),
            ...c.age.notes.map((n) => `  note: ${n}`),
          ].join('\n'),
          c,
        );
      return;
    }
    const ac = new AbortController();
    const onSignal = () => ac.abort(new TiuError('ABORTED', 'interrupted by a signal'));
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    try {
      const r = await update(productionDeps, {
        sysroot,
        reference,
        downloadOnly: optBool(options, 'download-only'),
        offline: optBool(options, 'offline'),
        transfer: transfer,
        allowDowngrade,
        signal: ac.signal,
        onProgress: (line) => out.info(line),
      });
      switch (r.status) {
        case 'already-present':
          out.result(
            `${r.image} (${shortDigest(r.digest)}) is already deployed in snapshot ${r.snapshot}: nothing to do`,
            r,
          );
          return;
        case 'downloaded':
          out.result(
            `${r.image} (${shortDigest(r.digest)}) is in the cache ${r.cache}; 'tiu update --offline ${r.image}' applies it`,
            r,
          );
          return;
        case 'updated': {
          const a = r.apply;
          const lines = [
            `snapshot ${r.snapshot} (from ${r.from}) holds ${r.image} (${shortDigest(r.digest)}) and boots next`,
            `  files: ${a.written.count} written (${humanSize(a.written.bytes)}), ${a.reflinked.count} reflinked${a.reflinkedFromSnapshots.count ? ` (${a.reflinkedFromSnapshots.count} from other snapshots)` : ''}, ${a.kept.count} kept, ${a.deleted.count} deleted`,
            ...(r.transfer ? [`  ${describeTransfer(r.transfer)}`] : []),
            ...(r.age ? [`  image: ${describeAge(r.age.offered)}`] : []),
            ...(r.age?.older.length ? [`  older than this system (--allow-downgrade): ${r.age.older.join('; ')}`] : []),
            ...(a.skipped.count ? [`  ${describeSkipped(a)}`] : []),
            ...r.etcConflicts.map(
              (c) =>
                `  /etc conflict: /etc/${c.path} kept as you changed it${c.tiunew ? `, the image's version is in /etc/${c.tiunew}` : ''}`,
            ),
            ...r.userClashes.map(
              (c) =>
                `  account clash: the image's ${c.kind === 'uid' ? 'user' : 'group'} ${c.name} (${c.kind} ${c.id}) was not added: ${c.existing} has ${c.kind} ${c.existingId}`,
            ),
            ...(r.relabel ? ['  SELinux: the image carries no labels, /.autorelabel relabels at the next boot'] : []),
          ];
          out.result(lines.join('\n'), r);
          if (wantReboot) {
            out.info('rebooting');
            await reboot();
          }
          return;
        }
      }
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
  },
};
export default command;
