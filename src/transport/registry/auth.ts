/**
 * Registry authentication: anonymous, Basic, and the Bearer token flow of the distribution
 * spec (realm/service/scope; GET with Basic credentials, or the OAuth2 POST with a refresh
 * token). Tokens are cached per scope set until shortly before they expire; a refresh token
 * handed out by the issuer (or found in auth.json as `identitytoken`) is used for the next ones.
 */
import { MAX_MANIFEST_BYTES } from '../../oci/mediatypes.ts';
import { lookupCredentials, type CredentialLookup, type CredentialOptions, type Credentials } from './credentials.ts';
import { UnauthorizedError, UnexpectedStatusError } from './errors.ts';
import { bodyExcerpt, readBody, type HttpClient, type HttpResponse, type ResponseBody } from './http.ts';

export interface Challenge {
  /** lower case: basic, bearer */
  scheme: string;
  params: Record<string, string>;
}

/** Parse WWW-Authenticate (one or more challenges). */
export function parseChallenges(header: string | string[] | undefined): Challenge[] {
  const out: Challenge[] = [];
  for (const h of Array.isArray(header) ? header : header ? [header] : []) {
    let i = 0;
    let cur: Challenge | undefined;
    const skip = (): void => {
      while (i < h.length && /[\s,]/.test(h[i]!)) i++;
    };
    while (i < h.length) {
      skip();
      const m = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+/.exec(h.slice(i));
      if (!m) break;
      const token = m[0];
      i += token.length;
      while (i < h.length && h[i] === ' ') i++;
      if (h[i] === '=') {
        i++;
        while (h[i] === ' ') i++;
        let value = '';
        if (h[i] === '"') {
          i++;
          while (i < h.length && h[i] !== '"') {
            if (h[i] === '\\') i++;
            value += h[i] ?? '';
            i++;
          }
          i++;
        } else {
          const v = /^[^,\s]*/.exec(h.slice(i))![0];
          value = v;
          i += v.length;
        }
        if (cur) cur.params[token.toLowerCase()] = value;
      } else {
        cur = { scheme: token.toLowerCase(), params: {} };
        out.push(cur);
      }
    }
  }
  return out;
}

export function pullScope(repository: string): string {
  return `repository:${repository}:pull`;
}
export function pushScope(repository: string): string {
  return `repository:${repository}:pull,push`;
}

interface CachedToken {
  token: string;
  expires: number;
}

/** Authentication state for one registry host. */
export class RegistryAuth {
  readonly registry: string;
  readonly #http: HttpClient;
  readonly #credOpts: CredentialOptions;
  #challenge: Challenge | undefined;
  readonly #tokens = new Map<string, CachedToken>();
  #refreshToken: string | undefined;
  #basicSent = false;
  readonly #creds = new Map<string, Promise<CredentialLookup>>();
  /** Issued tokens, counted (tests check caching). */
  tokenRequests = 0;

  readonly #now: () => number;

  constructor(registry: string, http: HttpClient, credOpts: CredentialOptions = {}, now: () => number = Date.now) {
    this.#now = now;
    this.registry = registry;
    this.#http = http;
    this.#credOpts = credOpts;
  }

