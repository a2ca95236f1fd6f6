/**
 * registries.conf(5) version 2 (TOML), found where containers/image finds it:
 *   - the file: --registries-conf FILE or $CONTAINERS_REGISTRIES_CONF (then it must exist), else
 *     $HOME/.config/containers/registries.conf if it exists, else /etc/containers/registries.conf
 *     (missing: no configuration);
 *   - the drop-ins: *.conf in /etc/containers/registries.conf.d, then in
 *     $HOME/.config/containers/registries.conf.d, each directory in name order; only the user
 *     directory when the user file is the file. Each later file replaces a [[registry]] of the
 *     same prefix and, where it sets it (also to []), unqualified-search-registries.
 *
 * For a reference host/repo the longest matching prefix wins (`*.example.com` matches
 * subdomains); its `location` replaces the prefix; `blocked` refuses it; `insecure` allows
 * http and unverified TLS; its [[registry.mirror]]s are tried in order, before the primary,
 * for pulls only, filtered by `pull-from-mirror` (all | digest-only | tag-only) and the older
 * `mirror-by-digest-only`.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'smol-toml';
import type { DockerReference } from '../../oci/reference.ts';
import { BlockedError, InvalidConfigError } from './errors.ts';

export type PullFromMirror = 'all' | 'digest-only' | 'tag-only';

export interface MirrorEntry {
  location: string;
  insecure: boolean;
  pullFromMirror: PullFromMirror;
}

export interface RegistryEntry {
  prefix: string;
  location: string;
  insecure: boolean;
  blocked: boolean;
  mirrorByDigestOnly: boolean;
  mirrors: MirrorEntry[];
  /** The file that defined it. */
  source: string;
}

export interface RegistriesConf {
  registries: RegistryEntry[];
  unqualifiedSearchRegistries: string[];
  /** The file that set unqualified-search-registries last; undefined when none did. */
  unqualifiedSearchOrigin?: string;
  /** short-name-mode; containers/image's default is enforcing. */
  shortNameMode?: ShortNameMode;
  /** [aliases]: short name -> fully qualified repository, and the file that set each. */
  aliases: Record<string, { value: string; source: string }>;
  files: string[];
}

export type ShortNameMode = 'enforcing' | 'permissive' | 'disabled';

export const DEFAULT_REGISTRIES_CONF = '/etc/containers/registries.conf';
export const DEFAULT_REGISTRIES_CONF_DIR = '/etc/containers/registries.conf.d';
const USER_REGISTRIES_CONF = '.config/containers/registries.conf';
const USER_REGISTRIES_CONF_DIR = '.config/containers/registries.conf.d';

export function emptyRegistriesConf(): RegistriesConf {
  return { registries: [], unqualifiedSearchRegistries: [], aliases: {}, files: [] };
}

function str(v: unknown, file: string, key: string): string | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string') throw new InvalidConfigError(file, `${key} must be a string`);
  return v;
}
function bool(v: unknown, file: string, key: string): boolean {
  if (v === undefined) return false;
  if (typeof v !== 'boolean') throw new InvalidConfigError(file, `${key} must be true or false`);
  return v;
}

