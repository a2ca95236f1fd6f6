/**
 * tiu key generate / sign / verify end to end, through the CLI, on a real registry
 * (distribution 2.8.2) and on OCI layouts; signatures travel with copy --referrers.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { generateKeyPairSync, randomBytes, scryptSync, sign } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { xsalsa20poly1305 } from '@noble/ciphers/salsa.js';
import type { Target } from '../../src/content/interfaces.ts';
import type { Descriptor } from '../../src/oci/types.ts';
import { openReference } from '../../src/transport/resolve.ts';
import { handMadeSignature, putImage } from '../helpers/trust-target.ts';
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts';

const BIN = new URL('../../bin/tiu', import.meta.url).pathname;
const PASS = 'tiu-test-passphrase-7c1e9a';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
  json: { error?: { code: string; message: string } } & Record<string, unknown>;
}

describe('tiu key generate / sign / verify (CLI on a registry and OCI layouts)', function () {
  this.timeout(120000);
  let reg: RunningRegistry;
  let dir: string;
  const outputs: string[] = [];
  const opened: Target[] = [];

  function tiu(args: string[], env: Record<string, string | undefined> = { COSIGN_PASSWORD: PASS }): Run {
    const r = spawnSync(BIN, [...args, '--json'], {
      env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env },
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    outputs.push(r.stdout, r.stderr);
    let json = {} as Run['json'];
    try {
      json = JSON.parse(r.stdout) as Run['json'];
    } catch {
      /* not JSON: asserted by the callers that need it */
    }
    return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr, json };
  }
  function expectCode(r: Run, code: string): void {
    assert.equal(r.json.error?.code, code, `expected ${code}, got rc=${r.code} ${r.stdout} ${r.stderr}`);
    assert.equal(r.code, 1);
  }
  function expectOk(r: Run): void {
    assert.equal(r.code, 0, `rc=${r.code} ${r.stdout} ${r.stderr}`);
  }
  async function open(ref: string, forWrite = false): Promise<Target> {
    const o = await openReference(ref, { forWrite });
    opened.push(o.target);
    return o.target;
  }
  const img = (tag: string, repo = 'os/microos'): string => `docker://${reg.host}/${repo}:${tag}`;
  async function pushImage(
    tag: string,
    content: string,
    repo = 'os/microos',
  ): Promise<{ target: Target; desc: Descriptor }> {
    const target = await open(img(tag, repo), true);
    return { target, desc: await putImage(target, tag, content) };
  }
  const payloadFor = (ref: string, digest: string): Buffer =>
    Buffer.from(
      `{"critical":{"identity":{"docker-reference":"${ref}"},"image":{"docker-manifest-digest":"${digest}"},"type":"cosign container image signature"},"optional":null}`,
    );

  before(async () => {
    reg = await startRegistry();
    dir = mkdtempSync(join(tmpdir(), 'tiu-trust-'));
  });
  after(async () => {
    for (const t of opened) await t.close?.().catch(() => undefined);
    if (reg) await reg.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('key generate writes an encrypted cosign key and a public key, both created 0600', () => {
    expectOk(tiu(['key', 'generate', '--output-key-prefix', join(dir, 'signer')]));
    expectOk(tiu(['key', 'generate', '--output-key-prefix', join(dir, 'other')], { TIU_PASSWORD: 'another one' }));
    for (const f of ['signer.key', 'signer.pub', 'other.key', 'other.pub'])
      assert.equal(statSync(join(dir, f)).mode & 0o777, 0o600, f);
    assert.match(readFileSync(join(dir, 'signer.key'), 'utf8'), /^-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n/);
    assert.match(readFileSync(join(dir, 'signer.pub'), 'utf8'), /^-----BEGIN PUBLIC KEY-----\n/);
    expectCode(tiu(['key', 'generate', '--output-key-prefix', join(dir, 'signer')]), 'KEY_EXISTS');
    expectCode(tiu(['key', 'generate', '--output-key-prefix', join(dir, 'no-such-dir', 'k')]), 'KEY_WRITE_FAILED');
  });

  it('round trip on a registry: sign, verify with the key and with a policy', async () => {
    await pushImage('1', 'one');
    const s = tiu(['sign', '--key', join(dir, 'signer.key'), img('1')]);
    expectOk(s);
    assert.match(String(s.json.tag), /^sha256-[0-9a-f]{64}\.sig$/);
    assert.equal(s.json.dockerReference, `${reg.host}/os/microos:1`);
    const v = tiu(['verify', '--key', join(dir, 'signer.pub'), img('1')]);
    expectOk(v);
    assert.equal((v.json.signatures as unknown[]).length, 1);
    // Signing again with the same key adds nothing; another key appends.
    assert.equal(tiu(['sign', '--key', join(dir, 'signer.key'), img('1')]).json.added, false);
    const s2 = tiu(['sign', '--key', join(dir, 'other.key'), img('1')], { COSIGN_PASSWORD: 'another one' });
    assert.equal(s2.json.count, 2);
    // A sigstore bundle as a referrer too (distribution 2.8 has no referrers API: the tag fallback carries it).
    await pushImage('bundled', 'bundled');
    const sb = tiu(['sign', '--bundle', '--key', join(dir, 'signer.key'), img('bundled')]);
    expectOk(sb);
    assert.match(String(sb.json.bundle), /^sha256:/);
    const vb = tiu(['verify', '--key', join(dir, 'signer.pub'), img('bundled')]);
    expectOk(vb);
    assert.deepEqual((vb.json.signatures as { kind: string }[]).map((x) => x.kind).sort(), ['bundle', 'simplesigning']);
    const policy = join(dir, 'policy.json');
    writeFileSync(
      policy,
      JSON.stringify({
        default: [{ type: 'reject' }],
        transports: { docker: { [`${reg.host}/os`]: [{ type: 'sigstoreSigned', keyPath: join(dir, 'signer.pub') }] } },
      }),
    );
    expectOk(tiu(['verify', '--policy', policy, img('1')]));
    await pushImage('1', 'one', 'elsewhere/x');
    expectCode(tiu(['verify', '--policy', policy, img('1', 'elsewhere/x')]), 'POLICY_REJECTED');
  });

  it('sign --expires writes org.opensuse.tiu.expires into the optional claims; verify shows it and -a matches it', async () => {
    await pushImage('expiring', 'expiring');
    const before = Date.now();
    const s = tiu(['sign', '--expires', '30d', '--key', join(dir, 'signer.key'), img('expiring')]);
    expectOk(s);
    const expires = String(s.json.expires);
    assert.match(expires, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/);
    const ms = Date.parse(expires) - before;
    assert.ok(ms > 30 * 86_400_000 - 5_000 && ms < 30 * 86_400_000 + 60_000, `${expires} is not 30 days away`);
    const v = tiu([
      'verify',
      '--key',
      join(dir, 'signer.pub'),
      '-a',
      `org.opensuse.tiu.expires=${expires}`,
      img('expiring'),
    ]);
    expectOk(v);
    const sigs = v.json.signatures as { optional: Record<string, string> }[];
    assert.equal(sigs[0]?.optional['org.opensuse.tiu.expires'], expires);
    const human = spawnSync(BIN, ['verify', '--key', join(dir, 'signer.pub'), img('expiring')], {
      env: { PATH: process.env.PATH, HOME: process.env.HOME },
      encoding: 'utf8',
    });
    assert.equal(human.status, 0, human.stderr);
    assert.match(human.stdout, new RegExp(`expires ${expires}`));
    const bad = tiu(['sign', '--expires', 'soon', '--key', join(dir, 'signer.key'), img('expiring')]);
    assert.equal(bad.code, 2);
    assert.equal(bad.json.error?.code, 'USAGE');
  });

  it('refuses a signature by another key: SIGNATURE_INVALID', async () => {
    await pushImage('other', 'signed by the other key');
    expectOk(tiu(['sign', '--key', join(dir, 'other.key'), img('other')], { COSIGN_PASSWORD: 'another one' }));
    expectCode(tiu(['verify', '--key', join(dir, 'signer.pub'), img('other')]), 'SIGNATURE_INVALID');
  });

  it('refuses one altered byte in the payload: SIGNATURE_INVALID', async () => {
    const { target, desc } = await pushImage('altered', 'altered');
    // Sign properly with tiu, then replace the payload by a copy with one byte changed, keeping the signature.
    expectOk(tiu(['sign', '--key', join(dir, 'signer.key'), img('altered')]));
    const sigDesc = await target.resolve(`sha256-${desc.digest.slice(7)}.sig`);
    const chunks: Buffer[] = [];
    for await (const c of await target.fetch(sigDesc)) chunks.push(c as Buffer);
    const manifest = JSON.parse(Buffer.concat(chunks).toString()) as {
      layers: (Descriptor & { annotations: Record<string, string> })[];
    };
    const pchunks: Buffer[] = [];
    for await (const c of await target.fetch(manifest.layers[0]!)) pchunks.push(c as Buffer);
    const payload = Buffer.concat(pchunks);
    const altered = Buffer.from(payload);
    const at = altered.indexOf('microos');
    altered[at] = 'M'.charCodeAt(0);
    await handMadeSignature(
      target,
      desc,
      altered,
      manifest.layers[0]!.annotations['dev.cosignproject.cosign/signature']!,
    );
    expectCode(tiu(['verify', '--key', join(dir, 'signer.pub'), img('altered')]), 'SIGNATURE_INVALID');
  });

  it('refuses a signature made for another digest (replay): SIGNATURE_DIGEST_MISMATCH', async () => {
    const a = await pushImage('replay-a', 'genuine');
    const b = await pushImage('replay-b', 'evil');
    expectOk(tiu(['sign', '--key', join(dir, 'signer.key'), img('replay-a')]));
    await b.target.tag(
      await a.target.resolve(`sha256-${a.desc.digest.slice(7)}.sig`),
      `sha256-${b.desc.digest.slice(7)}.sig`,
    );
    expectCode(tiu(['verify', '--key', join(dir, 'signer.pub'), img('replay-b')]), 'SIGNATURE_DIGEST_MISMATCH');
  });

  it('refuses a docker-reference of another repository under matchRepository: IDENTITY_MISMATCH', async () => {
    await pushImage('ident', 'identity');
    expectOk(tiu(['sign', '--key', join(dir, 'signer.key'), '--identity', `${reg.host}/os/debug:ident`, img('ident')]));
    const policy = join(dir, 'policy-repo.json');
    writeFileSync(
      policy,
      JSON.stringify({
        default: [
          { type: 'sigstoreSigned', keyPath: join(dir, 'signer.pub'), signedIdentity: { type: 'matchRepository' } },
        ],
      }),
    );
    expectCode(tiu(['verify', '--policy', policy, img('ident')]), 'IDENTITY_MISMATCH');
    expectCode(tiu(['verify', '--key', join(dir, 'signer.pub'), img('ident')]), 'IDENTITY_MISMATCH');
  });

  it('refuses an image with no signature at all: SIGNATURE_MISSING', async () => {
    await pushImage('unsigned', 'unsigned');
    expectCode(tiu(['verify', '--key', join(dir, 'signer.pub'), img('unsigned')]), 'SIGNATURE_MISSING');
    const policy = join(dir, 'policy-default.json');
    writeFileSync(policy, JSON.stringify({ default: [{ type: 'sigstoreSigned', keyPath: join(dir, 'signer.pub') }] }));
    expectCode(tiu(['verify', '--policy', policy, img('unsigned')]), 'SIGNATURE_MISSING');
  });

  it('verifies a signature the test made itself with node:crypto following the cosign format', async () => {
    const { target, desc } = await pushImage('handmade', 'handmade');
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    writeFileSync(join(dir, 'handmade.pub'), publicKey.export({ format: 'pem', type: 'spki' }));
    // cosign claims the repository only.
    const payload = payloadFor(`${reg.host}/os/microos`, desc.digest);
    await handMadeSignature(
      target,
      desc,
      payload,
      sign('sha256', payload, { key: privateKey, dsaEncoding: 'der' }).toString('base64'),
    );
    expectOk(tiu(['verify', '--key', join(dir, 'handmade.pub'), img('handmade')]));
  });

  it('signs with a key the test encrypted itself per the cosign format; a wrong passphrase is PASSPHRASE_WRONG', async () => {
    await pushImage('selfkey', 'self-encrypted key');
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const salt = randomBytes(32);
    const nonce = randomBytes(24);
    const boxKey = scryptSync('self made', salt, 32, { N: 32768, r: 8, p: 1, maxmem: 64 * 1024 * 1024 });
    const body = JSON.stringify({
      kdf: { name: 'scrypt', params: { N: 32768, r: 8, p: 1 }, salt: salt.toString('base64') },
      cipher: { name: 'nacl/secretbox', nonce: nonce.toString('base64') },
      ciphertext: Buffer.from(
        xsalsa20poly1305(boxKey, nonce).encrypt(privateKey.export({ format: 'der', type: 'pkcs8' })),
      ).toString('base64'),
    });
    const lines = Buffer.from(body)
      .toString('base64')
      .match(/.{1,64}/g)!
      .join('\n');
    writeFileSync(
      join(dir, 'self.key'),
      `-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n${lines}\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n`,
      { mode: 0o600 },
    );
    writeFileSync(join(dir, 'self.pub'), publicKey.export({ format: 'pem', type: 'spki' }));
    expectCode(
      tiu(['sign', '--key', join(dir, 'self.key'), img('selfkey')], { TIU_PASSWORD: 'not the passphrase' }),
      'PASSPHRASE_WRONG',
    );
    expectOk(tiu(['sign', '--key', join(dir, 'self.key'), img('selfkey')], { COSIGN_PASSWORD: 'self made' }));
    expectOk(tiu(['verify', '--key', join(dir, 'self.pub'), img('selfkey')]));
  });

  it('round trip on an OCI layout, and signatures travel with copy --referrers to a layout', async () => {
    // Sign in a layout (it has no registry name: --identity says which image it is).
    const layout = join(dir, 'layout');
    const lt = await open(`oci:${layout}`, true);
    await putImage(lt, 'v1', 'layout image');
    expectCode(tiu(['sign', '--key', join(dir, 'signer.key'), `oci:${layout}:v1`]), 'IDENTITY_REQUIRED');
    expectOk(
      tiu([
        'sign',
        '--key',
        join(dir, 'signer.key'),
        '--identity',
        'registry.example/os/microos:v1',
        `oci:${layout}:v1`,
      ]),
    );
    expectOk(tiu(['verify', '--key', join(dir, 'signer.pub'), `oci:${layout}:v1`]));
    expectOk(
      tiu([
        'verify',
        '--key',
        join(dir, 'signer.pub'),
        '--identity',
        'registry.example/os/microos:v1',
        `oci:${layout}:v1`,
      ]),
    );
    expectCode(
      tiu([
        'verify',
        '--key',
        join(dir, 'signer.pub'),
        '--identity',
        'registry.example/os/other:v1',
        `oci:${layout}:v1`,
      ]),
      'IDENTITY_MISMATCH',
    );
    expectCode(tiu(['verify', '--key', join(dir, 'other.pub'), `oci:${layout}:v1`]), 'SIGNATURE_INVALID');

    // The USB stick: copy a signed registry image with --referrers, verify there offline.
    const usb = join(dir, 'usb');
    expectOk(tiu(['copy', '--referrers', img('1'), `oci:${usb}:1`]));
    expectOk(tiu(['verify', '--key', join(dir, 'signer.pub'), `oci:${usb}:1`]));
    const policy = join(dir, 'policy-usb.json');
    writeFileSync(
      policy,
      JSON.stringify({
        default: [{ type: 'reject' }],
        transports: {
          oci: {
            [usb]: [
              {
                type: 'sigstoreSigned',
                keyPath: join(dir, 'signer.pub'),
                signedIdentity: { type: 'exactRepository', dockerRepository: `${reg.host}/os/microos` },
              },
            ],
          },
        },
      }),
    );
    expectOk(tiu(['verify', '--policy', policy, `oci:${usb}:1`]));
    // An unsigned image copied the same way is refused.
    expectOk(tiu(['copy', '--referrers', img('unsigned'), `oci:${usb}:unsigned`]));
    expectCode(tiu(['verify', '--policy', policy, `oci:${usb}:unsigned`]), 'SIGNATURE_MISSING');
  });

  it('no key material or passphrase appears in any output', () => {
    const all = outputs.join('\n');
    assert.ok(all.length > 1000, 'the tests above produced output');
    for (const secret of [PASS, 'another one', 'self made', 'not the passphrase'])
      assert.ok(!all.includes(secret), `output contains a passphrase`);
    assert.ok(!/PRIVATE KEY/.test(all), 'output contains a private key');
    for (const f of ['signer.key', 'other.key', 'self.key']) {
      const body = readFileSync(join(dir, f), 'utf8')
        .split('\n')
        .filter((l) => !l.startsWith('-----') && l.length >= 16);
      for (const line of body) assert.ok(!all.includes(line), `output contains a line of ${f}`);
    }
  });
});
