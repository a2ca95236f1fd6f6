/**
 * TLS: a registry with a certificate from a CA the test makes with openssl. tiu trusts it only
 * through a certs.d directory (<dir>/<host:port>/ca.crt); without it the pull fails with
 * TLS_ERROR, and never falls back to plain http for a registry that is not insecure.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile, copyFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { isTiuError } from '../../src/errors.ts';
import { parseReference, type DockerReference } from '../../src/oci/reference.ts';
import { openRegistryTarget, parseRegistriesConf } from '../../src/transport/registry/index.ts';
import { requireRoot } from '../helpers/env.ts';
import { makeImage, pushImage, readAll } from '../helpers/images.ts';
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts';

const TIU = new URL('../../bin/tiu', import.meta.url).pathname;

describe('registry transport: TLS with certs.d', function () {
  this.timeout(60_000);
  let dir: string;
  let reg: RunningRegistry;
  let certsd: string;

  before(async function () {
    requireRoot(this, 'runs a registry');
    dir = await mkdtemp(join(tmpdir(), 'tiu-tls-'));
    const o = (...args: string[]): void => {
      execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
    };
    o(
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-subj',
      '/CN=tiu test CA',
      '-days',
      '2',
      '-keyout',
      'ca.key',
      '-out',
      'ca.crt',
    );
    o('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', 'server.key', '-out', 'server.csr');
    await writeFile(
      join(dir, 'ext.cnf'),
      'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n',
    );
    o(
      'x509',
      '-req',
      '-in',
      'server.csr',
      '-CA',
      'ca.crt',
      '-CAkey',
      'ca.key',
      '-CAcreateserial',
      '-days',
      '2',
      '-extfile',
      'ext.cnf',
      '-out',
      'server.crt',
    );
    reg = await startRegistry({ tls: { certificate: join(dir, 'server.crt'), key: join(dir, 'server.key') } });
    certsd = join(dir, 'certs.d');
    await mkdir(join(certsd, reg.host), { recursive: true });
    await copyFile(join(dir, 'ca.crt'), join(certsd, reg.host, 'ca.crt'));
  });
  after(async () => {
    await reg?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const ref = (repo: string): DockerReference => parseReference(`docker://${reg.host}/${repo}`) as DockerReference;

  it('pushes and pulls over https trusting the CA from certs.d', async () => {
    const t = openRegistryTarget(ref('tiu/tls'), { registriesConf: false, certDirs: [join(dir, 'empty'), certsd] });
    const img = await makeImage();
    await pushImage(t, img, 'v1');
    const d = await t.resolve('v1');
    assert.equal(d.digest, img.manifest.desc.digest);
    assert.deepEqual(await readAll(await t.fetch(img.layers[0]!.desc)), img.layers[0]!.data);
    await t.close();
  });

  it('without the CA: TLS_ERROR (no silent fallback to http)', async () => {
    const t = openRegistryTarget(ref('tiu/tls'), { registriesConf: false, certDirs: [join(dir, 'empty')] });
    await assert.rejects(t.resolve('v1'), (e: unknown) => isTiuError(e, 'TLS_ERROR') && e.message.includes(reg.host));
  });

  it('presents the client certificate from certs.d (*.cert + *.key) to a registry that requires one', async () => {
    const o = (...args: string[]): void => {
      execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
    };
    o('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=tiu device', '-keyout', 'client.key', '-out', 'client.csr');
    await writeFile(join(dir, 'client.cnf'), 'extendedKeyUsage=clientAuth\n');
    o(
      'x509',
      '-req',
      '-in',
      'client.csr',
      '-CA',
      'ca.crt',
      '-CAkey',
      'ca.key',
      '-CAcreateserial',
      '-days',
      '2',
      '-extfile',
      'client.cnf',
      '-out',
      'client.cert',
    );
    const mtls = await startRegistry({
      tls: { certificate: join(dir, 'server.crt'), key: join(dir, 'server.key'), clientcas: [join(dir, 'ca.crt')] },
    });
    try {
      const withCert = join(dir, 'certs-mtls.d');
      await mkdir(join(withCert, mtls.host), { recursive: true });
      await copyFile(join(dir, 'ca.crt'), join(withCert, mtls.host, 'ca.crt'));
      const noCert = join(dir, 'certs-nocert.d');
      await mkdir(join(noCert, mtls.host), { recursive: true });
      await copyFile(join(dir, 'ca.crt'), join(noCert, mtls.host, 'ca.crt'));
      const without = openRegistryTarget(parseReference(`docker://${mtls.host}/tiu/mtls`) as DockerReference, {
        registriesConf: false,
        certDirs: [noCert],
        retries: 0,
      });
      await assert.rejects(
        without.resolve('v1'),
        (e: unknown) => isTiuError(e) && ['TLS_ERROR', 'REGISTRY_UNREACHABLE'].includes(e.code),
      );
      await copyFile(join(dir, 'client.cert'), join(withCert, mtls.host, 'client.cert'));
      await copyFile(join(dir, 'client.key'), join(withCert, mtls.host, 'client.key'));
      const t = openRegistryTarget(parseReference(`docker://${mtls.host}/tiu/mtls`) as DockerReference, {
        registriesConf: false,
        certDirs: [withCert],
      });
      const img = await makeImage();
      await pushImage(t, img, 'v1');
      assert.equal((await t.resolve('v1')).digest, img.manifest.desc.digest);
      await t.close();
    } finally {
      await mtls.stop();
    }
  });

  it("--cert-dir is skopeo's flat folder: *.crt CAs and *.cert + *.key for whichever registry", async () => {
    const o = (...args: string[]): void => {
      execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
    };
    o('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=tiu flat', '-keyout', 'flat.key', '-out', 'flat.csr');
    await writeFile(join(dir, 'flat.cnf'), 'extendedKeyUsage=clientAuth\n');
    o(
      'x509',
      '-req',
      '-in',
      'flat.csr',
      '-CA',
      'ca.crt',
      '-CAkey',
      'ca.key',
      '-days',
      '2',
      '-extfile',
      'flat.cnf',
      '-out',
      'flat.cert',
    );
    const mtls = await startRegistry({
      tls: { certificate: join(dir, 'server.crt'), key: join(dir, 'server.key'), clientcas: [join(dir, 'ca.crt')] },
    });
    try {
      const flat = join(dir, 'flat');
      await mkdir(flat);
      await copyFile(join(dir, 'ca.crt'), join(flat, 'my-ca.crt'));
      await copyFile(join(dir, 'flat.cert'), join(flat, 'me.cert'));
      await copyFile(join(dir, 'flat.key'), join(flat, 'me.key'));
      const t = openRegistryTarget(parseReference(`docker://${mtls.host}/tiu/flat`) as DockerReference, {
        registriesConf: false,
        certDir: flat,
      });
      const img = await makeImage();
      await pushImage(t, img, 'v1');
      await t.close();
      // The CLI's --cert-dir, for both registries (the flat folder is not per host).
      const env = { ...process.env, CONTAINERS_REGISTRIES_CONF: join(dir, 'none.conf') };
      await writeFile(env.CONTAINERS_REGISTRIES_CONF, '');
      for (const host of [mtls.host, reg.host]) {
        const ref = `docker://${host}/tiu/${host === mtls.host ? 'flat' : 'tls'}:v1`;
        const r = await execa(TIU, ['inspect', '--json', '--no-tags', '--cert-dir', flat, ref], { env, reject: false });
        assert.equal(r.exitCode, 0, r.stdout + r.stderr);
        assert.match((JSON.parse(r.stdout) as { Digest: string }).Digest, /^sha256:/);
      }
      // Without it, the CA is unknown; a certs.d tree given as --cert-dir has no *.crt at its top.
      for (const args of [[], ['--cert-dir', certsd]]) {
        const r = await execa(TIU, ['inspect', '--json', ...args, `docker://${reg.host}/tiu/tls:v1`], {
          env,
          reject: false,
        });
        assert.equal((JSON.parse(r.stdout) as { error: { code: string } }).error.code, 'TLS_ERROR', args.join(' '));
      }
      // A key without its certificate is refused by name, as containers/image does.
      await rm(join(flat, 'me.cert'));
      const r = await execa(TIU, ['inspect', '--json', '--cert-dir', flat, `docker://${mtls.host}/tiu/flat:v1`], {
        env,
        reject: false,
      });
      const err = (JSON.parse(r.stdout) as { error: { code: string; message: string } }).error;
      assert.equal(err.code, 'CONFIG_INVALID', r.stdout);
      assert.match(err.message, /key .*me\.key has no client certificate/);
    } finally {
      await mtls.stop();
    }
  });

  it('--tls-verify=false and an insecure registries.conf entry accept the unknown CA', async () => {
    const t = openRegistryTarget(ref('tiu/tls'), { registriesConf: false, certDirs: [], tlsVerify: false });
    assert.ok((await t.resolve('v1')).digest.startsWith('sha256:'));
    const conf = parseRegistriesConf(`[[registry]]\nlocation = "${reg.host}"\ninsecure = true\n`, 'test.conf');
    const t2 = openRegistryTarget(ref('tiu/tls'), { registriesConf: conf, certDirs: [] });
    assert.ok((await t2.resolve('v1')).digest.startsWith('sha256:'));
  });
});
