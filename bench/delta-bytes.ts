/**
 * What the file-level delta downloads for the real Debian update of the benchmark trees
 * (bench/trees.ts: bookworm base -> base after apt-get upgrade from bookworm-security), next to
 * the ideal and a whole-layer pull, without a snapshot: the upgraded tree is built into a tiu
 * bundle (zstd:chunked), pushed to a local docker-registry, and read through the loopback
 * counting proxy by prepareTransfer (the `tiu update --check` step: TOCs and the plan against
 * the base tree) and downloadTransfer (the ranges, verified into a store).
 *
 * The ideal is per-file zstd: the frames of the files the update must fetch, nothing else (no
 * manifests, no TOCs, no gaps between frames). Then the range-coalescing gap is swept: for each
 * gap the same download into an empty store, with the bytes, requests and wall time through the
 * proxy (bench/README.md has the table and the choice of DEFAULT_MAX_GAP).
 *
 *   node bench/delta-bytes.ts        (root; TIU_BENCH_CACHE as for npm run bench)
 *   TIU_GAPS=0,4096,65536 TIU_GAP_RUNS=3 node bench/delta-bytes.ts
 * Prints one JSON object: predicted and measured bytes, the ideal, the sweep, the whole-layer size.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { buildBundle } from '../src/bundle/build.ts';
import { OciLayoutTarget } from '../src/content/oci-layout.ts';
import { copy } from '../src/copy/copy.ts';
import {
  coalesce,
  ContentStore,
  DEFAULT_MAX_GAP,
  downloadTransfer,
  prepareTransfer,
  type DeltaTransfer,
} from '../src/deploy/delta/index.ts';
import { DEFAULT_CONCURRENCY } from '../src/deploy/delta/download.ts';
import { imageManifest } from '../src/deploy/update/plan.ts';
import { PRESERVE } from '../src/deploy/update/settle.ts';
import { parseReference, type DockerReference } from '../src/oci/reference.ts';
import { openRegistryTarget } from '../src/transport/registry/index.ts';
import { startCountingProxy } from '../test/helpers/counting-proxy.ts';
import { startRegistry } from '../test/helpers/registry.ts';
import { idealFrameBytes } from './lib/ideal.ts';
import { summarize } from './lib/stats.ts';
import { ensureTrees } from './trees.ts';

const GAPS = (process.env.TIU_GAPS ?? '0,1024,4096,8192,16384,32768,65536,262144').split(',').map(Number);
const GAP_RUNS = Math.max(1, Number(process.env.TIU_GAP_RUNS ?? 3));
/** Links for the modelled download time: a slow and a fast one. */
const LINKS = [
  { name: '10 Mbit/s, 50 ms RTT', bitsPerSecond: 10e6, rtt: 0.05 },
  { name: '100 Mbit/s, 20 ms RTT', bitsPerSecond: 100e6, rtt: 0.02 },
];

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
  const tocRequests = proxy.requests.length;
  const store = await ContentStore.open(join(work, 'store'));
  const t2 = Date.now();
  const got = await downloadTransfer(t, store);
  const downloadSeconds = (Date.now() - t2) / 1000;
  const measured = proxy.blobBytes(layers);
  const allResponseBodies = proxy.bodyBytes;
  const ideal = idealFrameBytes(t.fetch);

  // The gap sweep: TOCs are the same for every gap, so only the content ranges are fetched again.
  const sweep = [];
  for (const maxGap of GAPS) {
    const ranges = coalesce(t.fetch, { ...t.coalesce, maxGap });
    const variant: DeltaTransfer = { ...t, ranges, coalesce: { ...t.coalesce, maxGap } };
    const seconds: number[] = [];
    let bytes = 0;
    let requests = 0;
    for (let i = 0; i < GAP_RUNS; i++) {
      const s = await ContentStore.open(join(work, 'sweep'));
      proxy.reset();
      const start = process.hrtime.bigint();
      await downloadTransfer(variant, s);
      seconds.push(Number(process.hrtime.bigint() - start) / 1e9);
      bytes = proxy.blobBytes(layers);
      requests = proxy.requests.length;
    }
    const total = t.report.tocBytes + bytes;
    sweep.push({
      maxGap,
      contentBytes: bytes,
      layerBytes: total,
      requests: requests + tocRequests,
      seconds: summarize(seconds),
      ratioToIdeal: total / ideal.bytes,
      // Loopback hides latency: the same bytes and requests on two links, requests DEFAULT_CONCURRENCY at a time.
      modelSeconds: Object.fromEntries(
        LINKS.map((l) => [
          l.name,
          (total * 8) / l.bitsPerSecond + ((requests + tocRequests) * l.rtt) / DEFAULT_CONCURRENCY,
        ]),
      ),
    });
  }
  await source.close();
  console.log(
    JSON.stringify(
      {
        trees: trees.dir,
        layers: manifest.layers.length,
        defaultMaxGap: DEFAULT_MAX_GAP,
        wholeLayerBytes: t.report.layerBytes,
        predictedBytes: t.report.downloadBytes,
        measuredLayerBytes: measured,
        allResponseBodies,
        tocBytes: t.report.tocBytes,
        idealPerFileZstd: ideal.bytes,
        idealFrames: ideal.frames,
        ratioToIdeal: measured / ideal.bytes,
        filesDownloaded: got.files,
        files: t.report.files,
        seconds: { build: buildSeconds, plan: planSeconds, download: downloadSeconds },
        gapSweep: sweep,
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
