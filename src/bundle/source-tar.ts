/**
 * Tar archives (kiwi's .tar/.tar.gz/.tar.xz/.tar.zst/.tbz) and image layers as a tree. Members
 * are applied in order (a later member replaces an earlier one of the same path, as
 * extracting would); with `whiteouts`, OCI whiteout files delete what lower layers had.
 * Regular file content goes to a spool file, so only metadata stays in memory.
 */
import type { FileHandle } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { BuildError, treePath } from './errors.ts';
import { showPath, type TreeEntry } from '../layer/entry.ts';
import { isAtOrBelow } from '../layer/paths.ts';
import { ByteReader, memberEntry, readTar } from '../layer/tar.ts';

const WH = '.wh.';
const OPAQUE = '.wh..wh..opq';

export class TreeBuilder {
  readonly entries = new Map<string, TreeEntry>();
  readonly #spool: FileHandle;
  readonly #spoolName: string;
  #spoolSize = 0;

  constructor(spool: FileHandle, spoolName: string) {
    this.#spool = spool;
    this.#spoolName = spoolName;
  }

  #removeTree(path: string, keep?: Set<string>): void {
    for (const p of [...this.entries.keys()]) {
      if (isAtOrBelow(p, path) && !keep?.has(p)) this.entries.delete(p);
    }
  }

  /** Apply one tar stream. `what` names it in errors. */
  async addTar(
    stream: Readable,
    what: string,
    opts: { whiteouts?: boolean; signal?: AbortSignal } = {},
  ): Promise<void> {
    const reader = new ByteReader(stream);
    const thisLayer = new Set<string>();
    for await (const m of readTar(reader, what)) {
      opts.signal?.throwIfAborted();
      const path = treePath(m.name, `${what}: member ${JSON.stringify(showPath(m.name))}`);
      if (path === '') {
        // The archive's root directory ("./"): nothing to record; the tree root is implicit.
        if (m.type === 'dir') continue;
        throw new BuildError('TAR_INVALID', `${what}: a non-directory member names the root`);
      }
      const base = path.slice(path.lastIndexOf('/') + 1);
      if (opts.whiteouts && base.startsWith(WH)) {
        const dir = path.slice(0, Math.max(0, path.lastIndexOf('/')));
        if (base === OPAQUE) {
          for (const p of [...this.entries.keys()])
            if (p !== dir && isAtOrBelow(p, dir) && !thisLayer.has(p)) this.entries.delete(p);
        } else {
          this.#removeTree(dir === '' ? base.slice(WH.length) : `${dir}/${base.slice(WH.length)}`);
        }
        continue;
      }
      if (m.type === 'hardlink') treePath(m.linkname, `${what}: hardlink ${JSON.stringify(showPath(m.name))}`);
      const e = memberEntry(m, path, what);
      if (e.type === 'reg' && m.size > 0) {
        e.content = { file: this.#spoolName, offset: this.#spoolSize };
        let got = 0;
        for await (const piece of m.body()) {
          await this.#spool.write(piece, 0, piece.length, this.#spoolSize + got);
          got += piece.length;
        }
        this.#spoolSize += got;
      } else if (e.type === 'hardlink') {
        const target = e.linkname!;
        const t = this.entries.get(target);
        if (!t || (t.type !== 'reg' && t.type !== 'hardlink')) {
          throw new BuildError(
            'TAR_INVALID',
            `${what}: hardlink ${JSON.stringify(showPath(path))} points at ${JSON.stringify(showPath(target))}, which is not a regular file earlier in the archive`,
          );
        }
        e.linkname = t.type === 'hardlink' ? t.linkname! : target;
        e.size = t.size;
        e.content = t.content;
      }
      const old = this.entries.get(path);
      // Replacing a directory by something else drops what was inside it (a scan, but rare);
      // replacing a file is just the new entry.
      if (old?.type === 'dir' && e.type !== 'dir') this.#removeTree(path);
      this.entries.set(path, e);
      thisLayer.add(path);
    }
    await reader.drain();
  }
}
