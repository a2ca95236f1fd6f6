import assert from 'node:assert/strict';
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  randomBytes,
  scryptSync,
  sign,
  verify,
} from 'node:crypto';
import { xsalsa20poly1305 } from '@noble/ciphers/salsa.js';
import { isTiuError } from '../../../src/errors.ts';
import {
  decryptCosignKey,
  generateKeyPair,
  loadPrivateKey,
  loadPublicKeys,
  signBytes,
  verifyBytes,
} from '../../../src/trust/keys.ts';

const pass = (): Promise<string> => Promise.resolve('correct horse');

/** The PEM body (base64 DER) between the armour lines. */
function pemBody(pem: string, label: string): Buffer {
  const m = new RegExp(`-----BEGIN ${label}-----\\n([\\s\\S]*?)-----END ${label}-----`).exec(pem);
  assert.ok(m, `no ${label} block`);
  return Buffer.from(m[1]!.replace(/\s/g, ''), 'base64');
}

describe('trust/keys', function () {
  this.timeout(30000);

  it('generates a cosign-format encrypted P-256 key pair that round-trips', async () => {
    const kp = await generateKeyPair('correct horse');
    assert.match(kp.privatePem, /^-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n/);
    assert.match(kp.publicPem, /^-----BEGIN PUBLIC KEY-----\n/);
    // The JSON body, field by field, as cosign writes it.
    const body = JSON.parse(pemBody(kp.privatePem, 'ENCRYPTED SIGSTORE PRIVATE KEY').toString()) as {
      kdf: { name: string; params: unknown; salt: string };
      cipher: { name: string; nonce: string };
      ciphertext: string;
    };
    assert.deepEqual(Object.keys(body), ['kdf', 'cipher', 'ciphertext']);
    assert.equal(body.kdf.name, 'scrypt');
    assert.deepEqual(body.kdf.params, { N: 32768, r: 8, p: 1 });
    assert.equal(Buffer.from(body.kdf.salt, 'base64').length, 32);
    assert.equal(body.cipher.name, 'nacl/secretbox');
    assert.equal(Buffer.from(body.cipher.nonce, 'base64').length, 24);
    // Decrypt independently (node scrypt + noble secretbox): PKCS#8 of a P-256 key.
    const key = scryptSync('correct horse', Buffer.from(body.kdf.salt, 'base64'), 32, {
      N: 32768,
      r: 8,
      p: 1,
      maxmem: 64 * 1024 * 1024,
    });
    const der = Buffer.from(
      xsalsa20poly1305(key, Buffer.from(body.cipher.nonce, 'base64')).decrypt(Buffer.from(body.ciphertext, 'base64')),
    );
    const priv = createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
    assert.equal(priv.asymmetricKeyDetails?.namedCurve, 'prime256v1');
    assert.ok(createPublicKey(priv).equals(kp.publicKey));

    const loaded = await loadPrivateKey(kp.privatePem, pass, 'k.key');
    const sig = signBytes(loaded, Buffer.from('payload'));
    assert.ok(verify('sha256', Buffer.from('payload'), { key: kp.publicKey, dsaEncoding: 'der' }, sig));
    assert.ok(verifyBytes(loadPublicKeys(kp.publicPem)[0]!, Buffer.from('payload'), sig));
    assert.ok(!verifyBytes(loadPublicKeys(kp.publicPem)[0]!, Buffer.from('payloaD'), sig));
  });

  it('refuses a wrong passphrase with PASSPHRASE_WRONG and says nothing secret', async () => {
    const kp = await generateKeyPair('right');
    await assert.rejects(
      loadPrivateKey(kp.privatePem, () => Promise.resolve('hunter2-guess'), 'my.key'),
      (e: unknown) => {
        assert.ok(isTiuError(e, 'PASSPHRASE_WRONG'));
        assert.match(e.message, /my\.key/);
        for (const secret of ['hunter2-guess', 'right'])
          assert.ok(!`${e.message} ${JSON.stringify(e.details)}`.includes(secret));
        return true;
      },
    );
  });

  it('loads a key the test encrypted itself per the cosign format (older COSIGN label) and signs with it', async () => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const der = privateKey.export({ format: 'der', type: 'pkcs8' });
    const salt = randomBytes(32);
    const nonce = randomBytes(24);
    const boxKey = scryptSync('s3cret', salt, 32, { N: 32768, r: 8, p: 1, maxmem: 64 * 1024 * 1024 });
    const json = JSON.stringify({
      kdf: { name: 'scrypt', params: { N: 32768, r: 8, p: 1 }, salt: salt.toString('base64') },
      cipher: { name: 'nacl/secretbox', nonce: nonce.toString('base64') },
      ciphertext: Buffer.from(xsalsa20poly1305(boxKey, nonce).encrypt(der)).toString('base64'),
    });
    const b64 = Buffer.from(json)
      .toString('base64')
      .replace(/(.{64})/g, '$1\n');
    const pem = `-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----\n${b64}\n-----END ENCRYPTED COSIGN PRIVATE KEY-----\n`;
    const key = await loadPrivateKey(pem, () => Promise.resolve('s3cret'));
    const payload = Buffer.from('{"x":1}');
    assert.ok(verify('sha256', payload, { key: publicKey, dsaEncoding: 'der' }, signBytes(key, payload)));
    await assert.rejects(
      loadPrivateKey(pem, () => Promise.resolve('s3creT')),
      (e: unknown) => isTiuError(e, 'PASSPHRASE_WRONG'),
    );
  });

  it('reads plain PKCS#8 and SPKI PEM, never asking for a passphrase', async () => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const key = await loadPrivateKey(privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(), () =>
      assert.fail('asked'),
    );
    const pub = loadPublicKeys(publicKey.export({ format: 'pem', type: 'spki' }).toString())[0]!;
    const data = createHash('sha256').update('x').digest();
    assert.ok(verifyBytes(pub, data, sign('sha256', data, { key, dsaEncoding: 'der' })));
  });

  it('rejects malformed keys with typed codes', async () => {
    await assert.rejects(loadPrivateKey('nothing here', pass), (e: unknown) => isTiuError(e, 'KEY_INVALID'));
    const notJson = `-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n${Buffer.from('{nope').toString('base64')}\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n`;
    await assert.rejects(loadPrivateKey(notJson, pass), (e: unknown) => isTiuError(e, 'KEY_INVALID'));
    const hugeN = JSON.stringify({
      kdf: { name: 'scrypt', params: { N: 1 << 30, r: 8, p: 1 }, salt: 'AA==' },
      cipher: { name: 'nacl/secretbox', nonce: Buffer.alloc(24).toString('base64') },
      ciphertext: 'AA==',
    });
    await assert.rejects(decryptCosignKey(Buffer.from(hugeN), 'x'), (e: unknown) => isTiuError(e, 'KEY_UNSUPPORTED'));
    assert.throws(
      () => loadPublicKeys('-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n'),
      (e: unknown) => isTiuError(e, 'KEY_INVALID'),
    );
    const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'secp256k1' });
    assert.throws(
      () => loadPublicKeys(publicKey.export({ format: 'pem', type: 'spki' }).toString()),
      (e: unknown) => isTiuError(e, 'KEY_UNSUPPORTED'),
    );
  });
});
