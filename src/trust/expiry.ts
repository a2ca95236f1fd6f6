/**
 * The expiry a signature carries: `org.opensuse.tiu.expires` in the simple-signing payload's
 * `optional` section (cosign keeps optional claims, shows them, and `cosign verify -a` matches
 * them), an RFC 3339 UTC time with seconds precision. `tiu sign --expires DURATION` writes it.
 */
import { TiuError } from '../errors.ts';

export const EXPIRES_CLAIM = 'org.opensuse.tiu.expires';

const UNIT_MS = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 } as const;

/** Milliseconds of a duration like `30d`, `12h`, `90m`, `45s`, `2w`; undefined when it is not one. */
export function parseDuration(text: string): number | undefined {
  const m = /^([1-9][0-9]{0,8})([smhdw])$/.exec(text.trim());
  if (!m) return undefined;
  return Number(m[1]) * UNIT_MS[m[2] as keyof typeof UNIT_MS];
}

/** RFC 3339 UTC, seconds precision: 2026-12-05T06:00:00Z (expiries and created times). */
export function formatRfc3339(at: Date): string {
  return at.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** The expiry `now + duration`, as the claim's text; USAGE when the duration is not one. */
export function expiryAfter(duration: string, now: Date): string {
  const ms = parseDuration(duration);
  if (ms === undefined)
    throw new TiuError(
      'USAGE',
      `--expires ${JSON.stringify(duration)} is not a duration (a number and s, m, h, d or w: 30d, 12h, 90m)`,
    );
  return formatRfc3339(new Date(now.getTime() + ms));
}

const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$/;

/** An RFC 3339 time; undefined for anything else (hostile or malformed claims count as none). */
export function parseRfc3339(value: unknown): Date | undefined {
  if (typeof value !== 'string' || value.length > 64) return undefined;
  const m = RFC3339.exec(value);
  if (!m) return undefined;
  const [, y, mo, d, h, mi, s] = m.map(Number);
  if (mo! < 1 || mo! > 12 || d! < 1 || d! > 31 || h! > 23 || mi! > 59 || s! > 60) return undefined;
  const t = Date.parse(value.toUpperCase());
  if (Number.isNaN(t) || y! < 1) return undefined;
  return new Date(t);
}

/** The expiry a verified signature's optional section carries; undefined when none or not a time. */
export function expiryOf(optional: Record<string, unknown> | null): Date | undefined {
  return optional ? parseRfc3339(optional[EXPIRES_CLAIM]) : undefined;
}
