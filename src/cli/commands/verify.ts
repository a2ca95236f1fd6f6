/** tiu verify: check an image's signatures against a public key or the signature policy. */
import { annotationOption, badAnnotation, type Command, optAnnotations, optString, optStrings } from '../command.ts';
import { openReference } from '../../transport/resolve.ts';
import { registryOptions } from '../registry-options.ts';
import { TiuError } from '../../errors.ts';
import { expiryOf, formatRfc3339 } from '../../trust/expiry.ts';
import { readPublicKeyFile } from '../../trust/keyfiles.ts';
import { parseIdentityOption, verifyWithKeys, verifyWithPolicy } from '../../trust/ops.ts';
import { loadPolicy } from '../../trust/policy.ts';

/** `, expires T` / `, expired T` for a signature that carries an expiry (the JSON has it in `optional`). */
function describeExpiry(optional: Record<string, unknown> | null, now: Date): string {
  const at = expiryOf(optional);
  if (!at) return '';
  return `, ${at > now ? 'expires' : 'expired'} ${formatRfc3339(at)}`;
}

const command: Command = {
  name: 'verify',
  summary: "verify an image's cosign signatures (with a key, or with containers-policy.json)",
  usage: 'tiu verify [--key KEY.pub... | --policy FILE] [--identity host/repo:tag] [--annotation k=v]... REF',
  help:
    'With --key: a signature by one of the keys, for the manifest REF resolves to, whose docker-reference is in\n' +
    "REF's repository (or --identity's). An OCI layout without --identity has digest and signature checked, not its name.\n" +
    'Otherwise the policy decides: --policy FILE, else /etc/tiu/policy.json, else /etc/containers/policy.json.\n' +
    'Keyless signatures (policy sigstoreSigned with fulcio + rekorPublicKey*) are verified offline: the text names the\n' +
    "certificate's identity and the Rekor integrated time; --json has them as certificate {issuer, subject} and signedAt.\n" +
    'Refusals exit 1 with a code: SIGNATURE_MISSING, SIGNATURE_INVALID, SIGNATURE_DIGEST_MISMATCH, IDENTITY_MISMATCH, POLICY_REJECTED,\n' +
    'CERT_UNTRUSTED, OIDC_ISSUER_MISMATCH, CERT_SUBJECT_MISMATCH, TLOG_INVALID...\n',
  registry: 'one',
  options: {
    key: { type: 'string', multiple: true },
    policy: { type: 'string' },
    identity: { type: 'string' },
    ...annotationOption,
  },
  positionals: [1, 1],
  async run([input], options, out) {
    const keyPaths = optStrings(options, 'key');
    const policyPath = optString(options, 'policy');
    if (keyPaths.length > 0 && policyPath !== undefined)
      throw new TiuError('USAGE', 'give --key or --policy, not both');
    const identity = parseIdentityOption(optString(options, 'identity'));
    const annotations = optAnnotations(options, badAnnotation);
    if (keyPaths.length === 0 && Object.keys(annotations).length > 0)
      throw new TiuError('USAGE', '--annotation needs --key');
    const keys =
      keyPaths.length > 0 ? (await Promise.all(keyPaths.map((p) => readPublicKeyFile(p)))).flat() : undefined;
    const policy = keys ? undefined : loadPolicy(policyPath);
    const opened = await openReference(input!, { registry: registryOptions(options) });
    try {
      const r = keys
        ? await verifyWithKeys(opened, keys, { identity, annotations })
        : await verifyWithPolicy(opened, policy!, { identity });
      const lines = [`Verified ${r.image} (${r.digest})`];
      if (r.policy) {
        lines[0] += ` under ${policy!.source} (${r.policy.scope === 'default' ? 'default' : `${r.policy.transport} scope ${JSON.stringify(r.policy.scope)}`}): ${r.policy.accepted.map((a) => a.type).join(', ')}`;
      }
      for (const s of r.signatures) {
        const by = s.certificate ? ` by ${s.certificate.subject} (issuer ${s.certificate.issuer})` : '';
        const logged = s.signedAt ? `, logged ${s.signedAt.toISOString()}` : '';
        lines.push(
          `  ${s.kind === 'bundle' ? 'sigstore bundle' : 'signature'} ${s.payloadDigest} for ${s.dockerReference}${by}${logged}${describeExpiry(s.optional, new Date())}`,
        );
      }
      if (keys && r.identityRule === 'any')
        lines.push('  note: the image has no registry name, so the signed name was not checked (use --identity)');
      out.result(lines.join('\n'), r);
    } finally {
      await opened.target.close?.();
    }
  },
};

export default command;
