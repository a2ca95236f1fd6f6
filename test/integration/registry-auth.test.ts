/**
 * Registry authentication against distribution 2.8: htpasswd Basic auth, and the token flow
 * with a token service in the harness (ES256 JWTs with an x5c chain rooted in the registry's
 * rootcertbundle). Credentials come from --creds, --authfile, the default auth.json/docker
 * config locations, and a docker-credential helper.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { isTiuError } from '../../src/errors.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import { parseReference, type DockerReference } from '../../src/oci/reference.ts';
import {
  openRegistryTarget,
  RegistrySession,
  setHttpLogger,
  type RegistryClientOptions,
  type RegistryTarget,
} from '../../src/transport/registry/index.ts';
import { requireRoot } from '../helpers/env.ts';
import { blobOf, makeImage, pushImage, readAll } from '../helpers/images.ts';
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts';
import { startTokenIssuer, type TokenIssuer } from '../helpers/token-issuer.ts';

const exec = promisify(execFile);
const TIU = new URL('../../bin/tiu', import.meta.url).pathname;
const USER = 'alice';
const PASS = 'S3cret-pa55word';

function authJson(host: string, entry: Record<string, string>): string {
  return JSON.stringify({ auths: { [host]: entry } });
}

describe('registry transport: authentication', function () {
  this.timeout(60_000);
  let dir: string;
  let env: NodeJS.ProcessEnv;

  before(async function () {
    requireRoot(this, 'runs a registry');
    dir = await mkdtemp(join(tmpdir(), 'tiu-auth-'));
    // An empty home: no stray credentials from the machine.
    env = {
      HOME: join(dir, 'home'),
      XDG_RUNTIME_DIR: join(dir, 'run'),
      PATH: `${join(dir, 'bin')}:${process.env.PATH ?? ''}`,
    };
    await mkdir(join(dir, 'home'), { recursive: true });
    await mkdir(join(dir, 'bin'), { recursive: true });
  });
  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const open = (host: string, repo: string, opts: RegistryClientOptions = {}): RegistryTarget =>
    openRegistryTarget(parseReference(`docker://${host}/${repo}`) as DockerReference, {
      registriesConf: false,
      env,
      ...opts,
    });

  describe('htpasswd Basic auth', () => {
    let reg: RunningRegistry;
    before(async () => {
      const htpasswd = join(dir, 'htpasswd');
      await writeFile(htpasswd, execFileSync('htpasswd', ['-Bbn', USER, PASS]));
      reg = await startRegistry({ htpasswd });
    });
    after(async () => {
      await reg?.stop();
    });

    it('without credentials: REGISTRY_UNAUTHORIZED naming the registry and the auth files consulted, no secrets', async () => {
      const t = open(reg.host, 'tiu/basic');
      const err = await t.resolve('latest').then(
        () => undefined,
        (e: unknown) => e,
      );
      assert.ok(isTiuError(err, 'REGISTRY_UNAUTHORIZED'), String(err));
      const msg = err.message;
      assert.match(msg, new RegExp(reg.host.replace(/\./g, '\\.')));
      for (const f of [
        join(dir, 'run/containers/auth.json'),
        join(dir, 'home/.config/containers/auth.json'),
        join(dir, 'home/.docker/config.json'),
        join(dir, 'home/.dockercfg'),
      ]) {
        assert.ok(msg.includes(f), `message names ${f}: ${msg}`);
      }
      assert.deepEqual(err.details.consulted, [
        join(dir, 'run/containers/auth.json'),
        join(dir, 'home/.config/containers/auth.json'),
        join(dir, 'home/.docker/config.json'),
        join(dir, 'home/.dockercfg'),
      ]);
    });

    it('wrong --creds: REGISTRY_UNAUTHORIZED that names the source and not the password', async () => {
      const t = open(reg.host, 'tiu/basic', { creds: `${USER}:wrong-Pa55` });
      await assert.rejects(t.resolve('latest'), (e: unknown) => {
        assert.ok(isTiuError(e, 'REGISTRY_UNAUTHORIZED'), String(e));
        assert.match(e.message, /--creds/);
        assert.ok(!e.message.includes('wrong-Pa55') && !JSON.stringify(e.details).includes('wrong-Pa55'));
        return true;
      });
    });

    it('--creds, --authfile, REGISTRY_AUTH_FILE, docker config.json and a credential helper all work', async () => {
      const img = await makeImage();
      await pushImage(open(reg.host, 'tiu/basic', { creds: `${USER}:${PASS}` }), img, 'v1');
      const authfile = join(dir, 'auth.json');
      await writeFile(authfile, authJson(reg.host, { auth: Buffer.from(`${USER}:${PASS}`).toString('base64') }));
      const byFile = open(reg.host, 'tiu/basic', { authFile: authfile });
      assert.equal((await byFile.resolve('v1')).digest, img.manifest.desc.digest);
      const byEnv = open(reg.host, 'tiu/basic', { env: { ...env, REGISTRY_AUTH_FILE: authfile } });
      assert.equal((await byEnv.resolve('v1')).digest, img.manifest.desc.digest);
      // docker config.json, keyed the docker way
      await mkdir(join(dir, 'home/.docker'), { recursive: true });
      await writeFile(
        join(dir, 'home/.docker/config.json'),
        JSON.stringify({
          auths: { [`http://${reg.host}/v1/`]: { auth: Buffer.from(`${USER}:${PASS}`).toString('base64') } },
        }),
      );
      const byDocker = open(reg.host, 'tiu/basic');
      assert.deepEqual(await readAll(await byDocker.fetch(img.config.desc)), img.config.data);
      // a credential helper named in credHelpers
      const helper = join(dir, 'bin/docker-credential-tiutest');
      await writeFile(
        helper,
        `#!/bin/sh\nread host\nif [ "$1" = get ] && [ "$host" = "${reg.host}" ]; then\n  printf '{"ServerURL":"%s","Username":"${USER}","Secret":"${PASS}"}' "$host"\nelse\n  echo "credentials not found in native keychain"; exit 1\nfi\n`,
      );
      await chmod(helper, 0o755);
      await writeFile(
        join(dir, 'home/.docker/config.json'),
        JSON.stringify({ credHelpers: { [reg.host]: 'tiutest' } }),
      );
      const byHelper = open(reg.host, 'tiu/basic');
      assert.deepEqual(await readAll(await byHelper.fetch(img.layers[0]!.desc)), img.layers[0]!.data);
      // a credsStore that has nothing for this host: no credentials, and the message names the helper
      await writeFile(join(dir, 'home/.docker/config.json'), JSON.stringify({ credsStore: 'tiutest' }));
      const other = open('localhost:' + reg.port, 'tiu/basic');
      await assert.rejects(
        other.resolve('v1'),
        (e: unknown) => isTiuError(e, 'REGISTRY_UNAUTHORIZED') && e.message.includes('docker-credential-tiutest'),
      );
      await rm(join(dir, 'home/.docker/config.json'));
    });
  });

  it('tiu copy and inspect take --dest-creds, --creds and --authfile (and say REGISTRY_UNAUTHORIZED without)', async function () {
    this.timeout(300_000);
    const htpasswd = join(dir, 'htpasswd-cli');
    await writeFile(htpasswd, execFileSync('htpasswd', ['-Bbn', USER, PASS]));
    const reg = await startRegistry({ htpasswd });
    try {
      const img = await makeImage();
      const layout = join(dir, 'cli-layout');
      await mkdir(join(layout, 'blobs/sha256'), { recursive: true });
      await writeFile(join(layout, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
      for (const b of img.all) await writeFile(join(layout, 'blobs/sha256', b.desc.digest.slice(7)), b.data);
      await writeFile(
        join(layout, 'index.json'),
        JSON.stringify({
          schemaVersion: 2,
          manifests: [{ ...img.manifest.desc, annotations: { 'org.opencontainers.image.ref.name': '1' } }],
        }),
      );
      const tiu = (...args: string[]) => exec(TIU, [...args, '--json'], { env: { ...process.env, ...env } });
      const failed = await tiu('copy', `oci:${layout}:1`, `docker://${reg.host}/cli/os:1`).then(
        () => undefined,
        (e: { stdout: string }) =>
          JSON.parse(e.stdout) as {
            error: {
              code: string;
              message: string;
              details: { causeCode?: string; origin?: string };
              cause?: { code: string };
            };
          },
      );
      // copy() reports it as COPY_FAILED on the destination, with the registry's code as the cause
      assert.equal(failed?.error.code, 'COPY_FAILED');
      assert.equal(failed.error.details.causeCode, 'REGISTRY_UNAUTHORIZED');
      assert.equal(failed.error.cause?.code, 'REGISTRY_UNAUTHORIZED');
      assert.equal(failed.error.details.origin, 'destination');
      assert.ok(failed.error.message.includes(reg.host));
      await tiu('copy', `oci:${layout}:1`, `docker://${reg.host}/cli/os:1`, '--dest-creds', `${USER}:${PASS}`);
      const byCreds = JSON.parse(
        (await tiu('inspect', `docker://${reg.host}/cli/os:1`, '--creds', `${USER}:${PASS}`)).stdout,
      ) as { Digest: string };
      assert.equal(byCreds.Digest, img.manifest.desc.digest);
      const authfile = join(dir, 'cli-auth.json');
      await writeFile(authfile, authJson(reg.host, { auth: Buffer.from(`${USER}:${PASS}`).toString('base64') }));
      const byFile = JSON.parse(
        (await tiu('inspect', `docker://${reg.host}/cli/os:1`, '--authfile', authfile)).stdout,
      ) as { Digest: string };
      assert.equal(byFile.Digest, img.manifest.desc.digest);
    } finally {
      await reg.stop();
    }
  });

  describe('token auth (Bearer)', () => {
    let reg: RunningRegistry;
    let issuer: TokenIssuer;
    before(async () => {
      issuer = await startTokenIssuer(USER, PASS);
      reg = await startRegistry({
        token: {
          realm: issuer.realm,
          service: issuer.service,
          issuer: issuer.issuer,
          rootcertbundle: issuer.rootcertbundle,
        },
      });
    });
    after(async () => {
      await reg?.stop();
      await issuer?.stop();
    });

    it('anonymous: an anonymous token pulls public repositories; anything more is REGISTRY_UNAUTHORIZED', async () => {
      const img = await makeImage();
      await pushImage(open(reg.host, 'public/os', { creds: `${USER}:${PASS}` }), img, '1');
      const anon = open(reg.host, 'public/os');
      assert.equal((await anon.resolve('1')).digest, img.manifest.desc.digest);
      assert.deepEqual(await readAll(await anon.fetch(img.layers[0]!.desc)), img.layers[0]!.data);
      assert.ok(issuer.issued.anonymous >= 1);
      const b = blobOf(randomBytes(100), MediaType.OciLayerGzip);
      await assert.rejects(
        anon.push(b.desc, Readable.from([b.data])),
        (e: unknown) =>
          isTiuError(e, 'REGISTRY_UNAUTHORIZED') &&
          e.message.includes(reg.host) &&
          e.message.includes('no credentials'),
      );
      await assert.rejects(
        open(reg.host, 'tiu/tok').resolve('latest'),
        (e: unknown) => isTiuError(e, 'REGISTRY_UNAUTHORIZED') && e.message.includes(reg.host),
      );
    });

    it('pushes and pulls with tokens cached per scope, then renews them with the refresh token', async () => {
      const session = new RegistrySession({ creds: `${USER}:${PASS}`, env });
      const lines: string[] = [];
      const prevLogger = setHttpLogger((l) => lines.push(l));
      try {
        const t = open(reg.host, 'tiu/tok', { session });
        const img = await makeImage({ layerBytes: [1000, 100_000] });
        await pushImage(t, img, 'v1');
        assert.equal((await t.resolve('v1')).digest, img.manifest.desc.digest);
        for (const b of img.all) assert.deepEqual(await readAll(await t.fetch(b.desc)), b.data);
        // one token for pull,push and one for pull: not one per request
        const first = issuer.issued.password + issuer.issued.refresh;
        assert.ok(first <= 3, `tokens issued: ${first}`);
        // a blob mounted into another repository needs a token for both scopes
        const other = open(reg.host, 'tiu/tok2', { session });
        assert.equal(await other.exists(img.layers[1]!.desc), true);
        assert.ok(issuer.scopes.some((s) => s === 'repository:tiu/tok:pull'));
        // later tokens came from the refresh token the issuer handed out
        assert.ok(issuer.issued.refresh >= 1, JSON.stringify(issuer.issued));
        assert.deepEqual(await readAll(await other.fetch(img.layers[1]!.desc)), img.layers[1]!.data);
        // the request log has every request and no secret: no password, no token, no refresh token
        assert.ok(lines.length > 10 && lines.some((l) => l.includes('/token')));
        const log = lines.join('\n');
        for (const secret of [PASS, issuer.refreshToken, Buffer.from(`${USER}:${PASS}`).toString('base64'), 'eyJ'])
          assert.ok(!log.includes(secret), `log leaks ${secret.slice(0, 4)}`);
      } finally {
        setHttpLogger(prevLogger);
        await session.close();
      }
    });

    it('an auth.json identitytoken (refresh token) alone is enough', async () => {
      const authfile = join(dir, 'auth-identity.json');
      await writeFile(authfile, authJson(reg.host, { identitytoken: issuer.refreshToken }));
      const before = issuer.issued.refresh;
      const t = open(reg.host, 'tiu/tok3', { authFile: authfile });
      const b = blobOf(randomBytes(5000), MediaType.OciLayerGzip);
      await t.push(b.desc, Readable.from([b.data]));
      assert.equal(await t.exists(b.desc), true);
      assert.ok(issuer.issued.refresh > before);
    });

    it('wrong password: REGISTRY_UNAUTHORIZED from the token service, password not in the message', async () => {
      const t = open(reg.host, 'tiu/tok', { creds: `${USER}:nope-Nope` });
      await assert.rejects(
        t.resolve('v1'),
        (e: unknown) =>
          isTiuError(e, 'REGISTRY_UNAUTHORIZED') && !e.message.includes('nope-Nope') && e.message.includes('--creds'),
      );
    });
  });
});
