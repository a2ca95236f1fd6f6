import type { Command } from '../command.ts';
import { optString } from '../command.ts';
import { TiuError } from '../../errors.ts';
import { rollback } from '../../deploy/rollback.ts';

const command: Command = {
  name: 'rollback',
  summary: 'Make an earlier snapshot the default again (the next boot starts it)',
  usage: 'tiu rollback [N] [--sysroot DIR] [--json]',
  help:
    'N: the snapshot to boot next; default: the running one while an update is staged, else the\n' +
    'newest finished snapshot before the default. Nothing is copied or deleted.\n' +
    '  --sysroot DIR  operate on the system mounted at DIR instead of /',
  options: { sysroot: { type: 'string' } },
  positionals: [0, 1],
  async run([n], options, out) {
    let snapshot: number | undefined;
    if (n !== undefined) {
      snapshot = Number(n);
      if (!/^\d+$/.test(n) || snapshot < 1) throw new TiuError('USAGE', `N must be a snapshot number, got '${n}'`);
    }
    const r = await rollback({ sysroot: optString(options, 'sysroot') ?? '/', snapshot });
    const note =
      r.from === r.to
        ? `snapshot ${r.to} already is the default`
        : `snapshot ${r.to} is the default again (was ${r.from ?? 'none'})`;
    out.result(`${note}; it starts at the next boot${r.booted === r.to ? ' (it is the one running now)' : ''}`, r);
  },
};
export default command;