/** Parse one file's text; the result is merged by loadRegistriesConf. */
export function parseRegistriesConf(text: string, file: string): RegistriesConf {
  let doc: Record<string, unknown>;
  try {
    doc = parse(text);
  } catch (e) {
    throw new InvalidConfigError(file, `not valid TOML: ${(e as Error).message.split('\n')[0]}`);
  }
  if (doc.registries !== undefined && typeof doc.registries === 'object' && !Array.isArray(doc.registries)) {
    throw new InvalidConfigError(file, 'is in the version 1 format ([registries.search]); tiu reads version 2');
  }
  const conf: RegistriesConf = { registries: [], unqualifiedSearchRegistries: [], aliases: {}, files: [file] };
  const mode = doc['short-name-mode'];
  if (mode !== undefined) {
    if (mode !== 'enforcing' && mode !== 'permissive' && mode !== 'disabled') {
      throw new InvalidConfigError(file, `short-name-mode must be enforcing, permissive or disabled, not ${JSON.stringify(mode)}`);
    }
    conf.shortNameMode = mode;
  }
  const aliases = doc.aliases;
  if (aliases !== undefined) {
    if (typeof aliases !== 'object' || aliases === null || Array.isArray(aliases)) throw new InvalidConfigError(file, '[aliases] must be a table');
    for (const [k, v] of Object.entries(aliases)) {
      if (typeof v !== 'string') throw new InvalidConfigError(file, `alias ${JSON.stringify(k)} must be a string`);
      conf.aliases[k] = { value: v, source: file };
    }
  }
  const usr = doc['unqualified-search-registries'];
  if (usr !== undefined) {
    if (!Array.isArray(usr) || usr.some((x) => typeof x !== 'string')) throw new InvalidConfigError(file, 'unqualified-search-registries must be a list of strings');
    conf.unqualifiedSearchRegistries = usr as string[];
    conf.unqualifiedSearchOrigin = file;
  }
  const regs = doc.registry;
  if (regs === undefined) return conf;
  if (!Array.isArray(regs)) throw new InvalidConfigError(file, '[[registry]] must be an array of tables');
  for (const [i, r] of (regs as unknown[]).entries()) {
    if (typeof r !== 'object' || r === null) throw new InvalidConfigError(file, `registry #${i + 1} is not a table`);
    const o = r as Record<string, unknown>;
    const location = str(o.location, file, 'location')?.replace(/\/+$/, '') ?? '';
    let prefix = str(o.prefix, file, 'prefix')?.replace(/\/+$/, '') ?? '';
    if (!prefix) prefix = location;
    if (!prefix) throw new InvalidConfigError(file, `registry #${i + 1} has neither prefix nor location`);
    if (prefix.startsWith('*.') && location) throw new InvalidConfigError(file, `registry ${prefix}: a wildcard prefix can't have a location`);
    const mirrors: MirrorEntry[] = [];
    const ms = o.mirror;
    if (ms !== undefined) {
      if (!Array.isArray(ms)) throw new InvalidConfigError(file, `registry ${prefix}: [[registry.mirror]] must be an array of tables`);
      for (const m of ms as unknown[]) {
        const mo = (m ?? {}) as Record<string, unknown>;
        const loc = str(mo.location, file, 'mirror location')?.replace(/\/+$/, '');
        if (!loc) throw new InvalidConfigError(file, `registry ${prefix}: a mirror without location`);
        const pfm = str(mo['pull-from-mirror'], file, 'pull-from-mirror') ?? 'all';
        if (!['all', 'digest-only', 'tag-only'].includes(pfm)) {
          throw new InvalidConfigError(file, `registry ${prefix}: pull-from-mirror must be all, digest-only or tag-only, not ${JSON.stringify(pfm)}`);
        }
        mirrors.push({ location: loc, insecure: bool(mo.insecure, file, 'mirror insecure'), pullFromMirror: pfm as PullFromMirror });
      }
    }
    conf.registries.push({
      prefix,
      location: location || (prefix.startsWith('*.') ? '' : prefix),
      insecure: bool(o.insecure, file, 'insecure'),
      blocked: bool(o.blocked, file, 'blocked'),
      mirrorByDigestOnly: bool(o['mirror-by-digest-only'], file, 'mirror-by-digest-only'),
      mirrors,
      source: file,
    });
  }
  return conf;
}

export interface LoadOptions {
  /** The file, as --registries-conf gives it; default $CONTAINERS_REGISTRIES_CONF, else the user's or the system's. */
  file?: string;
  /** The only drop-in directory to read; default the system's and the user's. */
  dropInDir?: string;
  env?: NodeJS.ProcessEnv;
  /** The system's file and drop-in directory (tests). */
  systemFile?: string;
  systemDir?: string;
}

/** Which files containers/image would read: the file (required when named explicitly) and the drop-in directories in order. */
export function registriesConfSources(opts: LoadOptions = {}): { file: string; required: boolean; dirs: string[] } {
  const env = opts.env ?? process.env;
  const home = env.HOME ?? homedir();
  const systemFile = opts.systemFile ?? DEFAULT_REGISTRIES_CONF;
  const systemDir = opts.systemDir ?? DEFAULT_REGISTRIES_CONF_DIR;
  const userFile = join(home, USER_REGISTRIES_CONF);
  const userDir = join(home, USER_REGISTRIES_CONF_DIR);
  const explicit = opts.file ?? (env.CONTAINERS_REGISTRIES_CONF || undefined);
  if (explicit !== undefined) return { file: explicit, required: true, dirs: opts.dropInDir ? [opts.dropInDir] : [systemDir, userDir] };
  // A user file replaces the system's configuration, drop-ins included.
  if (existsSync(userFile)) return { file: userFile, required: false, dirs: [opts.dropInDir ?? userDir] };
  return { file: systemFile, required: false, dirs: opts.dropInDir ? [opts.dropInDir] : [systemDir, userDir] };
}

function readIfThere(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new InvalidConfigError(path, `can't be read: ${(e as Error).message}`);
  }
}

function dropIns(dir: string): string[] {
  try {
    return readdirSync(dir, { withFileTypes: true })
      .filter((d) => !d.isDirectory() && d.name.endsWith('.conf'))
      .map((d) => d.name)
      .sort()
      .map((n) => join(dir, n));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new InvalidConfigError(dir, `can't be read: ${(e as Error).message}`);
  }
}

