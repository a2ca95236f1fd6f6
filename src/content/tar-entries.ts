/**
 * Walk the entries of a tar file, streaming: the one loop both archive readers (oci-archive,
 * docker-archive) use, so a reader's failure stops the tar and a broken tar is said as the
 * reader's own error (`invalid`), never as tar-stream's text alone.
 */
import { createReadStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import tar, { type Extract } from 'tar-stream';
import { TiuError } from '../errors.ts';

/** One entry: its header and a stream of its bytes (read it or `resume()` it). */
export type TarEntry = Extract extends AsyncIterable<infer E> ? E : never;

export async function forEachTarEntry(
  archive: string,
  onEntry: (entry: TarEntry) => Promise<void>,
  invalid: (why: string) => TiuError,
): Promise<void> {
  const extract = tar.extract();
  const reading = pipeline(createReadStream(archive), extract).catch((e: unknown) => {
    throw e instanceof TiuError ? e : invalid((e as Error).message);
  });
  try {
    for await (const entry of extract) await onEntry(entry);
  } catch (e) {
    extract.destroy();
    await reading.catch(() => undefined);
    if (e instanceof TiuError) throw e;
    throw invalid((e as Error).message);
  }
  await reading;
}
