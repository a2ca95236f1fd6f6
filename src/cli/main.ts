/**
 * tiu's entry point: argv -> command. The one place that maps errors to a line and an exit code.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { TiuError, asError, type ErrorCode } from '../errors.ts';
import { EXIT_FAILURE, EXIT_USAGE, exitStatusOf } from '../error-codes.ts';
import type { Command, OptionSpec, Output } from './command.ts';
import { commands } from './commands/index.ts';
import { copyRegistryOptionSpecs, registryOptionSpecs, registryOptionsHelp } from './registry-options.ts';

/** Exit statuses; an error's comes from the registry (src/error-codes.ts, docs/errors.md). */
export const EXIT = { ok: 0, failure: EXIT_FAILURE, usage: EXIT_USAGE } as const;

export function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

class UsageError extends TiuError {
  constructor(message: string) {
    super('USAGE', message);
  }
}

function makeOutput(json: boolean): Output {
  return {
    json,
    result(human, value) {
      process.stdout.write(
        json ? JSON.stringify(value, null, 2) + '\n' : human.endsWith('\n') || human === '' ? human : human + '\n',
      );
    },
    info(line) {
      if (!json || process.env.TIU_PROGRESS === '1') process.stderr.write(line + '\n');
    },
  };
}

const REGISTRY_OPTIONS = { one: registryOptionSpecs, copy: copyRegistryOptionSpecs } as const;

/** A command's options with the registry options it takes (also for the man pages and completion). */
export function optionsOf(cmd: Command): OptionSpec {
  return cmd.registry ? { ...cmd.options, ...REGISTRY_OPTIONS[cmd.registry] } : cmd.options;
}

export function helpOf(cmd: Command): string | undefined {
  return cmd.registry ? (cmd.help ?? '') + registryOptionsHelp : cmd.help;
}

function helpFor(cmd: Command): string {
  const help = helpOf(cmd);
  const opts = Object.entries(optionsOf(cmd))
    .map(([k, v]) => `  --${k}${v.type === 'string' ? ' VALUE' : ''}${v.multiple ? ' (repeatable)' : ''}`)
    .join('\n');
  return `usage: ${cmd.usage}\n\n${cmd.summary}\n${help ? '\n' + help + '\n' : ''}\noptions:\n${opts}\n  --json\n  --help\n`;
}

