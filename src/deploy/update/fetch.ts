/**
 * Stage `fetch`: the image into the cache, before any snapshot — the delta's changed files into
 * its content store, or the whole image into the cache layout, every byte verified. A disk that
 * fills up here has changed nothing of the system (DISK_FULL naming the cache).
 */
import { join } from 'node:path';
import type { Target } from '../../content/interfaces.ts';
import type { CopyEvent } from '../../copy/copy.ts';
import { humanSize } from '../../format.ts';
import type { Descriptor } from '../../oci/types.ts';
import {
  pendingBytes,
  preparedBytes,
  type ContentStore,
  type DeltaTransfer,
  type TransferReport,
  type TransferStats,
} from '../delta/index.ts';
import { downloadProgress } from '../download-progress.ts';
import { isLayer } from '../../layer/openers.ts';
import type { UpdateDeps } from './deps.ts';
import { storeWorthKeeping, whileFetching } from './errors.ts';
import type { Planned, UpdateResult } from './run.ts';
import { policyCheck } from './trust.ts';

/**
 * The content store of the delta to `digest`, in the cache: files an interrupted download of
 * the same image left there are kept when they still verify; stores of other images go.
 */
async function openStore(deps: UpdateDeps, cacheDir: string, digest: string): Promise<ContentStore> {
  const parent = join(cacheDir, 'delta');
  const name = digest.replace(/^sha256:/, '');
  for (const other of await deps.files.readdir(parent).catch(() => [] as string[]))
    if (other !== name) await deps.files.removeAll(join(parent, other));
  return deps.delta.openStore(join(parent, name), { resume: true });
}

/**
 * The file delta into its content store (from the source, or from the whole layers in the
 * cache). On failure the store stays when the network or a signal cut the download off, for
 * the next run to verify and go on from; otherwise (a full disk, a bad image: it would only
 * fail again) it goes.
 */
export async function downloadDelta(
  deps: UpdateDeps,
  delta: DeltaTransfer,
  cacheDir: string,
  digest: string,
  o: {
    progress: (line: string) => void;
    signal?: AbortSignal | undefined;
    progressEveryMs?: number | undefined;
    /** the source is the cache's whole layers */ fromCache?: boolean;
  },
): Promise<{ store: ContentStore; stats: TransferStats }> {
  const store = await openStore(deps, cacheDir, digest);
  if (store.resumed.files)
    o.progress(
      `resuming: ${store.resumed.files} file(s), ${humanSize(store.resumed.bytes)}, verified from an interrupted download`,
    );
  try {
    const onBytes = o.fromCache
      ? undefined
      : downloadProgress(pendingBytes(delta, store), o.progress, { everyMs: o.progressEveryMs });
    const got = await deps.delta.downloadTransfer(delta, store, {
      ...(o.signal ? { signal: o.signal } : {}),
      ...(onBytes ? { onBytes } : {}),
    });
    if (o.fromCache)
      o.progress(
        `read ${got.files} changed file(s) from the cached layers (${delta.report.files?.changed ?? 0} to change)`,
      );
    else
      o.progress(`downloaded ${got.files} file(s) in ${got.requests} request(s), ${humanSize(got.bytes)} of content`);
    if (got.patches?.fallbacks.count)
      o.progress(
        `${got.patches.fallbacks.count} patch(es) of the delta artifact failed, those files came whole: ${got.patches.fallbacks.reasons[0]}`,
      );
    return { store, stats: got };
  } catch (e) {
    if (!storeWorthKeeping(e, o.signal)) await store.remove().catch(() => undefined);
    throw e;
  }
}

/** The planned report with what the download measured: the bytes, and patches that failed. */
function measured(r: TransferReport, s: TransferStats): TransferReport {
  const out: TransferReport = { ...r, downloaded: preparedBytes(r) + s.bytes };
  const f = s.patches?.fallbacks;
  if (r.artifact && f?.count) {
    const reasons = [...r.artifact.fallbacks.reasons, ...f.reasons].slice(0, 20);
    out.artifact = {
      ...r.artifact,
      // The files whose patch failed came by their frames: not as patches.
      patches: { ...r.artifact.patches, count: r.artifact.patches.count - f.count },
      fallbacks: { count: r.artifact.fallbacks.count + f.count, reasons },
    };
  }
  return out;
}

/** The whole image into the cache, with progress over its layers; the layer bytes received. */
async function copyIntoCache(
  deps: UpdateDeps,
  run: Planned,
  verify: ((src: Target, root: Descriptor) => Promise<void>) | undefined,
): Promise<number> {
  const onBytes = downloadProgress(run.transfer?.downloadBytes, run.progress, { everyMs: run.opts.progressEveryMs });
  const seen = new Map<string, number>();
  let received = 0;
  const onProgress = (e: CopyEvent) => {
    // Layers only (the total is theirs); one already in the cache counts as come.
    if (!isLayer(e.desc.mediaType)) return;
    if (e.type === 'blob-skipped') onBytes(e.desc.size);
    if (e.type !== 'blob-bytes') return;
    // A blob that starts over (a cut upload reads it again) counts again only past where it was.
    const before = seen.get(e.desc.digest) ?? 0;
    if (e.bytes > before) {
      onBytes(e.bytes - before);
      received += e.bytes - before;
      seen.set(e.desc.digest, e.bytes);
    }
  };
  await deps.copy(run.source, run.root.digest, run.cache, run.tag, {
    referrers: true,
    ...(verify ? { verify } : {}),
    ...(run.signal ? { signal: run.signal } : {}),
    onProgress,
  });
  return received;
}

/**
 * --offline: the cached copy is accepted by the policy. A delta: its files into the store (held
 * until the run ends). Else the whole image into the cache layout; online the policy has
 * accepted this digest already, --download-only has the copy check it.
 */
export async function fetchImage(deps: UpdateDeps, run: Planned): Promise<Planned> {
  const { cacheDir, image, root, delta } = run;
  let transfer = run.transfer;
  await whileFetching(cacheDir, image, async () => {
    if (run.opts.offline) {
      await policyCheck(deps, run)(run.cache, root);
    } else if (delta) {
      const d = await downloadDelta(deps, delta, cacheDir, root.digest, {
        progress: run.progress,
        signal: run.signal,
        progressEveryMs: run.opts.progressEveryMs,
      });
      run.held.store = d.store;
      transfer = measured(delta.report, d.stats);
    } else {
      run.progress(`fetching ${image} (${root.digest}) into ${cacheDir}`);
      const received = await copyIntoCache(deps, run, run.opts.downloadOnly ? policyCheck(deps, run) : undefined);
      if (transfer) transfer = { ...transfer, downloaded: received };
    }
  });
  return { ...run, transfer };
}

/** The end of a --download-only run: the image is in the cache for a later --offline. */
export function downloaded(run: Planned): UpdateResult {
  return { status: 'downloaded', image: run.image, digest: run.root.digest, cache: run.cacheDir, cleanup: run.cleanup };
}
