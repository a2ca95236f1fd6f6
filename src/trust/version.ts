/**
 * Version order as rpm compares versions (rpmvercmp): a version is a run of digit segments and
 * letter segments, anything else separates them. Digit segments compare as numbers (leading
 * zeros ignored), letter segments as bytes; a digit segment is newer than a letter segment; when
 * one version runs out first, the longer one is newer. `~` sorts before anything (1.0~rc1 <
 * 1.0), `^` after the version without it but before any further segment (1.0 < 1.0^git1 < 1.0.1).
 * MicroOS versions are snapshot dates (20261204), others dotted numbers (6.1.2): both compare as
 * expected.
 */

const isDigit = (c: string): boolean => c >= '0' && c <= '9';
const isAlpha = (c: string): boolean => (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
const isAlnum = (c: string): boolean => isDigit(c) || isAlpha(c);

/** -1 when `a` is older than `b`, 1 when newer, 0 when rpm counts them equal. */
export function compareVersions(a: string, b: string): -1 | 0 | 1 {
  if (a === b) return 0;
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    while (i < a.length && !isAlnum(a[i]!) && a[i] !== '~' && a[i] !== '^') i++;
    while (j < b.length && !isAlnum(b[j]!) && b[j] !== '~' && b[j] !== '^') j++;
    const x = a[i] ?? '';
    const y = b[j] ?? '';
    if (x === '~' || y === '~') {
      if (x !== '~') return 1;
      if (y !== '~') return -1;
      i++;
      j++;
      continue;
    }
    if (x === '^' || y === '^') {
      if (x === '') return -1;
      if (y === '') return 1;
      if (x !== '^') return 1;
      if (y !== '^') return -1;
      i++;
      j++;
      continue;
    }
    if (x === '' || y === '') break;
    const numeric = isDigit(x);
    const inSegment = numeric ? isDigit : isAlpha;
    const si = i;
    const sj = j;
    while (i < a.length && inSegment(a[i]!)) i++;
    while (j < b.length && inSegment(b[j]!)) j++;
    // `b` has a segment of the other kind here: a digit segment is the newer one.
    if (j === sj) return numeric ? 1 : -1;
    let sa = a.slice(si, i);
    let sb = b.slice(sj, j);
    if (numeric) {
      sa = sa.replace(/^0+/, '');
      sb = sb.replace(/^0+/, '');
      if (sa.length !== sb.length) return sa.length > sb.length ? 1 : -1;
    }
    if (sa !== sb) return sa > sb ? 1 : -1;
  }
  const restA = i < a.length;
  const restB = j < b.length;
  if (!restA && !restB) return 0;
  return restA ? 1 : -1;
}
