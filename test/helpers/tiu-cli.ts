/** Run the CLI (bin/tiu) with --json, as a user or a script would, and read what it printed. */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const TIU = fileURLToPath(new URL('../../bin/tiu', import.meta.url));

export interface Ran {
  code: number | null;
  json: Record<string, unknown>;
  stderr: string;
}

/** `tiu ARGS --json`: its exit code, parsed stdout and stderr; rejects when stdout is not JSON. */
export function tiuJson(args: string[]): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const p = spawn(TIU, [...args, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('error', reject);
    p.on('exit', (code) => {
      try {
        resolve({ code, json: JSON.parse(out) as Record<string, unknown>, stderr: err });
      } catch {
        reject(new Error(`tiu ${args.join(' ')} printed no JSON (exit ${code}): ${out}\n${err}`));
      }
    });
  });
}
