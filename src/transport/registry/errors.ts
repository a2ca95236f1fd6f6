/**
 * Typed errors of the registry client. Messages name the registry, repository and object;
 * they never carry credentials, tokens or Authorization headers.
 */
import { TiuError } from '../../errors.ts';

export class RegistryError extends TiuError {}

/** 401, or credentials rejected: names the registry and the auth files that were consulted. */
export class UnauthorizedError extends RegistryError {
  constructor(registry: string, what: string, why: string, consulted: string[]) {
    super(
      'REGISTRY_UNAUTHORIZED',
      `registry ${registry} refused ${what}: ${why}` +
        (consulted.length ? ` (credentials looked up in: ${consulted.join(', ')})` : ''),
      { registry, what, consulted },
    );
  }
}

export class DeniedError extends RegistryError {
  constructor(registry: string, what: string) {
    super('REGISTRY_DENIED', `registry ${registry} denied ${what} (403)`, { registry, what });
  }
}

export class BlockedError extends RegistryError {
  constructor(name: string, source: string) {
    super('REGISTRY_BLOCKED', `registry ${name} is blocked by ${source}`, { name, source });
  }
}

/** Connection refused/reset, DNS, or a timeout after the retries ran out. */
export class UnreachableError extends RegistryError {
  constructor(host: string, why: string, code: 'REGISTRY_UNREACHABLE' | 'REGISTRY_TIMEOUT' = 'REGISTRY_UNREACHABLE') {
    super(code, `registry ${host} unreachable: ${why}`, { host });
  }
}

export class TlsError extends RegistryError {
  /** A certificate was refused (as opposed to a server that does not speak TLS at all). */
  readonly certificate: boolean;
  constructor(host: string, why: string, certificate: boolean) {
    super('TLS_ERROR', `TLS with ${host} failed: ${why}${certificate ? ` (a CA for it goes in certs.d/${host}/ca.crt)` : ''}`, { host });
    this.certificate = certificate;
  }
}

/** An HTTP answer the protocol does not allow at that point. */
export class UnexpectedStatusError extends RegistryError {
  constructor(registry: string, what: string, status: number, body: string) {
    const code = status === 429 ? 'REGISTRY_TOO_MANY_REQUESTS' : status >= 500 ? 'REGISTRY_UNAVAILABLE' : 'REGISTRY_ERROR';
    super(code, `registry ${registry}: ${what} answered ${status}${body ? ': ' + body : ''}`, { registry, what, status });
  }
}

export class AbortedError extends RegistryError {
  constructor(what: string) {
    super('ABORTED', `${what} aborted`, { what });
  }
}

export class InvalidConfigError extends TiuError {
  constructor(file: string, why: string) {
    super('CONFIG_INVALID', `${file}: ${why}`, { file });
  }
}

/**
 * A transfer below the minimum throughput for too long, or past its deadline (speed.ts): names
 * the registry and what was being fetched.
 */
export class TooSlowError extends RegistryError {
  constructor(host: string, what: string, why: string) {
    super('REGISTRY_TOO_SLOW', `registry ${host} is too slow: ${what}: ${why}`, { host, what });
  }
}
