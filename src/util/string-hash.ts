/**
 * FNV-1a (32-bit) of a string's char codes, from a basis chosen at random for each process: where
 * the open-addressing tables of paths (a scan's rows, the new tree's) look for a path first. The
 * paths come from an image, and paths made to collide under a known basis would turn each lookup
 * into a walk of the whole table. Only slots depend on it: the tables give their rows in the
 * order they were added.
 */
import { randomInt } from 'node:crypto';

const BASIS = (0x811c9dc5 ^ randomInt(2 ** 32 - 1)) >>> 0;

export function fnv1a(s: string): number {
  let h = BASIS;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}
