/** tiu sign: a cosign-compatible signature of an image (tag sha256-<hex>.sig), on a registry or an OCI layout. */
import { annotationOption, badAnnotation, type Command, optAnnotations, optBool, optString } from '../command.ts';
import { openReference } from '../../transport/resolve.ts';
import { registryOptions } from '../registry-options.ts';
import { TiuError } from '../../errors.ts';
import { expiryAfter } from '../../trust/expiry.ts';
import { readPrivateKeyFile } from '../../trust/keyfiles.ts';
import { parseIdentityOption, signReference } from '../../trust/ops.ts';
import { getPassphrase } from '../../trust/passphrase.ts';

const command: Command = {
  name: 'sign',
  summary: 'sign an image with a cosign-compatible key',
  usage: 'tiu sign --key KEY [--identity host/repo:tag] [--annotation k=v]... [--expires DURATION] [--bundle] REF',
  help:
    "Signs the manifest REF resolves to: a simple-signing payload (docker-reference = REF's name, or --identity)\n" +
    'appended to the signature manifest at tag sha256-<hex>.sig next to the image, as cosign does.\n' +
    'An OCI layout has no registry name: give the one the image will be verified as with --identity.\n' +
    '--bundle also attaches a sigstore bundle (v0.3) as an OCI referrer. It is key-based and offline: no\n' +
    "transparency-log entry, no signed timestamp, so sigstore's own verifiers refuse it at their defaults\n" +
    '(cosign verify needs --insecure-ignore-tlog; sigstore-js tlogThreshold and timestampThreshold 0).\n' +
    '--expires DURATION (30d, 12h, 90m, 45s, 2w) writes org.opensuse.tiu.expires = now + DURATION (RFC 3339 UTC)\n' +
    "into the payload's optional claims (cosign shows and `cosign verify -a` matches them); a device whose\n" +
    'tiu.conf sets require-signature-expiry refuses the image once every accepted signature expired. Re-signing\n' +
    'with --expires adds a signature with the new expiry (bundles carry no claims, so no expiry).\n' +
    'The key passphrase comes from COSIGN_PASSWORD or TIU_PASSWORD, else it is asked on the terminal.\n',
  registry: 'one',
  options: {
    key: { type: 'string' },
    identity: { type: 'string' },
    ...annotationOption,
    bundle: { type: 'boolean' },
    expires: { type: 'string' },
  },
  positionals: [1, 1],
  async run([input], options, out) {
    const keyPath = optString(options, 'key');
    if (!keyPath) throw new TiuError('USAGE', 'tiu sign needs --key KEY');
    const identity = parseIdentityOption(optString(options, 'identity'));
    const annotations = optAnnotations(options, badAnnotation);
    const duration = optString(options, 'expires');
    const expires = duration === undefined ? undefined : expiryAfter(duration, new Date());
    const key = await readPrivateKeyFile(keyPath, () => getPassphrase(keyPath));
    const opened = await openReference(input!, { registry: registryOptions(options) });
    try {
      const r = await signReference(opened, key, {
        identity,
        annotations,
        bundle: optBool(options, 'bundle'),
        ...(expires !== undefined ? { expires } : {}),
      });
      const what = r.added
        ? `signature added to ${r.tag} (${r.count} signature${r.count === 1 ? '' : 's'})`
        : `already signed by this key (${r.tag})`;
      out.result(
        `Signed ${r.image} (${r.digest}) as ${r.dockerReference}${expires ? `, expires ${expires}` : ''}: ${what}${r.bundle ? `; bundle ${r.bundle.digest}` : ''}`,
        {
          image: r.image,
          digest: r.digest,
          dockerReference: r.dockerReference,
          tag: r.tag,
          signatureManifest: r.descriptor.digest,
          added: r.added,
          count: r.count,
          payloadDigest: r.payloadDigest,
          bundle: r.bundle?.digest ?? null,
          expires: expires ?? null,
        },
      );
    } finally {
      await opened.target.close?.();
    }
  },
};

export default command;
