/**
 * `tiu update` without --check: run the update (src/deploy/update) with the device's
 * implementations, interruptible by SIGINT/SIGTERM, and report what it did. Loaded by
 * commands/update.ts only when an update runs.
 */
import type { Output } from './command.ts';
import { TiuError } from '../errors.ts';
import { update } from '../deploy/update/index.ts';
import type { UpdateOptions } from '../deploy/update/run.ts';
import { describeTransfer } from '../deploy/delta/index.ts';
import { describeSkipped } from '../deploy/apply/reserved.ts';
import { describeAge } from '../deploy/image-age.ts';
import { productionDeps } from '../deploy/wiring.ts';
import { reboot } from '../host/system.ts';
import { humanSize, shortDigest } from '../format.ts';

export async function runUpdate(
  opts: Omit<UpdateOptions, 'signal' | 'onProgress'>,
  wantReboot: boolean,
  out: Output,
): Promise<void> {
  const ac = new AbortController();
  const onSignal = () => ac.abort(new TiuError('ABORTED', 'interrupted by a signal'));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const r = await update(productionDeps, {
      ...opts,
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
}
