/**
 * Stage `trust`: the signature policy accepts the image, and where tiu.conf requires
 * fresh signatures (`require-signature-expiry`), one accepted signature's expiry lies in the
 * future (src/trust/freshness.ts: SIGNATURE_EXPIRED). Nothing of the image (its manifest, its
 * TOCs) is used before this. An online update asks before planning; --offline asks of the
 * cached copy in `fetch`, and --download-only while the copy into the cache verifies.
 */
import type { Target } from '../../content/interfaces.ts';
import type { Descriptor } from '../../oci/types.ts';
import { checkFreshness } from '../../trust/freshness.ts';
import { formatRfc3339 } from '../../trust/expiry.ts';
import type { UpdateDeps } from './deps.ts';
import type { Resolved, UpdateRun } from './run.ts';

/** The policy check of this run, for any copy of the image (source or cache), with the freshness check. */
export function policyCheck(deps: UpdateDeps, run: UpdateRun): (source: Target, root: Descriptor) => Promise<void> {
  return async (source, root) => {
    const decision = await deps.checkPolicy({
      reference: run.image,
      source,
      root,
      policyPath: run.config.policy,
      sysroot: run.ctx.sysroot,
      signedIdentity: run.config.signedIdentity,
      signal: run.signal,
    });
    if (!run.config.requireSignatureExpiry) return;
    const fresh = checkFreshness(decision, `${run.image} (${root.digest})`, new Date());
    run.progress(`signature fresh: expires ${formatRfc3339(fresh.expires)}`);
  };
}

/** The image at its source is accepted (online updates and --check); throws the policy's refusal. */
export async function trust<R extends UpdateRun & Resolved>(deps: UpdateDeps, run: R): Promise<R> {
  if (run.opts.offline || run.opts.downloadOnly) return run;
  await policyCheck(deps, run)(run.source, run.root);
  return run;
}
