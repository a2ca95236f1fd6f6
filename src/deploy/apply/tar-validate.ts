/**
 * Validate whole tar layers before anything is written: the checks the TOC path makes while it
 * plans (before a snapshot exists), made for images without tables of contents whose layers are
 * local (the cache, a USB layout). Every layer is read once, to its end, through the opener
 * (which verifies the blob digest as it streams); only headers are looked at:
 *
 *   entry names (src/layer/paths.ts), entry types, symlink targets, hardlinks (a target that
 *   the stream has put down before, not a directory, not itself), xattr names and values
 *   (checked by the tar reader itself, xattr-names.ts), reserved paths dropped and counted (reserved.ts), then the final tree:
 *   flattenLayers (whiteouts, hardlink chains) and addImplicitParents (no entry below a
 *   symlink or file of the image, a directory at the root).
 *
 * applyTarLayers makes the same checks again while it writes; this pass only moves the refusal
 * before the snapshot.
 */
import { ByteReader } from '../../layer/tar.ts';
import { BadHardlinkError, UnsafePathError, inLayer } from './errors.ts';
import { flattenLayers, whiteoutOf } from './layers.ts';
import { addImplicitParents } from './plan.ts';
import { dropReserved, SkipTally, type Reserved, type SkipReport } from './reserved.ts';
import { entriesFromTar } from './tar-entries.ts';
import type { LayerOpener } from '../../layer/openers.ts';
import type { EntryType, TreeByPath, TreeEntry } from './types.ts';

export interface TarValidateOptions {
  reserved?: Reserved;
  /**
   * Called when reading layer `layer` failed, before the error is thrown: may throw a better one
   * (update.ts checks the compressed blob's digest, so a rotten blob is DIGEST_MISMATCH rather
   * than whatever its decompressor made of it).
   */
  explain?: (layer: number, e: unknown) => Promise<void>;
}

/** Read every layer's headers and refuse what the apply would refuse; what would be skipped as reserved. */
export async function validateTarLayers(
  layers: readonly LayerOpener[],
  o: TarValidateOptions = {},
): Promise<SkipReport & { tree: TreeByPath }> {
  const all: TreeEntry[][] = [];
  for (let k = 0; k < layers.length; k++) {
    let stream: Awaited<ReturnType<LayerOpener>> | undefined;
    try {
      stream = await layers[k]!();
      // One reader: the tar reader stops at the end blocks, the rest (padding, and the digest
      // check at the end of the blob) is drained from the same one.
      const reader = new ByteReader(stream as AsyncIterable<Buffer>);
      all.push(await entriesFromTar(reader, k, { hash: false }));
      await reader.drain();
    } catch (e) {
      if (o.explain) await o.explain(k, e);
      throw inLayer(e, k, layers[k]!.label);
    } finally {
      stream?.destroy?.();
    }
  }
  const tally = new SkipTally();
  const kept = o.reserved ? dropReserved(all, o.reserved, tally) : all;
  // In stream order, as the tar apply meets the entries.
  const seen = new Map<string, EntryType>();
  for (const layer of kept) {
    for (const e of layer) {
      if (whiteoutOf(e.path)) continue;
      if (e.path === '' && e.type !== 'dir')
        throw new UnsafePathError('.', `the root of the image is a ${e.type}, not a directory`);
      if (e.type === 'hardlink') {
        const target = e.linkname ?? '';
        if (target === e.path) throw new BadHardlinkError(e.path, target, 'links to itself');
        const t = seen.get(target);
        if (t === undefined) throw new BadHardlinkError(e.path, target, 'target is not in the tree (yet)');
        if (t === 'dir') throw new BadHardlinkError(e.path, target, 'target is a directory');
      }
      seen.set(e.path, e.type);
    }
  }
  const tree = flattenLayers(kept);
  addImplicitParents(tree);
  // The final tree, for checks of the whole image (update.ts: checkOsTree before a snapshot exists).
  return { ...tally.report(), tree };
}
