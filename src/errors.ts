/**
 * Every error tiu raises on purpose is a TiuError with a string-literal `code`.
 * Tests assert on codes; the CLI maps them to one line and an exit code.
 */
export class TiuError extends Error {
  readonly code: string;
  /** Extra structured facts (digests, paths, hosts) for --json output. Never secrets. */
  readonly details: Record<string, unknown>;
  constructor(code: string, message: string, details: Record<string, unknown> = {}, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    this.details = details;
  }
}

export function isTiuError(e: unknown, code?: string): e is TiuError {
  return e instanceof TiuError && (code === undefined || e.code === code);
}

/** Narrow an unknown thrown value to an Error for messages. */
export function asError(e: unknown): Error {
  return e instanceof Error ? e : new Error(String(e));
}

/** Whether `e` or an error in its `cause` chain (a few levels deep) satisfies `test`. */
export function someCause(e: unknown, test: (x: unknown) => boolean): boolean {
  for (let x: unknown = e, i = 0; x && i < 8; x = (x as { cause?: unknown }).cause, i++) if (test(x)) return true;
  return false;
}
