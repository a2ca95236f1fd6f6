/**
 * `tiu update --check`: what an update would do (src/deploy/update/check.ts), reported. Loaded
 * by commands/update.ts only for --check, so a check loads no apply, merge or commit code.
 */
import type { Output } from './command.ts';
import { checkUpdate } from '../deploy/update/check.ts';
import type { UpdateOptions } from '../deploy/update/run.ts';
import { describeTransfer } from '../deploy/delta/index.ts';
import { describeAge } from '../deploy/image-age.ts';
import { productionDeps } from '../deploy/wiring.ts';
import { shortDigest } from '../format.ts';

export async function runCheck(
  opts: Pick<UpdateOptions, 'sysroot' | 'reference' | 'transfer' | 'allowDowngrade'>,
  out: Output,
): Promise<void> {
  const c = await checkUpdate(productionDeps, opts);
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
}
