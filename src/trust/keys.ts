/**
 * Keys in cosign's formats.
 *
 * Private key: PEM "ENCRYPTED SIGSTORE PRIVATE KEY" (older cosign: "ENCRYPTED COSIGN PRIVATE
 * KEY") whose body is the JSON
 *   {"kdf":{"name":"scrypt","params":{"N":32768,"r":8,"p":1},"salt":B64},
 *    "cipher":{"name":"nacl/secretbox","nonce":B64},"ciphertext":B64}
 * with B64 standard base64, a 32-byte salt, a 24-byte nonce, the key = scrypt(passphrase, salt,
 * 32 bytes) and ciphertext = nacl secretbox (tag first) of the PKCS#8 DER of the private key.
 * Plain PKCS#8 ("PRIVATE KEY"), SEC1 ("EC PRIVATE KEY") and passphrase-protected PKCS#8
 * ("ENCRYPTED PRIVATE KEY") PEM are read too.
 * Public key: PEM "PUBLIC KEY" (SPKI). Generated keys are ECDSA P-256.
 */
import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  randomBytes,
  scrypt,
  sign,
  verify,
  type KeyObject,
} from 'node:crypto';
import { xsalsa20poly1305 } from '@noble/ciphers/salsa.js';
import { TrustError } from './errors.ts';
import { pemDecodeAll, pemEncode } from './pem.ts';
import { isObject } from '../util/json.ts';

export const SIGSTORE_KEY_LABEL = 'ENCRYPTED SIGSTORE PRIVATE KEY';
export const COSIGN_KEY_LABEL = 'ENCRYPTED COSIGN PRIVATE KEY';
export const SCRYPT_PARAMS = { N: 32768, r: 8, p: 1 } as const;
const SALT_BYTES = 32;
const NONCE_BYTES = 24;
const BOX_KEY_BYTES = 32;
/** Largest work factor accepted from a key file (a hostile file must not make us allocate GBs). */
const MAX_SCRYPT_N = 1 << 20;

async function deriveKey(
  passphrase: string,
  salt: Uint8Array,
  params: { N: number; r: number; p: number },
): Promise<Buffer> {
  const maxmem = 128 * params.N * params.r * params.p + 32 * 1024 * 1024;
  return new Promise((resolve, reject) => {
    scrypt(Buffer.from(passphrase, 'utf8'), salt, BOX_KEY_BYTES, { ...params, maxmem }, (err, key) =>
      err ? reject(err) : resolve(key),
    );
  });
}

/** Encrypt a private key the way cosign does; returns the PEM text. */
export async function encryptPrivateKey(key: KeyObject, passphrase: string): Promise<string> {
  const der = key.export({ format: 'der', type: 'pkcs8' });
  const salt = randomBytes(SALT_BYTES);
  const nonce = randomBytes(NONCE_BYTES);
  const boxKey = await deriveKey(passphrase, salt, SCRYPT_PARAMS);
  const ciphertext = xsalsa20poly1305(boxKey, nonce).encrypt(der);
  boxKey.fill(0);
  der.fill(0);
  const body = {
    kdf: { name: 'scrypt', params: { ...SCRYPT_PARAMS }, salt: salt.toString('base64') },
    cipher: { name: 'nacl/secretbox', nonce: nonce.toString('base64') },
    ciphertext: Buffer.from(ciphertext).toString('base64'),
  };
  return pemEncode(SIGSTORE_KEY_LABEL, Buffer.from(JSON.stringify(body)));
}

export interface GeneratedKeyPair {
  /** PEM of the encrypted private key. */
  privatePem: string;
  /** PEM SPKI of the public key. */
  publicPem: string;
  publicKey: KeyObject;
}

export async function generateKeyPair(passphrase: string): Promise<GeneratedKeyPair> {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  return {
    privatePem: await encryptPrivateKey(privateKey, passphrase),
    publicPem: publicKeyPem(publicKey),
    publicKey,
  };
}

