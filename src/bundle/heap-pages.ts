/**
 * The heap pages a build no longer uses, handed back to the system before its TOCs are
 * compressed. V8 keeps the pages it freed (pooled for reuse) resident until a last-resort
 * collection: after the larger bench tree's content is written, ~24 MiB of them, while its V8
 * heap holds ~14, and they would sit beside the largest TOC's level-19 tables (~80 MiB), the
 * build's peak of memory. bin/tiu exposes `gc` for build; without it (tiu as a library, the
 * tests) this does nothing.
 */
export function releaseFreedHeapPages(): void {
  globalThis.gc?.({ type: 'major', execution: 'sync', flavor: 'last-resort' });
}
