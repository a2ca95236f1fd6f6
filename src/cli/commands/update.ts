import type { Command } from '../command.ts';
import { optBool, optString } from '../command.ts';
import { TiuError } from '../../errors.ts';

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
      // Each path imports its own modules (src/cli/update-check.ts, update-apply.ts) here:
      // `--help` needs neither, a check no apply, merge or commit code, and every module
      // loaded is RSS on a small device.
      const { runCheck } = await import('../update-check.ts');
      await runCheck({ sysroot, reference, transfer, allowDowngrade }, out);
      return;
    }
    const { runUpdate } = await import('../update-apply.ts');
    await runUpdate(
      {
        sysroot,
        reference,
        downloadOnly: optBool(options, 'download-only'),
        offline: optBool(options, 'offline'),
        transfer,
        allowDowngrade,
      },
      wantReboot,
      out,
    );
  },
};
export default command;
