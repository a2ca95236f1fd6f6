import type { Command } from '../command.ts';
import { optBool, optString } from '../command.ts';
import { copy, type CopyEvent } from '../../copy/copy.ts';
import { TiuError } from '../../errors.ts';
import { openReference, type OpenedReference } from '../../transport/resolve.ts';
import { isManifestLike } from '../../oci/mediatypes.ts';
import { isDigest } from '../../oci/digest.ts';
import { humanSize, shortDigest } from '../../format.ts';
import { registryOptions } from '../registry-options.ts';

class UsageError extends TiuError {
  constructor(message: string) {
    super('USAGE', message);
  }
}

const command: Command = {
  name: 'copy',
  summary: 'Copy an image between registries, OCI layouts and oci-archives',
  usage: 'tiu copy SRC DST [--referrers] [--preserve-digests] [--concurrency N] [--json]',
  help:
    'SRC and DST are image references: docker://HOST/REPO:TAG, oci:/PATH[:NAME], oci-archive:/FILE.tar[:NAME],\n' +
    'dir:/PATH (one image, as skopeo writes it), docker-archive:/FILE.tar[:NAME:TAG] (docker save format).\n' +
    'SRC may also be containers-storage:[[DRIVER@]ROOT[+RUNROOT]]IMAGE (read through podman).\n' +
    'Every byte is verified by digest and size; the destination tag is set only once all content is there.\n' +
    'Without a destination tag the source tag is reused.\n' +
    'oci: and oci-archive: hold only OCI images: a Docker image is written converted to OCI (as skopeo does),\n' +
    'so its manifest and config digests change.\n' +
    '  --referrers      also copy signatures and other referrers (and cosign sha256-<hex>.sig tags)\n' +
    '  --preserve-digests  refuse a copy that would change digests (a Docker image into oci:/oci-archive:)\n' +
    '  --concurrency N  blob transfers at a time (default 3)\n',
  registry: 'copy',
  options: {
    referrers: { type: 'boolean' },
    'preserve-digests': { type: 'boolean' },
    concurrency: { type: 'string' },
  },
  positionals: [2, 2],
  async run([srcInput, dstInput], options, out) {
    const concText = optString(options, 'concurrency');
    const concurrency = concText === undefined ? 3 : Number(concText);
    if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 64)
      throw new UsageError(`--concurrency must be an integer from 1 to 64, got ${concText}`);
    const src: OpenedReference = await openReference(srcInput!, { registry: registryOptions(options, 'src') });
    let dst: OpenedReference | undefined;
    let ok = false;
    try {
      dst = await openReference(dstInput!, { forWrite: true, registry: registryOptions(options, 'dest') });
      if ((dst.ref.transport === 'dir' || dst.ref.transport === 'docker-archive') && optBool(options, 'referrers'))
        throw new UsageError(`--referrers: a ${dst.ref.transport}: image keeps no referrers (cosign signatures)`);
      const lastReport = new Map<string, number>();
      const onProgress = (e: CopyEvent) => {
        const d = e.desc;
        const kind = isManifestLike(d.mediaType) ? 'manifest' : 'blob';
        if (e.type === 'blob-start') out.info(`copying ${kind} ${shortDigest(d.digest)} (${humanSize(d.size)})`);
        else if (e.type === 'blob-skipped')
          out.info(`skipping ${kind} ${shortDigest(d.digest)}: already at the destination`);
        else if (e.type === 'blob-done') out.info(`done    ${kind} ${shortDigest(d.digest)}`);
        else if (e.bytes < e.total) {
          const now = Date.now();
          if (now - (lastReport.get(d.digest) ?? now) >= 2000) {
            out.info(
              `        ${shortDigest(d.digest)} ${Math.floor((100 * e.bytes) / e.total)}% of ${humanSize(e.total)}`,
            );
            lastReport.set(d.digest, now);
          } else if (!lastReport.has(d.digest)) lastReport.set(d.digest, now);
        }
      };
      const root = await copy(src.target, src.name, dst.target, dst.name, {
        referrers: optBool(options, 'referrers'),
        toOci: dst.ref.transport === 'oci' || dst.ref.transport === 'oci-archive',
        preserveDigests: optBool(options, 'preserve-digests'),
        concurrency,
        onProgress,
      });
      await dst.target.close?.();
      ok = true;
      // dir: and docker-archive: keep no source tag (the latter only the name its reference gives).
      const reusesTag = dst.ref.transport !== 'dir' && dst.ref.transport !== 'docker-archive';
      const tag = dst.name ?? (reusesTag && src.name !== undefined && !isDigest(src.name) ? src.name : undefined);
      out.result(
        `copied ${root.digest} to ${dstInput}${tag && !dstInput!.endsWith(':' + tag) ? ` (tag ${tag})` : ''}`,
        {
          source: srcInput,
          destination: dstInput,
          digest: root.digest,
          mediaType: root.mediaType,
          size: root.size,
          tag: tag ?? null,
        },
      );
    } finally {
      await src.target.close?.().catch(() => undefined);
      if (dst && !ok) {
        const t = dst.target as { discard?: () => Promise<void> };
        if (t.discard) await t.discard().catch(() => undefined);
        else await dst.target.close?.().catch(() => undefined);
      }
    }
  },
};
export default command;
