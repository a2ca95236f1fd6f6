// copy() with a policy check on the source, as tests use it.
import type { Target } from '../../src/content/interfaces.ts';
import type { ImageReference } from '../../src/oci/reference.ts';
import type { Descriptor } from '../../src/oci/types.ts';
import {
  checkPolicy,
  loadPolicy,
  type CheckPolicyOptions,
  type Policy,
  type PolicyDecision,
} from '../../src/trust/policy.ts';

/**
 * A verify hook for copy(): checks `ref`'s policy on the source before anything is written to
 * the destination. `policy` may be a parsed Policy, a path, or undefined for the default paths
 * (read when the hook first runs).
 */
export function policyVerifier(
  policy: Policy | string | undefined,
  ref: ImageReference,
  opts: CheckPolicyOptions & { onDecision?: (d: PolicyDecision) => void } = {},
): (src: Target, root: Descriptor) => Promise<void> {
  return async (src, root) => {
    const p = typeof policy === 'object' ? policy : loadPolicy(policy);
    const d = await checkPolicy(p, src, root, ref, opts);
    opts.onDecision?.(d);
  };
}
