/** Small helpers to read and write whole, small documents (manifests, payloads) through a Target. */
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Writable } from 'node:stream';
import type { Target } from '../content/interfaces.ts';
import { ManifestTooLargeError } from '../oci/validate.ts';
import { sha256, VerifyingStream } from '../oci/digest.ts';
import type { Descriptor } from '../oci/types.ts';
import { isTiuError } from '../errors.ts';

/** The whole content of `desc`, verified by digest and size; refuses anything over `max` bytes. */
export async function readVerified(target: Target, desc: Descriptor, max: number, what: string): Promise<Buffer> {
  if (desc.size > max || desc.size < 0) throw new ManifestTooLargeError(desc.size, max);
  const chunks: Buffer[] = [];
  const src = await target.fetch(desc);
  await pipeline(
    src,
    new VerifyingStream(desc, what),
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        chunks.push(chunk);
        cb();
      },
    }),
  );
  return Buffer.concat(chunks);
}

export function descriptorOf(mediaType: string, data: Uint8Array, extra: Partial<Descriptor> = {}): Descriptor {
  return { mediaType, digest: sha256(data), size: data.length, ...extra };
}

/** Push content unless the target already has it. */
export async function pushIfAbsent(target: Target, desc: Descriptor, data: Uint8Array): Promise<void> {
  if (await target.exists(desc)) return;
  await target.push(desc, Readable.from([Buffer.from(data)]));
}

/** Resolve a tag, or undefined if the target has no such tag (any other failure propagates). */
export async function resolveOptional(target: Target, reference: string): Promise<Descriptor | undefined> {
  try {
    return await target.resolve(reference);
  } catch (e) {
    if (isTiuError(e, 'CONTENT_NOT_FOUND')) return undefined;
    throw e;
  }
}
