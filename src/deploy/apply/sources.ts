/**
 * Content sources: snapshots other than the one being planned against (the pending default and
 * older snapshots tiu deployed) whose files may already hold a new entry's content. A match is
 * by size first and then sha256, through the snapshot's own content index, exactly as for the
 * old tree: only files of a wanted size are ever hashed, each at most once. The snapshot is
 * scanned on the first question asked of it, so a plan that finds everything in the old tree
 * (or downloads nothing) never walks another snapshot.
 */
import { BadRootError } from './errors.ts';
import { ContentIndex, pathsOfSize, scanTree } from './scan.ts';
import type { OldTree, SnapshotFile } from './types.ts';

/** Where a source snapshot is and where its content index is kept. */
export interface SourceSpec {
  snapshot: number;
  root: string;
  /** Its content index in the cache (loaded if present). */
  indexFile?: string;
}

/** What the planner asks of a content source. */
export interface ContentSource {
  readonly snapshot: number;
  /** A regular file of this source with exactly this size and sha256, or undefined. */
  find(size: number, digest: string): Promise<SnapshotFile | undefined>;
}

function isGone(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException).code;
  return e instanceof BadRootError || code === 'ENOENT' || code === 'ENOTDIR';
}

/** One snapshot as a content source: scanned lazily (no xattrs: only regular files' content counts). */
export class SnapshotSource implements ContentSource {
  readonly snapshot: number;
  readonly root: string;
  readonly index: ContentIndex;
  readonly #preserve: readonly string[];
  #tree: Promise<OldTree | undefined> | undefined;

  private constructor(spec: SourceSpec, index: ContentIndex, preserve: readonly string[]) {
    this.snapshot = spec.snapshot;
    this.root = spec.root;
    this.index = index;
    this.#preserve = preserve;
  }

  static async open(spec: SourceSpec, preserve: readonly string[]): Promise<SnapshotSource> {
    const index = spec.indexFile ? await ContentIndex.load(spec.root, spec.indexFile) : new ContentIndex(spec.root);
    return new SnapshotSource(spec, index, preserve);
  }

  /** The scan (once); undefined when the snapshot is gone (snapper's cleanup does not take tiu's lock). */
  tree(): Promise<OldTree | undefined> {
    this.#tree ??= scanTree(this.root, { preserve: this.#preserve, noXattrs: true }).catch((e: unknown) => {
      if (isGone(e)) return undefined;
      throw e;
    });
    return this.#tree;
  }

  async find(size: number, digest: string): Promise<SnapshotFile | undefined> {
    const tree = await this.tree();
    for (const p of tree ? pathsOfSize(tree, size) : []) {
      const seen = tree!.entries.get(p)!;
      let d: string;
      try {
        d = await this.index.digestOf(seen);
      } catch (e) {
        if (isGone(e) || (e as NodeJS.ErrnoException).code === 'ELOOP') continue; // changed since the scan
        throw e;
      }
      if (d === digest)
        return { snapshot: this.snapshot, root: this.root, seen, hashedHere: this.index.hashedHere(seen) };
    }
    return undefined;
  }
}

/** The first source (in the given order: the caller's preference) holding this content. */
export async function findInSources(
  sources: readonly ContentSource[],
  size: number,
  digest: string,
): Promise<SnapshotFile | undefined> {
  for (const s of sources) {
    const f = await s.find(size, digest);
    if (f) return f;
  }
  return undefined;
}
