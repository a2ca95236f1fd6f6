/**
 * Where credentials for a registry come from, in the containers tools' order
 * (containers-auth.json(5)): --creds, else --authfile alone, else
 *   $REGISTRY_AUTH_FILE (or ${XDG_RUNTIME_DIR}/containers/auth.json, /run/containers/<uid>/auth.json),
 *   ${XDG_CONFIG_HOME:-~/.config}/containers/auth.json, ~/.docker/config.json ($DOCKER_CONFIG),
 *   ~/.dockercfg.
 * In each file: credHelpers for the host, then `auths` (most specific of host/ns/repo, host/ns,
 * host), then credsStore. Helpers run as `docker-credential-<name> get` through src/host/.
 * The first file with an answer wins. Nothing here ever puts a secret in a message.
 */
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { TiuError } from '../../errors.ts';
import { CommandFailedError, run } from '../../host/exec.ts';
import { InvalidConfigError } from './errors.ts';

export interface Credentials {
  username?: string;
  password?: string;
  /** An OAuth2 refresh token (auth.json `identitytoken`, or a helper's `<token>` answer). */
  identityToken?: string;
  /** Where they came from: a file path, `docker-credential-x`, or `--creds`. */
  source: string;
}

export interface CredentialOptions {
  /** --authfile: only this file is read. */
  authFile?: string;
  /** --creds user:password */
  creds?: string;
  env?: NodeJS.ProcessEnv;
  home?: string;
  /** Helper programs' timeout. Default 20 s. */
  helperTimeoutMs?: number;
}

export interface CredentialLookup {
  credentials?: Credentials;
  /** The files (and helpers) consulted, in order, for messages. */
  consulted: string[];
}

export function authFilePaths(opts: CredentialOptions = {}): string[] {
  if (opts.authFile) return [opts.authFile];
  const env = opts.env ?? process.env;
  const home = opts.home ?? env.HOME ?? homedir();
  const paths: string[] = [];
  if (env.REGISTRY_AUTH_FILE) paths.push(env.REGISTRY_AUTH_FILE);
  else if (env.XDG_RUNTIME_DIR) paths.push(join(env.XDG_RUNTIME_DIR, 'containers/auth.json'));
  else paths.push(`/run/containers/${process.getuid?.() ?? 0}/auth.json`);
  paths.push(join(env.XDG_CONFIG_HOME || join(home, '.config'), 'containers/auth.json'));
  paths.push(join(env.DOCKER_CONFIG || join(home, '.docker'), 'config.json'));
  paths.push(join(home, '.dockercfg'));
  return paths;
}

export class InvalidCredentialsError extends TiuError {
  constructor(why: string) {
    super('CREDENTIALS_INVALID', why);
  }
}

export function parseCredsOption(creds: string): Credentials {
  const i = creds.indexOf(':');
  if (i <= 0) throw new InvalidCredentialsError('--creds must be USERNAME:PASSWORD');
  return { username: creds.slice(0, i), password: creds.slice(i + 1), source: '--creds' };
}

/** `https://index.docker.io/v1/` -> docker.io, `http://host:5000/` -> host:5000, `host/ns` stays. */
export function normalizeAuthKey(key: string): string {
  let k = key.replace(/^[a-z]+:\/\//, '');
  k = k.replace(/\/v[12]\/?$/, '').replace(/\/+$/, '');
  if (k === 'index.docker.io' || k === 'registry-1.docker.io') k = 'docker.io';
  return k;
}

interface AuthEntry {
  auth?: string;
  username?: string;
  password?: string;
  identitytoken?: string;
}
interface AuthFile {
  auths?: Record<string, AuthEntry>;
  credHelpers?: Record<string, string>;
  credsStore?: string;
}

function decodeEntry(e: AuthEntry, source: string): Credentials | undefined {
  const c: Credentials = { source };
  if (typeof e.auth === 'string' && e.auth !== '') {
    const plain = Buffer.from(e.auth, 'base64').toString('utf8');
    const i = plain.indexOf(':');
    if (i < 0) throw new InvalidConfigError(source, 'an `auth` entry is not base64 of USERNAME:PASSWORD');
    c.username = plain.slice(0, i);
    c.password = plain.slice(i + 1);
  } else if (typeof e.username === 'string' && typeof e.password === 'string') {
    c.username = e.username;
    c.password = e.password;
  }
  if (typeof e.identitytoken === 'string' && e.identitytoken !== '') c.identityToken = e.identitytoken;
  return c.username !== undefined || c.identityToken ? c : undefined;
}

async function readAuthFile(path: string): Promise<AuthFile | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    return undefined;
  }
  let j: unknown;
  try {
    j = JSON.parse(text);
  } catch {
    throw new InvalidConfigError(path, 'is not valid JSON');
  }
  if (typeof j !== 'object' || j === null || Array.isArray(j)) throw new InvalidConfigError(path, 'is not a JSON object');
  const o = j as Record<string, unknown>;
  if (path.endsWith('.dockercfg')) return { auths: o as Record<string, AuthEntry> };
  return {
    ...(typeof o.auths === 'object' && o.auths ? { auths: o.auths as Record<string, AuthEntry> } : {}),
    ...(typeof o.credHelpers === 'object' && o.credHelpers ? { credHelpers: o.credHelpers as Record<string, string> } : {}),
    ...(typeof o.credsStore === 'string' ? { credsStore: o.credsStore } : {}),
  };
}

