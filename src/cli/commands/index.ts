/** The command table. One line a command; each command lives in its own file. */
import type { Command } from '../command.ts';

export const commands: (() => Promise<Command>)[] = [
  async () => (await import('./build.ts')).default,
  async () => (await import('./copy.ts')).default,
  async () => (await import('./inspect.ts')).default,
  async () => (await import('./key-generate.ts')).default,
  async () => (await import('./sign.ts')).default,
  async () => (await import('./verify.ts')).default,
  async () => (await import('./update.ts')).default,
  async () => (await import('./status.ts')).default,
  async () => (await import('./rollback.ts')).default,
  async () => (await import('./health.ts')).default,
];
