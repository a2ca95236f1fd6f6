/** Writing and reading key files. New key files are created with mode 0600 (never chmod-ed after). */
import { constants } from 'node:fs';
import { open, readFile, unlink } from 'node:fs/promises';
import type { KeyObject } from 'node:crypto';
import { TrustError } from './errors.ts';
import { generateKeyPair, isEncryptedKey, loadPrivateKey, loadPublicKeys } from './keys.ts';

async function createSecretFile(path: string, content: string): Promise<void> {
  let fh;
  try {
    fh = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST')
      throw new TrustError('KEY_EXISTS', `${path} already exists (use --force to replace it)`, { path });
    throw new TrustError('KEY_WRITE_FAILED', `${path} can't be created (${code ?? 'error'})`, { path }, { cause: e });
  }
  try {
    await fh.writeFile(content);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export interface WrittenKeys {
  privateKey: string;
  publicKey: string;
}

/** `key generate`: PREFIX.key (encrypted, cosign format) and PREFIX.pub, both 0600. */
export async function writeKeyPair(prefix: string, passphrase: string, force = false): Promise<WrittenKeys> {
  const privPath = `${prefix}.key`;
  const pubPath = `${prefix}.pub`;
  if (force) {
    for (const p of [privPath, pubPath])
      await unlink(p).catch((e: NodeJS.ErrnoException) => (e.code === 'ENOENT' ? undefined : Promise.reject(e)));
  }
  const kp = await generateKeyPair(passphrase);
  await createSecretFile(privPath, kp.privatePem);
  try {
    await createSecretFile(pubPath, kp.publicPem);
  } catch (e) {
    await unlink(privPath).catch(() => undefined);
    throw e;
  }
  return { privateKey: privPath, publicKey: pubPath };
}

async function readKeyFile(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    throw new TrustError(
      'KEY_INVALID',
      `key file ${path} can't be read (${(e as NodeJS.ErrnoException).code ?? 'error'})`,
      { path },
    );
  }
}

/** Load a private key file; `passphrase` is asked only when the key is encrypted. */
export async function readPrivateKeyFile(path: string, passphrase: () => Promise<string>): Promise<KeyObject> {
  const pem = await readKeyFile(path);
  return loadPrivateKey(pem, isEncryptedKey(pem) ? passphrase : () => Promise.reject(new Error('unreachable')), path);
}

export async function readPublicKeyFile(path: string): Promise<KeyObject[]> {
  return loadPublicKeys(await readKeyFile(path), path);
}
