/**
 * Growing and shrinking the typed arrays of row tables (a scan, a content index) without leaving
 * the old array as garbage. A replaced array's memory is outside the V8 heap and given back only
 * when a full collection finds it dead; an ArrayBuffer that grew in steps was promoted long
 * before, so every old copy stayed in RSS until then (on the bench's larger tree ~8 MiB of a scan's
 * superseded rows at an update's peak). `ArrayBuffer.prototype.transfer` moves the contents into
 * a buffer of the new length and detaches the old one, which frees its memory at once.
 */

import { detach } from './buffer-pool.ts';

type Resizable = Uint8Array | Int32Array | Uint32Array | Float64Array | BigInt64Array | BigUint64Array;

/** Does `a` alone own its (non-shared, resizable by transfer) buffer, from its first byte to its last? */
function ownsBuffer(a: Resizable): boolean {
  return a.buffer instanceof ArrayBuffer && a.byteOffset === 0 && a.byteLength === a.buffer.byteLength;
}

/**
 * `a` with room for `length` elements: its first elements kept (as many as fit), the rest zero.
 * When `a` owns its whole buffer that buffer is moved (`a` reads as empty afterwards and its
 * memory is free now); otherwise a copy is made. Callers keep no other view of `a`.
 */
export function resized<T extends Resizable>(a: T, length: number): T {
  const moved = ownsBuffer(a) ? (a.buffer as ArrayBuffer).transfer(length * a.BYTES_PER_ELEMENT) : undefined;
  // A Buffer stays a Buffer (its constructor is deprecated: Buffer.from/alloc make them).
  if (Buffer.isBuffer(a)) {
    if (moved) return Buffer.from(moved) as unknown as T;
    const out = Buffer.alloc(length);
    a.copy(out, 0, 0, Math.min(a.length, length));
    return out as unknown as T;
  }
  const make = a.constructor as new (from: ArrayBuffer | number) => T;
  if (moved) return new make(moved);
  const out = new make(length);
  (out as Uint8Array).set((a as Uint8Array).subarray(0, Math.min(a.length, length)));
  return out;
}

/** Give `a`'s memory back now, where it owns its whole buffer (it reads as empty afterwards); otherwise nothing. */
export function freeArray(a: Resizable): void {
  if (ownsBuffer(a)) detach(a.buffer);
}
