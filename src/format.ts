/** Small formatting helpers for human output (CLI lines and progress). */

export function humanSize(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = -1;
  do {
    v /= 1024;
    u++;
  } while (v >= 1024 && u < units.length - 1);
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[u]}`;
}

/** `sha256:0123456789ab` — enough of a digest to tell blobs apart in progress lines. */
export function shortDigest(d: string): string {
  const i = d.indexOf(':');
  return i === -1 ? d.slice(0, 19) : d.slice(0, i + 13);
}
