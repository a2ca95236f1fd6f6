/**
 * Progress of a long download as occasional lines ("downloading: 45.0 MiB of 211 MiB (21%)"):
 * one every `everyMs` at most, so a device's log shows that the update is moving without a
 * line per chunk. A download that ends before the first interval prints nothing.
 */
import { humanSize } from '../format.ts';

export interface DownloadProgressOptions {
  /** Minimum time between two lines (default 2000 ms; 0: a line for every call). */
  everyMs?: number;
  now?: () => number;
}

/** A counter to feed with byte counts as they arrive; `total` undefined when the size is not known. */
export function downloadProgress(
  total: number | undefined,
  emit: (line: string) => void,
  opts: DownloadProgressOptions = {},
): (bytes: number) => void {
  const everyMs = opts.everyMs ?? 2000;
  const now = opts.now ?? Date.now;
  let done = 0;
  let last = now();
  return (bytes: number) => {
    done += bytes;
    const t = now();
    if (t - last < everyMs) return;
    last = t;
    if (total === undefined || total <= 0) emit(`downloading: ${humanSize(done)}`);
    else
      emit(
        `downloading: ${humanSize(done)} of ${humanSize(total)} (${Math.min(100, Math.floor((100 * done) / total))}%)`,
      );
  };
}
