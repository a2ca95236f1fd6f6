// Writing boot loader variables the way efivarfs holds them (tiu only reads and removes them).
import { LOADER_VARIABLE_ATTRIBUTES } from '../../src/host/esp.ts';

/**
 * An efivarfs file's bytes for a boot loader string variable: the 4-byte little-endian
 * attributes, then the value in UTF-16LE with its terminating NUL (as systemd writes them).
 * efivarfs takes a variable in one write() of exactly these bytes.
 */
export function encodeLoaderVariable(value: string, attributes = LOADER_VARIABLE_ATTRIBUTES): Buffer {
  const head = Buffer.alloc(4);
  head.writeUInt32LE(attributes >>> 0);
  return Buffer.concat([head, Buffer.from(`${value}\0`, 'utf16le')]);
}