export function publicKeyPem(key: KeyObject): string {
  return key.export({ format: 'pem', type: 'spki' }).toString();
}

function b64field(v: unknown, what: string, source: string, length?: number): Buffer {
  if (typeof v !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(v)) {
    throw new TrustError('KEY_INVALID', `${source}: ${what} is not base64`, { source });
  }
  const b = Buffer.from(v, 'base64');
  if (length !== undefined && b.length !== length) {
    throw new TrustError('KEY_INVALID', `${source}: ${what} must be ${length} bytes, is ${b.length}`, { source });
  }
  return b;
}

/** Decrypt the JSON body of a cosign encrypted key to its PKCS#8 DER. */
export async function decryptCosignKey(json: Buffer, passphrase: string, source = 'private key'): Promise<Buffer> {
  let doc: unknown;
  try {
    doc = JSON.parse(json.toString('utf8'));
  } catch {
    throw new TrustError('KEY_INVALID', `${source}: the encrypted key is not JSON`, { source });
  }
  if (!isObject(doc) || !isObject(doc.kdf) || !isObject(doc.cipher) || !isObject(doc.kdf.params)) {
    throw new TrustError('KEY_INVALID', `${source}: the encrypted key lacks kdf/cipher`, { source });
  }
  if (doc.kdf.name !== 'scrypt')
    throw new TrustError('KEY_UNSUPPORTED', `${source}: kdf ${JSON.stringify(doc.kdf.name)} is not scrypt`, { source });
  if (doc.cipher.name !== 'nacl/secretbox') {
    throw new TrustError(
      'KEY_UNSUPPORTED',
      `${source}: cipher ${JSON.stringify(doc.cipher.name)} is not nacl/secretbox`,
      { source },
    );
  }
  const { N, r, p } = doc.kdf.params;
  const okInt = (x: unknown, max: number): x is number =>
    typeof x === 'number' && Number.isInteger(x) && x >= 1 && x <= max;
  if (
    !okInt(N, MAX_SCRYPT_N) ||
    (N & (N - 1)) !== 0 ||
    N < 2 ||
    !okInt(r, 32) ||
    !okInt(p, 16) ||
    128 * N * r * p > 256 * 1024 * 1024
  ) {
    throw new TrustError(
      'KEY_UNSUPPORTED',
      `${source}: scrypt parameters N=${String(N)} r=${String(r)} p=${String(p)} are out of range`,
      { source },
    );
  }
  const salt = b64field(doc.kdf.salt, 'kdf.salt', source);
  const nonce = b64field(doc.cipher.nonce, 'cipher.nonce', source, NONCE_BYTES);
  const ciphertext = b64field(doc.ciphertext, 'ciphertext', source);
  const boxKey = await deriveKey(passphrase, salt, { N, r, p });
  try {
    return Buffer.from(xsalsa20poly1305(boxKey, nonce).decrypt(ciphertext));
  } catch {
    throw new TrustError('PASSPHRASE_WRONG', `${source}: wrong passphrase (the key does not decrypt)`, { source });
  } finally {
    boxKey.fill(0);
  }
}

/** Does this PEM text need a passphrase to load? */
export function isEncryptedKey(pem: string): boolean {
  return pemDecodeAll(pem).some(
    (b) => b.label === SIGSTORE_KEY_LABEL || b.label === COSIGN_KEY_LABEL || b.label === 'ENCRYPTED PRIVATE KEY',
  );
}

/**
 * Load a private key from PEM text. `passphrase` is called only for encrypted keys.
 * `source` names the key in messages (a path, never the content).
 */
