/**
 * os-release(5) of the tree: parsed into labels and annotations of the bundle.
 */
import { BuildError } from './errors.ts';

/** Keys copied into config labels and manifest annotations (as org.opensuse.tiu.os-release.KEY). */
export const OS_RELEASE_KEYS = [
  'ID',
  'ID_LIKE',
  'NAME',
  'PRETTY_NAME',
  'VERSION',
  'VERSION_ID',
  'VERSION_CODENAME',
  'BUILD_ID',
  'IMAGE_ID',
  'IMAGE_VERSION',
  'VARIANT',
  'VARIANT_ID',
  'CPE_NAME',
] as const;

/** KEY=value lines; values may be quoted with ' or " and use backslash escapes. */
export function parseOsRelease(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (!m) continue;
    let v = m[2]!;
    if (v.length >= 2 && (v[0] === '"' || v[0] === "'") && v.endsWith(v[0])) {
      const q = v[0];
      v = v.slice(1, -1);
      if (q === '"') v = v.replace(/\\([$"\\`])/g, '$1');
    }
    out[m[1]!] = v;
  }
  return out;
}

/** An os-release payload read from a tree: refuse absurd sizes rather than read them. */
export function checkOsReleaseSize(size: number): void {
  if (size > 64 * 1024) throw new BuildError('BUILD_SOURCE_UNSUPPORTED', `os-release of ${size} bytes is too large`);
}
