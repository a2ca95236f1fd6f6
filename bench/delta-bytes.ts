/**
 * What the file-level delta downloads for the real Debian update of the benchmark trees
 * (bench/trees.ts: bookworm base -> base after apt-get upgrade from bookworm-security), next to
 * a whole-layer pull, without a snapshot: the upgraded tree is built into a tiu bundle (zstd:chunked),
 * pushed to a local docker-registry, and read through the loopback counting proxy by
 * prepareTransfer (the `tiu update --check` step: TOCs and the plan against the base tree) and
 * downloadTransfer (the ranges, verified into a store).
 *
 *   node bench/delta-bytes.ts        (root; TIU_BENCH_CACHE as for npm run bench)
 * Prints one JSON object: predicted and measured bytes, the bound, the whole-layer size.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { buildBundle } from '../src/bundle/build.ts';
import { OciLayoutTarget } from '../src/content/oci-layout.ts';
import { copy } from '../src/copy/copy.ts';
import { ContentStore, downloadTransfer, prepareTransfer } from '../src/deploy/delta/index.ts';
import { imageManifest } from '../src/deploy/update/plan.ts';
import { PRESERVE } from '../src/deploy/update/settle.ts';
import { parseReference, type DockerReference } from '../src/oci/reference.ts';
import { openRegistryTarget } from '../src/transport/registry/index.ts';
import { startCountingProxy } from '../test/helpers/counting-proxy.ts';
import { startRegistry } from '../test/helpers/registry.ts';
import { ensureTrees } from './trees.ts';

const trees = await ensureTrees();
const work = await mkdtemp(join(process.env.TIU_BENCH_WORK ?? '/var/tmp', 'tiu-delta-bytes-'));
const reg = await startRegistry();
const proxy = await startCountingProxy(reg.port);
try {
  const layout = await OciLayoutTarget.open(join(work, 'layout'), { create: true });
  const t0 = Date.now();
  const built = await buildBundle({ kind: 'directory', path: trees.upgraded }, layout, 'upgraded', {
    compression: 'zstd',
  });
  const buildSeconds = (Date.now() - t0) / 1000;
  const direct = openRegistryTarget(parseReference(`docker://${reg.host}/bench/tiu`) as DockerReference, {
    registriesConf: false,
  });
  await copy(layout, 'upgraded', direct, 'upgraded', {});
  await direct.close();

  const source = openRegistryTarget(parseReference(`docker://${proxy.host}/bench/tiu`) as DockerReference, {
    registriesConf: false,
  });
  const root = await source.resolve('upgraded');
  const { manifest } = await imageManifest(source, root, { os: 'linux', architecture: built.config.architecture });
  const layers = manifest.layers.map((l) => l.digest as string);
  proxy.reset();
  const t1 = Date.now();
  const t = await prepareTransfer({ source, manifest, oldRoot: trees.base, preserve: PRESERVE, mode: 'delta' });
  const planSeconds = (Date.now() - t1) / 1000;
  if (t.path !== 'delta') throw new Error('expected the delta path');
  const store = await ContentStore.open(join(work, 'store'));
  const t2 = Date.now();
  const got = await downloadTransfer(t, store);
  const downloadSeconds = (Date.now() - t2) / 1000;
  const measured = proxy.blobBytes(layers);
  const changedFrames = t.plan.fetch.reduce((n, e) => n + (e.source!.endOffset! - e.source!.offset!), 0);
  await source.close();
  console.log(
    JSON.stringify(
      {
        trees: trees.dir,
        layers: manifest.layers.length,
        wholeLayerBytes: t.report.layerBytes,
        predictedBytes: t.report.downloadBytes,
        measuredLayerBytes: measured,
        allResponseBodies: proxy.bodyBytes,
        requests: proxy.requests.length,
        tocBytes: t.report.tocBytes,
        changedFileFrames: changedFrames,
        ratioToBound: measured / (changedFrames + t.report.tocBytes),
        filesDownloaded: got.files,
        files: t.report.files,
        seconds: { build: buildSeconds, plan: planSeconds, download: downloadSeconds },
      },
      null,
      2,
    ),
  );
} finally {
  await proxy.stop();
  await reg.stop();
  await rm(work, { recursive: true, force: true });
}
