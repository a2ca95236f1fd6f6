/**
 * The command table. One line a command; each command lives in its own file. The name is here
 * too so that `tiu NAME` imports only that command's modules (start-up time and RSS); a test
 * checks it against the command's own name.
 */
import type { Command } from '../command.ts';

export interface CommandEntry {
  /** As typed: one word, or two ("key generate"). */
  name: string;
  load: () => Promise<Command>;
}

export const commands: CommandEntry[] = [
  { name: 'build', load: async () => (await import('./build.ts')).default },
  { name: 'copy', load: async () => (await import('./copy.ts')).default },
  { name: 'delta', load: async () => (await import('./delta.ts')).default },
  { name: 'inspect', load: async () => (await import('./inspect.ts')).default },
  { name: 'key generate', load: async () => (await import('./key-generate.ts')).default },
  { name: 'sign', load: async () => (await import('./sign.ts')).default },
  { name: 'verify', load: async () => (await import('./verify.ts')).default },
  { name: 'update', load: async () => (await import('./update.ts')).default },
  { name: 'status', load: async () => (await import('./status.ts')).default },
  { name: 'rollback', load: async () => (await import('./rollback.ts')).default },
  { name: 'health', load: async () => (await import('./health.ts')).default },
];