/** Read the file and its drop-ins (synchronously: a few small files, read once per target). */
export function loadRegistriesConf(opts: LoadOptions = {}): RegistriesConf {
  const src = registriesConfSources(opts);
  const merged = emptyRegistriesConf();
  const parts: RegistriesConf[] = [];
  const main = readIfThere(src.file);
  if (main !== undefined) parts.push(parseRegistriesConf(main, src.file));
  else if (src.required) throw new InvalidConfigError(src.file, 'does not exist');
  for (const path of src.dirs.flatMap(dropIns)) {
    const text = readIfThere(path);
    if (text !== undefined) parts.push(parseRegistriesConf(text, path));
  }
  for (const p of parts) {
    merged.files.push(...p.files);
    if (p.shortNameMode !== undefined) merged.shortNameMode = p.shortNameMode;
    Object.assign(merged.aliases, p.aliases);
    if (p.unqualifiedSearchOrigin !== undefined) {
      merged.unqualifiedSearchRegistries = p.unqualifiedSearchRegistries;
      merged.unqualifiedSearchOrigin = p.unqualifiedSearchOrigin;
    }
    for (const r of p.registries) {
      const i = merged.registries.findIndex((x) => x.prefix === r.prefix);
      if (i >= 0) merged.registries[i] = r;
      else merged.registries.push(r);
    }
  }
  return merged;
}

/** Does `prefix` match `name` (host/repo) at a component boundary? */
function prefixMatches(prefix: string, name: string): boolean {
  if (prefix.startsWith('*.')) {
    const host = name.split('/')[0]!.replace(/:\d+$/, '');
    return host.endsWith(prefix.slice(1));
  }
  if (name === prefix) return true;
  if (!name.startsWith(prefix)) return false;
  const next = name[prefix.length];
  return next === '/' || next === ':' || next === '@';
}

export function findRegistry(conf: RegistriesConf, name: string): RegistryEntry | undefined {
  let best: RegistryEntry | undefined;
  for (const r of conf.registries) {
    if (!prefixMatches(r.prefix, name)) continue;
    // Exact prefixes beat wildcards; longer beats shorter.
    const score = (e: RegistryEntry): number => (e.prefix.startsWith('*.') ? 0 : 10_000) + e.prefix.length;
    if (!best || score(r) > score(best)) best = r;
  }
  return best;
}

/** One place to reach a repository: registry host, path inside it, and whether http/unverified TLS is allowed. */
export interface Endpoint {
  registry: string;
  repository: string;
  insecure: boolean;
  mirror: boolean;
}

function rewrite(entry: RegistryEntry | undefined, location: string, name: string): { registry: string; repository: string } {
  let full = name;
  if (entry && !entry.prefix.startsWith('*.') && location) full = location + name.slice(entry.prefix.length);
  const slash = full.indexOf('/');
  return { registry: full.slice(0, slash), repository: full.slice(slash + 1) };
}

/** Where pushes go: the primary location. Throws REGISTRY_BLOCKED. */
export function pushEndpoint(conf: RegistriesConf, ref: DockerReference): Endpoint {
  const name = `${ref.registry}/${ref.repository}`;
  const e = findRegistry(conf, name);
  if (e?.blocked) throw new BlockedError(name, e.source);
  return { ...rewrite(e, e?.location ?? '', name), insecure: e?.insecure ?? false, mirror: false };
}

/**
 * Where pulls of `ref` are tried, in order: the mirrors that apply (by digest vs by tag), then
 * the primary location. Throws REGISTRY_BLOCKED.
 */
export function pullEndpoints(conf: RegistriesConf, ref: DockerReference): Endpoint[] {
  const name = `${ref.registry}/${ref.repository}`;
  const e = findRegistry(conf, name);
  if (e?.blocked) throw new BlockedError(name, e.source);
  const out: Endpoint[] = [];
  const byDigest = ref.digest !== undefined;
  for (const m of e?.mirrors ?? []) {
    const mode = e!.mirrorByDigestOnly && m.pullFromMirror === 'all' ? 'digest-only' : m.pullFromMirror;
    if (mode === 'digest-only' && !byDigest) continue;
    if (mode === 'tag-only' && byDigest) continue;
    const mirrorEntry = findRegistry(conf, rewrite(e, m.location, name).registry + '/' + rewrite(e, m.location, name).repository);
    if (mirrorEntry?.blocked) continue;
    out.push({ ...rewrite(e, m.location, name), insecure: m.insecure || (mirrorEntry?.insecure ?? false), mirror: true });
  }
  out.push(pushEndpoint(conf, ref));
  return out;
}