  credentials(repository: string): Promise<CredentialLookup> {
    // Credentials can be namespaced (host/ns/repo); look up per repository, once.
    let p = this.#creds.get(repository);
    if (!p) {
      p = lookupCredentials(this.registry, repository, this.#credOpts);
      this.#creds.set(repository, p);
    }
    return p;
  }

  /** What the registry asked for on a 401 (a ping of /v2/ usually tells). */
  learn(res: HttpResponse<ResponseBody>): void {
    const chs = parseChallenges(res.headers['www-authenticate']);
    this.#challenge = chs.find((c) => c.scheme === 'bearer') ?? chs.find((c) => c.scheme === 'basic') ?? this.#challenge;
  }

  get scheme(): string | undefined {
    return this.#challenge?.scheme;
  }

  /** The Authorization value for a request needing `scopes`, or undefined (anonymous). */
  async header(repository: string, scopes: string[], signal?: AbortSignal): Promise<string | undefined> {
    const ch = this.#challenge;
    if (!ch) return undefined;
    if (ch.scheme === 'basic') {
      const { credentials: c } = await this.credentials(repository);
      if (!c?.username) return undefined;
      this.#basicSent = true;
      return 'Basic ' + Buffer.from(`${c.username}:${c.password ?? ''}`).toString('base64');
    }
    if (ch.scheme === 'bearer') {
      const key = [...new Set(scopes)].sort().join(' ');
      const t = this.#tokens.get(key);
      if (t && t.expires > this.#now()) return `Bearer ${t.token}`;
      const token = await this.#fetchToken(ch, repository, [...new Set(scopes)].sort(), signal);
      return `Bearer ${token}`;
    }
    return undefined;
  }

  /**
   * After a 401: forget the cached token for these scopes and learn the new challenge.
   * Returns whether one more attempt makes sense; otherwise throws REGISTRY_UNAUTHORIZED.
   */
  async rejected(res: HttpResponse<ResponseBody>, repository: string, scopes: string[], attempt: number, what: string): Promise<boolean> {
    this.learn(res);
    res.body.resume();
    this.#tokens.delete([...new Set(scopes)].sort().join(' '));
    const lookup = await this.credentials(repository);
    if (attempt === 0) {
      // Bearer: a fresh token (maybe with the scope the challenge asked for); Basic: only if we have something to send.
      if (this.#challenge?.scheme === 'bearer') return true;
      if (this.#challenge?.scheme === 'basic' && lookup.credentials?.username !== undefined && !this.#basicSent) {
        this.#basicSent = true;
        return true;
      }
    }
    throw new UnauthorizedError(
      this.registry,
      what,
      lookup.credentials ? `the credentials from ${lookup.credentials.source} were not accepted` : 'authentication required and no credentials were found',
      lookup.consulted,
    );
  }

  async #fetchToken(ch: Challenge, repository: string, scopes: string[], signal?: AbortSignal): Promise<string> {
    const realm = ch.params.realm;
    const what = `a token for ${scopes.join(' ') || 'the registry'}`;
    if (!realm) throw new UnexpectedStatusError(this.registry, 'the Bearer challenge', 401, 'no realm');
    let url: URL;
    try {
      url = new URL(realm);
    } catch {
      throw new UnexpectedStatusError(this.registry, 'the Bearer challenge', 401, 'realm is not a URL');
    }
    const lookup = await this.credentials(repository);
    const c: Credentials | undefined = lookup.credentials;
    const refresh = this.#refreshToken ?? c?.identityToken;
    let res: HttpResponse | undefined;
    this.tokenRequests++;
    if (refresh) {
      const form = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: refresh, client_id: 'tiu' });
      if (ch.params.service) form.set('service', ch.params.service);
      if (scopes.length) form.set('scope', scopes.join(' '));
      res = await this.#http.request({
        method: 'POST',
        url,
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: Buffer.from(form.toString()),
        signal,
      });
      if ((res.status === 404 || res.status === 405) && c?.username) {
        res.body.resume();
        res = undefined; // no OAuth2 endpoint: the GET below with Basic credentials
      } else if (res.status === 400 || res.status === 401) {
        // A refresh token that was revoked: drop it, try once more with the password, if any.
        res.body.resume();
        this.#refreshToken = undefined;
        if (c?.username && c.password !== undefined) res = undefined;
      }
    }
    if (!res) {
      const u = new URL(url);
      if (ch.params.service) u.searchParams.set('service', ch.params.service);
      for (const s of scopes) u.searchParams.append('scope', s);
      const headers: Record<string, string> = {};
      if (c?.username !== undefined && c.password !== undefined) {
        headers.authorization = 'Basic ' + Buffer.from(`${c.username}:${c.password}`).toString('base64');
        u.searchParams.set('offline_token', 'true');
        u.searchParams.set('client_id', 'tiu');
      }
      res = await this.#http.request({ method: 'GET', url: u, headers, signal });
    }
    if (res.status === 401 || res.status === 403 || res.status === 400) {
      res.body.resume();
      throw new UnauthorizedError(
        this.registry,
        what,
        c ? `the token service ${url.host} did not accept the credentials from ${c.source}` : `the token service ${url.host} requires credentials and none were found`,
        lookup.consulted,
      );
    }
    if (res.status !== 200) throw new UnexpectedStatusError(url.host, `token request for ${this.registry}`, res.status, await bodyExcerpt(res));
    const body = await readBody(res, MAX_MANIFEST_BYTES, (n) => new UnexpectedStatusError(url.host, 'token request', 200, `answer of ${n} bytes is too large`));
    let j: { token?: unknown; access_token?: unknown; expires_in?: unknown; issued_at?: unknown; refresh_token?: unknown };
    try {
      j = JSON.parse(body.toString('utf8')) as typeof j;
    } catch {
      throw new UnexpectedStatusError(url.host, 'token request', 200, 'answer is not JSON');
    }
    const token = typeof j.token === 'string' && j.token ? j.token : typeof j.access_token === 'string' ? j.access_token : '';
    if (!token) throw new UnexpectedStatusError(url.host, 'token request', 200, 'answer has no token');
    if (typeof j.refresh_token === 'string' && j.refresh_token) this.#refreshToken = j.refresh_token;
    const expiresIn = typeof j.expires_in === 'number' && j.expires_in > 0 ? j.expires_in : 60;
    // Renew 10% (at least 5 s) before the end.
    const margin = Math.max(5, expiresIn / 10);
    this.#tokens.set(scopes.join(' '), { token, expires: this.#now() + Math.max(1, expiresIn - margin) * 1000 });
    return token;
  }
}
