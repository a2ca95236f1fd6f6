/** Reading what the tools wrote into OCI layout directories. */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';

interface Desc {
  digest: string;
  size: number;
  mediaType?: string;
  annotations?: Record<string, string>;
}

async function blob(layout: string, digest: string): Promise<Buffer> {
  const [alg, hex] = digest.split(':');
  return readFile(join(layout, 'blobs', alg!, hex!));
}

/** The manifest descriptor tagged `tag` in the layout's index.json. */
export async function manifestDesc(layout: string, tag: string): Promise<Desc> {
  const index = JSON.parse(await readFile(join(layout, 'index.json'), 'utf8')) as { manifests: Desc[] };
  const d = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag);
  if (!d) throw new Error(`no image tagged ${tag} in ${layout}`);
  return d;
}

/** Bytes of one image: manifest + config + layers. */
export async function imageSize(layout: string, tag: string): Promise<{ total: number; layers: number[] }> {
  const d = await manifestDesc(layout, tag);
  const m = JSON.parse((await blob(layout, d.digest)).toString()) as {
    config: Desc;
    layers: Desc[];
    manifests?: Desc[];
  };
  if (m.manifests) throw new Error(`${layout}:${tag} is an index, expected one image`);
  const layers = m.layers.map((l) => l.size);
  return { total: d.size + m.config.size + layers.reduce((a, b) => a + b, 0), layers };
}
