/**
 * Plan and apply layers described by tables of contents: flatten, scan, plan, execute, in one
 * call, with any content provider (the engine tests drive it with tar streams and openers).
 * The product's delta path (src/deploy/delta/index.ts) runs the same four steps split in two:
 * it plans against the booted snapshot before anything is downloaded, and again against the
 * new snapshot when it applies.
 */
import { flattenLayers } from './layers.ts';
import { dropReserved, SkipTally, type Reserved } from './reserved.ts';
import { planApply } from './plan.ts';
import { ContentIndex, scanTree } from './scan.ts';
import { executePlan } from './execute.ts';
import type { ContentProvider } from './content.ts';
import type { ApplyReport, Plan, TreeEntry } from './types.ts';

export interface ApplyOptions {
  /** Relative paths never deleted nor scanned below (e.g. '.snapshots', 'var', 'home', ...). */
  preserve?: readonly string[];
  /** Image entries (and whiteouts) at or below these are dropped before planning and counted (reserved.ts). */
  reserved?: Reserved;
  /**
   * Content-index cache file (outside the target): loaded before planning so unchanged files
   * need no hashing, saved after with the new tree's digests. Without it same-size candidates
   * are hashed once each.
   */
  indexFile?: string;
  /** Where to save the index (default: indexFile). */
  saveIndexTo?: string;
  allowCopyFallback?: boolean;
  noXattrs?: boolean;
  /** Stop after planning (dry run). */
  planOnly?: boolean;
}

export interface ApplyResult {
  plan: Plan;
  report: ApplyReport | null;
  /** Old-tree files read to hash them during planning. */
  hashed: { files: number; bytes: number };
}

/** Plan and apply layers described by tables of contents (lowest layer first). */
export async function applyFromToc(
  root: string,
  layers: readonly (readonly TreeEntry[])[],
  provider: ContentProvider,
  opts: ApplyOptions = {},
): Promise<ApplyResult> {
  const tally = new SkipTally();
  const tree = flattenLayers(opts.reserved ? dropReserved(layers, opts.reserved, tally) : layers);
  const old = await scanTree(root, { preserve: opts.preserve ?? [], noXattrs: opts.noXattrs ?? false });
  const index = opts.indexFile ? await ContentIndex.load(root, opts.indexFile) : new ContentIndex(root);
  const plan = await planApply(tree, old, index, { preserve: opts.preserve ?? [] });
  const hashed = { files: index.hashedFiles, bytes: index.hashedBytes };
  if (opts.planOnly) return { plan, report: null, hashed };
  const report = {
    ...(await executePlan(root, plan, provider, { allowCopyFallback: opts.allowCopyFallback ?? false, index })),
    ...tally.report(),
  };
  const saveTo = opts.saveIndexTo ?? opts.indexFile;
  if (saveTo) await index.save(saveTo);
  return { plan, report, hashed };
}
