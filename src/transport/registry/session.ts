/**
 * What several repository clients share: the HTTP client (with per-host TLS from certs.d),
 * the auth state per registry host, and the scheme each host answered on (learnt by a ping of
 * /v2/: https first; http only where allowed: insecure registries, localhost, --tls-verify=false).
 */
import { loadCerts, loadFlatCerts, DEFAULT_CERT_DIRS } from './certs.ts';
import { RegistryAuth } from './auth.ts';
import type { CredentialOptions } from './credentials.ts';
import { UnexpectedStatusError, UnreachableError } from './errors.ts';
import { HttpClient, type HttpOptions } from './http.ts';
import { TiuError } from '../../errors.ts';

export interface SessionOptions extends HttpOptions, CredentialOptions {
  /** false: https without certificate checks, and http allowed (like --tls-verify=false). */
  tlsVerify?: boolean;
  /** certs.d directories; default /etc/containers/certs.d, /etc/docker/certs.d. */
  certDirs?: string[];
  /** skopeo's --cert-dir: a flat directory of *.crt, *.cert and *.key for every registry, instead of certDirs. */
  certDir?: string;
}

export function isLocalhost(hostport: string): boolean {
  const host = hostport.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** The host that serves the API of a registry name: docker.io is served by registry-1.docker.io. */
export function apiHost(registry: string): string {
  return registry === 'docker.io' ? 'registry-1.docker.io' : registry;
}

export class RegistrySession {
  readonly http: HttpClient;
  readonly opts: SessionOptions;
  readonly #auth = new Map<string, RegistryAuth>();
  readonly #bases = new Map<string, Promise<URL>>();
  readonly #insecure = new Set<string>();
  /** Registries that answered a single-request upload (POST ?digest= with the body) with 202. */
  readonly noSinglePost = new Set<string>();

  constructor(opts: SessionOptions = {}) {
    this.opts = opts;
    const dirs = opts.certDirs ?? DEFAULT_CERT_DIRS;
    this.http = new HttpClient({
      ...opts,
      tls: async (hostport) => {
        const c = opts.certDir !== undefined ? await loadFlatCerts(opts.certDir) : await loadCerts(hostport, dirs);
        return {
          verify: opts.tlsVerify !== false && !this.#insecure.has(hostport),
          ca: c.ca,
          ...(c.cert ? { cert: c.cert } : {}),
          ...(c.key ? { key: c.key } : {}),
        };
      },
    });
  }

  auth(registry: string): RegistryAuth {
    let a = this.#auth.get(registry);
    if (!a) {
      a = new RegistryAuth(registry, this.http, this.opts);
      this.#auth.set(registry, a);
    }
    return a;
  }

  /** https://host/ or http://host/, whichever the registry speaks and tiu may use. */
  base(registry: string, insecure: boolean, signal?: AbortSignal): Promise<URL> {
    if (insecure) this.#insecure.add(apiHost(registry));
    let p = this.#bases.get(registry);
    if (!p) {
      p = this.#ping(registry, insecure || this.opts.tlsVerify === false || isLocalhost(registry), signal);
      this.#bases.set(registry, p);
      p.catch(() => this.#bases.delete(registry));
    }
    return p;
  }

  /**
   * Where plain http is allowed, it is tried first: a port speaks one or the other, and a TLS
   * port answers a plain request with an error (400, an alert, a close), after which https is
   * tried as before. The outcome is what https-first gives, without starting TLS (OpenSSL's
   * ~6 MiB of RSS) for a registry that does not speak it.
   */
  async #ping(registry: string, plainAllowed: boolean, signal?: AbortSignal): Promise<URL> {
    const tryOne = async (scheme: 'https' | 'http', probe: boolean): Promise<URL> => {
      const base = new URL(`${scheme}://${apiHost(registry)}/`);
      const res = await this.http.request({ method: 'GET', url: new URL('/v2/', base), signal, ...(probe ? { noRetry: true } : {}) });
      res.body.resume();
      if (res.status === 401) this.auth(registry).learn(res);
      else if (res.status !== 200) throw new UnexpectedStatusError(registry, 'GET /v2/ (is this a registry?)', res.status, '');
      return base;
    };
    if (!plainAllowed) return tryOne('https', false);
    let plain: unknown;
    try {
      return await tryOne('http', true);
    } catch (e) {
      if (e instanceof TiuError && e.code === 'ABORTED') throw e;
      plain = e;
    }
    try {
      return await tryOne('https', false);
    } catch (e) {
      // Neither answered: say why https failed, unless it could not connect while http could.
      throw e instanceof UnreachableError && !(plain instanceof UnreachableError) && plain instanceof TiuError ? plain : e;
    }
  }

  async close(): Promise<void> {
    await this.http.close();
  }
}
