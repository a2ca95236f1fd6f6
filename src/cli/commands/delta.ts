import type { Command } from '../command.ts';
import { optString } from '../command.ts';
import { makeDeltas } from '../../bundle/delta.ts';
import { openReference, resolveRoot, type OpenedReference } from '../../transport/resolve.ts';
import { deltaConcurrency, deltaJson, describeDelta } from '../delta-output.ts';
import { registryOptions } from '../registry-options.ts';

const command: Command = {
  name: 'delta',
  summary: 'Make a delta artifact from one image to the next and attach it to the new one as a referrer',
  usage: 'tiu delta FROM TO [--concurrency N] [--json]',
  help:
    'FROM, TO: image references (docker://HOST/REPO:TAG, oci:/PATH[:TAG], oci-archive:/FILE.tar[:TAG]), both\n' +
    '  built by `tiu build` (zstd:chunked layers). TO must be writable: the artifact is pushed to its\n' +
    "  repository or layout as a referrer of TO's image manifest (of each platform FROM has too).\n" +
    "A device updating from FROM to TO then downloads zstd patches against its own files instead of TO's\n" +
    '  file frames, and patches of the tables of contents. The same FROM and TO give the same artifact.\n' +
    '  --concurrency N  patches encoded at a time (default: the CPUs, at most 4)\n',
  registry: 'copy',
  options: { concurrency: { type: 'string' } },
  positionals: [2, 2],
  async run([fromInput, toInput], options, out) {
    const concurrency = deltaConcurrency(optString(options, 'concurrency'));
    let from: OpenedReference | undefined;
    let to: OpenedReference | undefined;
    let ok = false;
    try {
      from = await openReference(fromInput!, { registry: registryOptions(options, 'src') });
      to = await openReference(toInput!, { forWrite: true, registry: registryOptions(options, 'dest') });
      const results = await makeDeltas(
        { target: from.target, root: await resolveRoot(from) },
        { target: to.target, root: await resolveRoot(to) },
        { ...(concurrency ? { concurrency } : {}), onProgress: (line) => out.info(line) },
      );
      await to.target.close?.();
      ok = true;
      out.result(results.map(describeDelta).join('\n'), {
        from: fromInput,
        to: toInput,
        deltas: results.map(deltaJson),
      });
    } finally {
      await from?.target.close?.().catch(() => undefined);
      if (to && !ok) {
        const t = to.target as { discard?: () => Promise<void> };
        if (t.discard) await t.discard().catch(() => undefined);
        else await to.target.close?.().catch(() => undefined);
      }
    }
  },
};
export default command;