/** Ask `docker-credential-<helper> get` for `registry`; undefined when it has none. */
export async function credentialHelper(helper: string, registry: string, opts: CredentialOptions = {}): Promise<Credentials | undefined> {
  if (!/^[A-Za-z0-9._-]+$/.test(helper)) throw new InvalidCredentialsError(`invalid credential helper name ${JSON.stringify(helper)}`);
  const program = `docker-credential-${helper}`;
  const r = await run(program, ['get'], {
    input: registry,
    timeout: opts.helperTimeoutMs ?? 20_000,
    allowFailure: true,
    ...(opts.env ? { env: opts.env } : {}),
  });
  const out = r.stdout;
  if (r.exitCode !== 0) {
    // Helpers say "none" by exiting 1 with "credentials not found ..." (on stdout or stderr).
    if (/not found/i.test(out + r.stderr)) return undefined;
    throw new CommandFailedError([program, 'get'], r.exitCode, r.stderr.trim().slice(-400));
  }
  let j: { Username?: unknown; Secret?: unknown };
  try {
    j = JSON.parse(out) as typeof j;
  } catch {
    if (/not found/i.test(out)) return undefined;
    throw new InvalidCredentialsError(`${program} answered something that is not JSON`);
  }
  if (typeof j.Secret !== 'string') throw new InvalidCredentialsError(`${program} answered without a Secret`);
  if (j.Username === '<token>') return { identityToken: j.Secret, source: program };
  return { username: typeof j.Username === 'string' ? j.Username : '', password: j.Secret, source: program };
}

/** Credentials for `registry` (host[:port]) and `repository`, and what was consulted. */
export async function lookupCredentials(registry: string, repository: string, opts: CredentialOptions = {}): Promise<CredentialLookup> {
  if (opts.creds) return { credentials: parseCredsOption(opts.creds), consulted: ['--creds'] };
  const consulted: string[] = [];
  const keys: string[] = [];
  const parts = repository.split('/');
  for (let i = parts.length; i >= 1; i--) keys.push(`${registry}/${parts.slice(0, i).join('/')}`);
  keys.push(registry);
  for (const path of authFilePaths(opts)) {
    consulted.push(path);
    const f = await readAuthFile(path);
    if (!f) continue;
    const helper = f.credHelpers?.[registry];
    if (helper) {
      consulted.push(`docker-credential-${helper}`);
      const c = await credentialHelper(helper, registry, opts);
      if (c) return { credentials: c, consulted };
    }
    if (f.auths) {
      const byKey = new Map<string, AuthEntry>();
      for (const [k, v] of Object.entries(f.auths)) {
        if (typeof v === 'object' && v !== null) byKey.set(normalizeAuthKey(k), v);
      }
      for (const k of keys) {
        const e = byKey.get(k);
        if (!e) continue;
        const c = decodeEntry(e, path);
        if (c) return { credentials: c, consulted };
      }
    }
    if (f.credsStore) {
      consulted.push(`docker-credential-${f.credsStore}`);
      const c = await credentialHelper(f.credsStore, registry, opts);
      if (c) return { credentials: c, consulted };
    }
  }
  return { consulted };
}