/** One line a command: its name and summary, aligned. */
function commandList(cmds: Command[]): string {
  const width = Math.max(...cmds.map((c) => c.name.length), 4);
  return cmds.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`).join('\n');
}

async function loadCommands(): Promise<Command[]> {
  return Promise.all(commands.map((c) => c.load()));
}

export async function main(argv: string[]): Promise<number> {
  const first = argv[0];
  if (first === '--version' || first === 'version') {
    process.stdout.write(`tiu ${version()}\n`);
    return EXIT.ok;
  }
  if (first === undefined || first === '--help' || first === '-h' || (first === 'help' && argv.length === 1)) {
    process.stdout.write(
      `tiu ${version()}: image-based transactional updates for snapshot-based hosts\n\nusage: tiu COMMAND [OPTIONS]\n\ncommands:\n` +
        commandList(await loadCommands()) +
        `\n\nRun 'tiu COMMAND --help' (or 'tiu help COMMAND') for a command's options. Every command takes --json.\n`,
    );
    return first === undefined ? EXIT.usage : EXIT.ok;
  }
  // `tiu help build`, `tiu help key generate` are `tiu build --help`, `tiu key generate --help`.
  if (first === 'help') return main([...argv.slice(1), '--help']);
  // Two-word commands ("key generate") take precedence over one-word ones. Only the command
  // that runs is imported.
  let entry = commands.find((c) => argv.length > 1 && c.name === `${first} ${argv[1]}`);
  let rest = entry ? argv.slice(2) : argv.slice(1);
  if (!entry) {
    entry = commands.find((c) => c.name === first);
    rest = argv.slice(1);
  }
  const cmd = entry && (await entry.load());
  const json = rest.includes('--json');
  const out = makeOutput(json);
  try {
    if (!cmd) {
      // A group of two-word commands ("key" of "key generate"): its help lists them.
      const group = commands.filter((c) => c.name.startsWith(`${first} `));
      if (group.length === 0) throw new UsageError(`unknown command '${first}'; run 'tiu --help'`);
      const asked = rest.includes('--help') || rest.includes('-h');
      if (!asked && argv.length > 1) {
        throw new UsageError(`unknown command '${argv.slice(0, 2).join(' ')}'; run 'tiu ${first} --help'`);
      }
      const list = commandList(await Promise.all(group.map((c) => c.load())));
      process.stdout.write(
        `usage: tiu ${first} COMMAND [OPTIONS]\n\ncommands:\n${list}\n\nRun 'tiu ${first} COMMAND --help' for a command's options.\n`,
      );
      // Like a bare `tiu`: the help, but the command line was incomplete.
      return asked ? EXIT.ok : EXIT.usage;
    }
    if (rest.includes('--help') || rest.includes('-h')) {
      process.stdout.write(helpFor(cmd));
      return EXIT.ok;
    }
    let parsed;
    try {
      parsed = parseArgs({
        args: rest,
        options: { ...optionsOf(cmd), json: { type: 'boolean' }, help: { type: 'boolean' } },
        allowPositionals: true,
        strict: true,
      });
    } catch (e) {
      throw new UsageError(`${asError(e).message}\nusage: ${cmd.usage}`);
    }
    const [min, max] = cmd.positionals;
    if (parsed.positionals.length < min || parsed.positionals.length > max) {
      throw new UsageError(`wrong number of arguments\nusage: ${cmd.usage}`);
    }
    const rc = await cmd.run(parsed.positionals, parsed.values, out);
    return rc ?? EXIT.ok;
  } catch (e) {
    return reportError(e, json);
  }
}

/**
 * What the CLI says about a failure: one line `tiu: error: MESSAGE [CODE]`, or `[CODE <- CAUSE]`
 * when the error wraps another code (COPY_FAILED over CONTENT_NOT_FOUND); for --json
 * `{"error":{code,message,details,cause?:{code}}}`; the exit status is the code's (src/error-codes.ts).
 */
export function describeError(e: unknown): {
  code: ErrorCode;
  line: string;
  json: { error: { code: ErrorCode; message: string; details: Record<string, unknown>; cause?: { code: string } } };
  status: number;
} {
  const err = asError(e);
  const code: ErrorCode = err instanceof TiuError ? err.code : 'INTERNAL';
  const causeCode = err instanceof TiuError ? err.causeCode : undefined;
  const details = err instanceof TiuError ? err.details : {};
  return {
    code,
    line: `tiu: error: ${err.message} [${code}${causeCode !== undefined ? ` <- ${causeCode}` : ''}]`,
    json: {
      error: {
        code,
        message: err.message,
        details,
        ...(causeCode !== undefined ? { cause: { code: causeCode } } : {}),
      },
    },
    status: exitStatusOf(code),
  };
}

function reportError(e: unknown, json: boolean): number {
  const d = describeError(e);
  if (json) process.stdout.write(JSON.stringify(d.json, null, 2) + '\n');
  else {
    process.stderr.write(d.line + '\n');
    if (d.code === 'INTERNAL' && process.env.TIU_DEBUG) process.stderr.write(`${asError(e).stack}\n`);
  }
  return d.status;
}

if (import.meta.main) {
  // bin/tiu's malloc tuning is for this process only (glibc read it at start-up): it names the
  // variables it set, and only those two may be dropped.
  const drop = process.env.TIU_DROP_MALLOC_ENV;
  if (drop !== undefined) {
    for (const name of drop.split(' '))
      if (name === 'MALLOC_MMAP_THRESHOLD_' || name === 'MALLOC_ARENA_MAX') delete process.env[name];
    delete process.env.TIU_DROP_MALLOC_ENV;
  }
  process.exitCode = await main(process.argv.slice(2));
}
