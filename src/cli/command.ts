/**
 * The shape of one CLI command. Commands are thin: parse options, call a module, print.
 * Every command gets --json and --help from here.
 */
import type { ParseArgsConfig } from 'node:util';
import { TiuError } from '../errors.ts';

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;
export type OptionValues = Record<string, string | boolean | (string | boolean)[] | undefined>;

export interface Output {
  json: boolean;
  /** Print a result: the human text, or the JSON value with --json. */
  result(human: string, value: unknown): void;
  /** Progress and notes for people: stderr, silent with --json unless TIU_PROGRESS=1. */
  info(line: string): void;
}

export interface Command {
  name: string;
  summary: string;
  /** e.g. "tiu copy SRC DST [--referrers]" */
  usage: string;
  /** Lines after the usage in --help. */
  help?: string;
  options: OptionSpec;
  /**
   * Takes the registry options (src/cli/registry-options.ts), which main.ts adds to `options`
   * and `help`: those of one reference, or those of a copy's two sides (--src-/--dest-).
   */
  registry?: 'one' | 'copy';
  /** Minimum and maximum positionals. */
  positionals: [number, number];
  run(positionals: string[], options: OptionValues, out: Output): Promise<number | void>;
}

export function optString(options: OptionValues, name: string): string | undefined {
  const v = options[name];
  return typeof v === 'string' ? v : undefined;
}
export function optStrings(options: OptionValues, name: string): string[] {
  const v = options[name];
  if (Array.isArray(v)) return v.filter((x): x is string => typeof x === 'string');
  return typeof v === 'string' ? [v] : [];
}
export function optBool(options: OptionValues, name: string): boolean {
  return options[name] === true;
}

/** `--annotation K=V` / `-a K=V`, repeatable: the option of build, sign and verify. */
export const annotationOption = {
  annotation: { type: 'string', multiple: true, short: 'a' },
} as const satisfies OptionSpec;

/** The usage error of a malformed `--annotation` (sign, verify). */
export const badAnnotation = (v: string): Error =>
  new TiuError('USAGE', `annotation ${JSON.stringify(v)} is not key=value`);

/** The `--annotation` values as a map; a value without `=` (or with an empty key) is `bad(value)`. */
export function optAnnotations(options: OptionValues, bad: (value: string) => Error): Record<string, string> {
  const out: Record<string, string> = {};
  for (const v of optStrings(options, 'annotation')) {
    const eq = v.indexOf('=');
    if (eq <= 0) throw bad(v);
    out[v.slice(0, eq)] = v.slice(eq + 1);
  }
  return out;
}