export async function loadPrivateKey(
  pem: string,
  passphrase: () => Promise<string>,
  source = 'private key',
): Promise<KeyObject> {
  const blocks = pemDecodeAll(pem);
  const block = blocks.find((b) => /PRIVATE KEY$/.test(b.label));
  if (!block) throw new TrustError('KEY_INVALID', `${source}: no PEM private key block`, { source });
  let key: KeyObject;
  try {
    if (block.label === SIGSTORE_KEY_LABEL || block.label === COSIGN_KEY_LABEL) {
      const der = await decryptCosignKey(block.der, await passphrase(), source);
      try {
        key = createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
      } finally {
        der.fill(0);
      }
    } else if (block.label === 'ENCRYPTED PRIVATE KEY') {
      const pass = await passphrase();
      try {
        key = createPrivateKey({ key: pemEncode(block.label, block.der), format: 'pem', passphrase: pass });
      } catch {
        throw new TrustError('PASSPHRASE_WRONG', `${source}: wrong passphrase (the key does not decrypt)`, { source });
      }
    } else if (block.label === 'PRIVATE KEY' || block.label === 'EC PRIVATE KEY') {
      key = createPrivateKey({ key: pemEncode(block.label, block.der), format: 'pem' });
    } else {
      throw new TrustError(
        'KEY_INVALID',
        `${source}: PEM label ${JSON.stringify(block.label)} is not a private key tiu reads`,
        { source },
      );
    }
  } catch (e) {
    if (e instanceof TrustError) throw e;
    throw new TrustError('KEY_INVALID', `${source}: not a valid private key`, { source });
  }
  checkKeyKind(key, source);
  return key;
}

/** Load public keys from PEM text (SPKI "PUBLIC KEY"; a certificate's key is taken too). */
export function loadPublicKeys(pem: string, source = 'public key'): KeyObject[] {
  const keys: KeyObject[] = [];
  for (const block of pemDecodeAll(pem)) {
    if (block.label !== 'PUBLIC KEY' && block.label !== 'CERTIFICATE') continue;
    let key: KeyObject;
    try {
      key = createPublicKey({ key: pemEncode(block.label, block.der), format: 'pem' });
    } catch {
      throw new TrustError('KEY_INVALID', `${source}: not a valid public key`, { source });
    }
    checkKeyKind(key, source);
    keys.push(key);
  }
  if (keys.length === 0) throw new TrustError('KEY_INVALID', `${source}: no PEM "PUBLIC KEY" block`, { source });
  return keys;
}

function checkKeyKind(key: KeyObject, source: string): void {
  const t = key.asymmetricKeyType;
  if (t === 'ec') {
    const curve = key.asymmetricKeyDetails?.namedCurve;
    if (curve === 'prime256v1' || curve === 'secp384r1' || curve === 'secp521r1') return;
    throw new TrustError(
      'KEY_UNSUPPORTED',
      `${source}: EC curve ${String(curve)} is not supported (P-256, P-384, P-521)`,
      { source },
    );
  }
  if (t === 'rsa' || t === 'ed25519') return;
  throw new TrustError('KEY_UNSUPPORTED', `${source}: ${String(t)} keys are not supported`, { source });
}

/** The hash cosign pairs with a key: SHA-256 for P-256 and RSA, SHA-384/512 for the larger curves, none for ed25519. */
function hashFor(key: KeyObject): string | null {
  if (key.asymmetricKeyType === 'ed25519') return null;
  const curve = key.asymmetricKeyDetails?.namedCurve;
  if (curve === 'secp384r1') return 'sha384';
  if (curve === 'secp521r1') return 'sha512';
  return 'sha256';
}

/** Sign payload bytes: ECDSA gives an ASN.1 DER signature. Returns the raw signature. */
export function signBytes(key: KeyObject, payload: Uint8Array): Buffer {
  return sign(hashFor(key), payload, key.asymmetricKeyType === 'ec' ? { key, dsaEncoding: 'der' } : key);
}

export function verifyBytes(key: KeyObject, payload: Uint8Array, signature: Uint8Array): boolean {
  try {
    return verify(hashFor(key), payload, key.asymmetricKeyType === 'ec' ? { key, dsaEncoding: 'der' } : key, signature);
  } catch {
    return false;
  }
}

/** The public half of a private key. */
export function publicOf(key: KeyObject): KeyObject {
  return createPublicKey(key);
}
