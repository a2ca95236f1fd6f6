/**
 * Which 32-bit half of a 64-bit typed-array element comes first in memory: typed arrays use the
 * CPU's byte order (s390x is big-endian). For comparing 64-bit rows as 32-bit words.
 */
export const LOW = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1 ? 0 : 1;
export const HIGH = 1 - LOW;
