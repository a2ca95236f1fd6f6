/**
 * A child process for the two-writers test: opens one OCI layout and tags N images there.
 * usage: node layout-writer.ts LAYOUT PREFIX COUNT
 */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { OciLayoutTarget } from '../../src/content/oci-layout.ts';
import { sha256 } from '../../src/oci/digest.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';

const [layout, prefix, countText] = process.argv.slice(2);
const t = await OciLayoutTarget.open(layout!, { create: true });
const push = async (data: Buffer, mediaType: string) => {
  const d = { mediaType, digest: sha256(data), size: data.length };
  await t.push(d, Readable.from([data]));
  return d;
};
for (let i = 0; i < Number(countText); i++) {
  const layer = await push(randomBytes(64), MediaType.OciLayerGzip);
  const config = await push(
    Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } })),
    MediaType.OciConfig,
  );
  const m = await push(
    Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciManifest, config, layers: [layer] })),
    MediaType.OciManifest,
  );
  await t.tag(m, `${prefix}-${i}`);
}
