/**
 * How old an image is, by its signed manifests (downgrade protection): the OCI annotations
 * `org.opencontainers.image.created` (RFC 3339) and `org.opencontainers.image.version` (compared
 * the way rpm compares versions: MicroOS versions are snapshot dates like 20261204, others 6.1.2).
 * For an index, the platform manifest's annotation, else the index's. Annotations are image data:
 * a created time that is not RFC 3339, or a version that is too long or holds control
 * characters, counts as absent. Pure: the stage that refuses is src/deploy/update/downgrade.ts.
 */
import { Annotation } from '../oci/types.ts';
import { parseManifestOrIndex, type ParsedManifest } from '../oci/validate.ts';
import { formatRfc3339, parseRfc3339 } from '../trust/expiry.ts';
import { compareVersions } from '../trust/version.ts';

const MAX_VERSION = 128;

export interface ImageAge {
  /** RFC 3339, as normalised by formatRfc3339 (UTC, seconds). */
  created?: string;
  version?: string;
}

/** An age with only the fields that are known. */
export function ageFrom(created: string | undefined, version: string | undefined): ImageAge {
  return { ...(created ? { created } : {}), ...(version ? { version } : {}) };
}

function annotationsOf(p: ParsedManifest): Record<string, string> | undefined {
  return p.kind === 'manifest' ? p.manifest.annotations : p.index.annotations;
}

/** The created time as tiu records it (UTC, seconds); undefined when not an RFC 3339 time. */
export function normalCreated(value: unknown): string | undefined {
  const t = parseRfc3339(value);
  return t ? formatRfc3339(t) : undefined;
}

/** A version tiu compares and records; undefined when absent or not plain text. */
export function normalVersion(value: unknown): string | undefined {
  if (typeof value !== 'string' || value === '' || value.length > MAX_VERSION) return undefined;
  // eslint-disable-next-line no-control-regex
  return /[\u0000-\u001f\u007f]/.test(value) ? undefined : value;
}

/** The age an image's verified manifests state: the platform manifest's annotations, else the root index's. */
export function ageOfImage(root: ParsedManifest, platform: ParsedManifest): ImageAge {
  const own = annotationsOf(platform) ?? {};
  const index = root.kind === 'index' ? (annotationsOf(root) ?? {}) : {};
  const created = normalCreated(own[Annotation.Created]) ?? normalCreated(index[Annotation.Created]);
  const version = normalVersion(own[Annotation.Version]) ?? normalVersion(index[Annotation.Version]);
  return ageFrom(created, version);
}

export function describeAge(a: ImageAge | undefined): string {
  if (!a || (!a.created && !a.version)) return 'no version or created time';
  return [a.version ? `version ${a.version}` : '', a.created ? `created ${a.created}` : ''].filter(Boolean).join(', ');
}

/** One image the device runs or has pending, and what is known of its age. */
export interface HeldAge {
  snapshot: number;
  role: 'booted' | 'default';
  age: ImageAge | undefined;
}

export interface AgeJudgement {
  offered: ImageAge;
  held: HeldAge[];
  /** Why the offer is older than a held image (empty: it is not, or nothing could tell). */
  older: string[];
  /** What could not be compared (either side lacks the data): said, never a refusal. */
  notes: string[];
}

/**
 * Whether `offered` is older than any held image: its created time earlier, or, where both carry
 * a version, its version lower. A comparison either side lacks the data for is a note.
 */
export function judgeAge(offered: ImageAge, held: HeldAge[]): AgeJudgement {
  const older: string[] = [];
  const notes: string[] = [];
  for (const h of held) {
    const name = `snapshot ${h.snapshot} (${h.role})`;
    const a = h.age ?? {};
    let compared = false;
    if (offered.created && a.created) {
      compared = true;
      if (Date.parse(offered.created) < Date.parse(a.created))
        older.push(`created ${offered.created}, before ${a.created} of ${name}`);
    }
    if (offered.version && a.version) {
      compared = true;
      if (compareVersions(offered.version, a.version) < 0)
        older.push(`version ${offered.version}, lower than ${a.version} of ${name}`);
    }
    if (!compared)
      notes.push(
        `cannot tell whether the image is older than ${name}: the offer has ${describeAge(offered)}, ${name} has ${describeAge(h.age)}`,
      );
  }
  return { offered, held, older, notes };
}

/** The age stated by an image's verified manifests (bytes as kept in the TOC store); {} when they do not parse. */
export function ageOfManifests(m: { root: { bytes: Uint8Array }; platform: { bytes: Uint8Array } }): ImageAge {
  try {
    return ageOfImage(parseManifestOrIndex(m.root.bytes), parseManifestOrIndex(m.platform.bytes));
  } catch {
    return {};
  }
}
