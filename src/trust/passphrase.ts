/**
 * Where a passphrase comes from: COSIGN_PASSWORD, else TIU_PASSWORD (an empty value is a valid,
 * empty passphrase, as with cosign), else a prompt on the controlling terminal with echo off.
 * The passphrase is never printed, logged or put into an error.
 */
import { closeSync, openSync } from 'node:fs';
import { ReadStream, WriteStream } from 'node:tty';
import { TrustError } from './errors.ts';

export function passphraseFromEnv(env: NodeJS.ProcessEnv = process.env): string | undefined {
  return env.COSIGN_PASSWORD ?? env.TIU_PASSWORD;
}

/** Read one line from /dev/tty without echo. */
export async function promptHidden(prompt: string): Promise<string> {
  let fdIn = -1;
  let fdOut: number;
  try {
    fdIn = openSync('/dev/tty', 'r');
    fdOut = openSync('/dev/tty', 'w');
  } catch {
    if (fdIn >= 0) closeSync(fdIn);
    throw new TrustError(
      'PASSPHRASE_REQUIRED',
      'a passphrase is needed: set COSIGN_PASSWORD (or TIU_PASSWORD), or run on a terminal',
    );
  }
  // Two descriptors, one per stream: each stream closes its own.
  const input = new ReadStream(fdIn);
  const output = new WriteStream(fdOut);
  // Echo off before the prompt shows, so nothing typed after it is ever echoed.
  input.setRawMode(true);
  input.setEncoding('utf8');
  output.write(prompt);
  try {
    return await new Promise<string>((resolve, reject) => {
      let line = '';
      input.on('data', (chunk: string) => {
        for (const ch of chunk) {
          if (ch === '\r' || ch === '\n') {
            resolve(line);
            return;
          }
          if (ch === '\u0003' || ch === '\u0004') {
            reject(new TrustError('PASSPHRASE_REQUIRED', 'passphrase entry interrupted'));
            return;
          }
          if (ch === '\u007f' || ch === '\b') line = line.slice(0, -1);
          else line += ch;
        }
      });
      input.on('error', reject);
    });
  } finally {
    input.setRawMode(false);
    output.end('\n');
    input.destroy();
  }
}

/** The passphrase to open a key. */
export async function getPassphrase(what: string): Promise<string> {
  return passphraseFromEnv() ?? (await promptHidden(`Enter passphrase for ${what}: `));
}

/** A new passphrase, asked twice on a terminal. */
export async function getNewPassphrase(): Promise<string> {
  const env = passphraseFromEnv();
  if (env !== undefined) return env;
  const a = await promptHidden('Enter passphrase for the new private key: ');
  const b = await promptHidden('Enter the passphrase again: ');
  if (a !== b) throw new TrustError('PASSPHRASE_REQUIRED', 'the two passphrases differ');
  return a;
}
