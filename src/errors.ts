/**
 * Every error tiu raises on purpose is a TiuError with a registered `code` (src/error-codes.ts).
 * Tests assert on codes; the CLI maps them to one line and an exit code.
 */
import { ERROR_CODES, type ErrorCode } from './error-codes.ts';

export type { ErrorCode } from './error-codes.ts';

export class TiuError extends Error {
  readonly code: ErrorCode;
  /** Extra structured facts (digests, paths, hosts) for --json output. Never secrets. */
  readonly details: Record<string, unknown>;
  constructor(code: ErrorCode, message: string, details: Record<string, unknown> = {}, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    this.details = details;
  }

  /** A retry later may succeed by itself (the registry says so for the code). Causes: isTransientError. */
  get transient(): boolean {
    return ERROR_CODES[this.code].transient;
  }

  /**
   * The code of what this error wraps: the innermost error in its cause chain that has a code
   * (a TiuError's, or Node's errno such as ENOSPC), when it differs from this one's. A wrapper
   * (COPY_FAILED, HOOK_FAILED, …) keeps why it failed visible.
   */
  get causeCode(): string | undefined {
    let found: string | undefined;
    for (const x of causeChain(this.cause)) {
      const code = (x as { code?: unknown }).code;
      if (typeof code === 'string' && code) found = code;
    }
    return found === this.code ? undefined : found;
  }
}

export function isTiuError(e: unknown, code?: ErrorCode): e is TiuError {
  return e instanceof TiuError && (code === undefined || e.code === code);
}

/** Narrow an unknown thrown value to an Error for messages. */
export function asError(e: unknown): Error {
  return e instanceof Error ? e : new Error(String(e));
}

/** `e` and the errors in its `cause` chain, at most 8 (a cycle of causes ends there). */
function* causeChain(e: unknown): Generator<unknown> {
  for (let x: unknown = e, i = 0; x && i < 8; x = (x as { cause?: unknown }).cause, i++) yield x;
}

/** Whether `e` or an error in its `cause` chain (a few levels deep) satisfies `test`. */
export function someCause(e: unknown, test: (x: unknown) => boolean): boolean {
  for (const x of causeChain(e)) if (test(x)) return true;
  return false;
}

/** Node's errno codes for a full filesystem or quota. */
const NO_SPACE_ERRNO = new Set(['ENOSPC', 'EDQUOT']);

/** Node's ENOSPC/EDQUOT (a plain errno error, not yet a TiuError). */
export function isNoSpaceErrno(x: unknown): boolean {
  const code = (x as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' && NO_SPACE_ERRNO.has(code) && !(x instanceof TiuError);
}

/** Whether `e` or a cause is DISK_FULL, or Node's ENOSPC/EDQUOT that nobody mapped yet. */
export function isDiskFullError(e: unknown): boolean {
  return someCause(e, (x) => isTiuError(x, 'DISK_FULL') || isNoSpaceErrno(x));
}

/**
 * Whether `e` or an error in its cause chain is transient (the registry's `transient`: network,
 * a registry's load, a full disk, a lock held): a later run may succeed with nothing changed.
 */
export function isTransientError(e: unknown): boolean {
  return someCause(e, (x) => (x instanceof TiuError && x.transient) || isNoSpaceErrno(x));
}
