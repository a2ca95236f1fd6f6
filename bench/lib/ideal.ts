/**
 * The ideal per-file zstd download of an update: the zstd:chunked frames of the files it must
 * fetch, each once, and nothing else (no manifests, no TOCs, no gaps between frames). tiu's
 * file-level bytes downloaded over this is the overhead the issue bounds (≤ 1.15×).
 */
import type { TreeEntry } from '../../src/deploy/apply/index.ts';
import { prepareTransfer } from '../../src/deploy/delta/index.ts';
import { hasFrame } from '../../src/deploy/delta/ranges.ts';
import { imageManifest } from '../../src/deploy/update/plan.ts';
import { PRESERVE } from '../../src/deploy/update/settle.ts';
import { hostArchitecture } from '../../src/oci/platform.ts';
import { parseReference, type DockerReference } from '../../src/oci/reference.ts';
import { openRegistryTarget } from '../../src/transport/registry/index.ts';

export const IDEAL_HOW =
  "the sum of the zstd:chunked frames (per-file zstd, level 3) of the files tiu's plan against the booted base must fetch, each once: no manifests, no TOCs, no gaps between frames";

export function idealFrameBytes(fetch: readonly TreeEntry[]): { bytes: number; frames: number } {
  // Files with the same content in the same layer share one frame (hardlinks): it is fetched once.
  const frames = new Map<string, number>();
  for (const e of fetch.filter(hasFrame)) {
    const s = e.source!;
    frames.set(`${s.layer}:${s.offset!}`, s.endOffset! - s.offset!);
  }
  let bytes = 0;
  for (const n of frames.values()) bytes += n;
  return { bytes, frames: frames.size };
}

/** The ideal of updating `oldRoot` to host/repo:tag: prepareTransfer's plan (TOCs and the old tree; writes nothing). */
export async function idealUpdateBytes(
  host: string,
  repo: string,
  tag: string,
  oldRoot: string,
): Promise<{ bytes: number; frames: number }> {
  const source = openRegistryTarget(parseReference(`docker://${host}/${repo}`) as DockerReference, {
    registriesConf: false,
  });
  try {
    const root = await source.resolve(tag);
    const { manifest } = await imageManifest(source, root, { os: 'linux', architecture: hostArchitecture() });
    const t = await prepareTransfer({ source, manifest, oldRoot, preserve: PRESERVE, mode: 'delta' });
    if (t.path !== 'delta') throw new Error(`no file-level plan for ${repo}:${tag}: ${t.report.reason ?? '?'}`);
    return idealFrameBytes(t.fetch);
  } finally {
    await source.close();
  }
}
