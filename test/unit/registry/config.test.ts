import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isTiuError } from '../../../src/errors.ts';
import { parseReference, type DockerReference } from '../../../src/oci/reference.ts';
import { parseChallenges } from '../../../src/transport/registry/auth.ts';
import { authFilePaths, lookupCredentials, normalizeAuthKey, parseCredsOption } from '../../../src/transport/registry/credentials.ts';
import { apiHost } from '../../../src/transport/registry/session.ts';
import {
  findRegistry,
  loadRegistriesConf,
  parseRegistriesConf,
  pullEndpoints,
  pushEndpoint,
  registriesConfSources,
} from '../../../src/transport/registry/registries-conf.ts';

const ref = (s: string): DockerReference => parseReference(s) as DockerReference;

describe('registry: WWW-Authenticate', () => {
  it('parses Bearer and Basic challenges with quoted and plain values', () => {
    const [c] = parseChallenges('Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push",error="insufficient_scope"');
    assert.equal(c!.scheme, 'bearer');
    assert.deepEqual(c!.params, { realm: 'https://auth.example.com/token', service: 'registry.example.com', scope: 'repository:a/b:pull,push', error: 'insufficient_scope' });
    const two = parseChallenges(['Basic realm="x y"', 'Bearer realm=https://r/t, service=s']);
    assert.deepEqual(two.map((x) => x.scheme), ['basic', 'bearer']);
    assert.equal(two[0]!.params.realm, 'x y');
    assert.equal(two[1]!.params.service, 's');
    assert.deepEqual(parseChallenges(undefined), []);
    assert.equal(parseChallenges('Bearer realm="a\\"b"')[0]!.params.realm, 'a"b');
  });
});

describe('registry: registries.conf', () => {
  const text = `
unqualified-search-registries = ["registry.opensuse.org"]

[[registry]]
prefix = "example.com/os"
location = "internal.example.com:5000/mirror/os"
[[registry.mirror]]
location = "m1.example.com/os"
[[registry.mirror]]
location = "m2.example.com/os"
pull-from-mirror = "digest-only"
[[registry.mirror]]
location = "m3.example.com/os"
pull-from-mirror = "tag-only"
insecure = true

[[registry]]
prefix = "example.com"
location = "other.example.com"

[[registry]]
prefix = "*.blocked.example"
blocked = true

[[registry]]
location = "localhost:5000"
insecure = true
`;
  const conf = parseRegistriesConf(text, '/etc/containers/registries.conf');

  it('matches the longest prefix at a component boundary, wildcards last', () => {
    assert.equal(findRegistry(conf, 'example.com/os')!.prefix, 'example.com/os');
    assert.equal(findRegistry(conf, 'example.com/os/sub')!.prefix, 'example.com/os');
    assert.equal(findRegistry(conf, 'example.com/osx')!.prefix, 'example.com');
    assert.equal(findRegistry(conf, 'a.blocked.example/x')!.prefix, '*.blocked.example');
    assert.equal(findRegistry(conf, 'blocked.example.org/x'), undefined);
    assert.deepEqual(conf.unqualifiedSearchRegistries, ['registry.opensuse.org']);
  });

  it('rewrites locations and orders mirrors by pull-from-mirror; pushes go to the primary', () => {
    const byTag = pullEndpoints(conf, ref('example.com/os/base:1'));
    assert.deepEqual(byTag.map((e) => `${e.registry}/${e.repository}${e.mirror ? ' m' : ''}${e.insecure ? ' i' : ''}`), [
      'm1.example.com/os/base m',
      'm3.example.com/os/base m i',
      'internal.example.com:5000/mirror/os/base',
    ]);
    const byDigest = pullEndpoints(conf, ref(`example.com/os/base@sha256:${'a'.repeat(64)}`));
    assert.deepEqual(byDigest.map((e) => e.registry), ['m1.example.com', 'm2.example.com', 'internal.example.com:5000']);
    assert.deepEqual(pushEndpoint(conf, ref('example.com/os/base:1')), { registry: 'internal.example.com:5000', repository: 'mirror/os/base', insecure: false, mirror: false });
    assert.equal(pushEndpoint(conf, ref('example.com/app:1')).registry, 'other.example.com');
    assert.equal(pushEndpoint(conf, ref('localhost:5000/x:1')).insecure, true);
    assert.deepEqual(pushEndpoint(conf, ref('quay.io/x/y:1')), { registry: 'quay.io', repository: 'x/y', insecure: false, mirror: false });
    // docker.io keeps its name (credentials are looked up under it); its API is on registry-1.docker.io
    assert.deepEqual(pushEndpoint(conf, ref('debian:12')), { registry: 'docker.io', repository: 'library/debian', insecure: false, mirror: false });
    assert.equal(apiHost('docker.io'), 'registry-1.docker.io');
    assert.equal(apiHost('quay.io'), 'quay.io');
  });

  it('mirror-by-digest-only keeps mirrors for digests', () => {
    const c = parseRegistriesConf('[[registry]]\nlocation = "r.example"\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = "m.example"\n', 'f');
    assert.deepEqual(pullEndpoints(c, ref('r.example/a:1')).map((e) => e.registry), ['r.example']);
    assert.deepEqual(pullEndpoints(c, ref(`r.example/a@sha256:${'b'.repeat(64)}`)).map((e) => e.registry), ['m.example', 'r.example']);
  });

  it('refuses blocked registries with REGISTRY_BLOCKED naming the file', () => {
    assert.throws(() => pullEndpoints(conf, ref('x.blocked.example/a:1')), (e: unknown) => isTiuError(e, 'REGISTRY_BLOCKED') && e.message.includes('/etc/containers/registries.conf'));
    assert.throws(() => pushEndpoint(conf, ref('x.blocked.example/a:1')), (e: unknown) => isTiuError(e, 'REGISTRY_BLOCKED'));
  });

  it('says exactly what is wrong in a bad file', () => {
    const bad = (t: string, re: RegExp) => assert.throws(() => parseRegistriesConf(t, 'bad.conf'), (e: unknown) => isTiuError(e, 'CONFIG_INVALID') && re.test(e.message) && e.message.includes('bad.conf'));
    bad('[[registry]\n', /TOML/);
    bad('[registries.search]\nregistries = ["a"]\n', /version 1/);
    bad('[[registry]]\nlocation = "a"\n[[registry.mirror]]\nlocation = "b"\npull-from-mirror = "sometimes"\n', /pull-from-mirror/);
    bad('[[registry]]\nprefix = "*.a.example"\nlocation = "b"\n', /wildcard/);
    bad('[[registry]]\ninsecure = "yes"\nlocation = "a"\n', /insecure/);
  });

  describe('where registries.conf is looked up (as containers/image)', () => {
    let dir: string;
    let home: string;
    let sys: { systemFile: string; systemDir: string };
    const conf = (prefix: string, location: string) => `[[registry]]\nprefix = "${prefix}"\nlocation = "${location}"\n`;
    const put = async (path: string, text: string) => {
      await mkdir(join(path, '..'), { recursive: true });
      await writeFile(path, text);
    };
    beforeEach(async () => {
      dir = await mkdtemp(join(tmpdir(), 'tiu-regconf-'));
      home = join(dir, 'home');
      sys = { systemFile: join(dir, 'etc/registries.conf'), systemDir: join(dir, 'etc/registries.conf.d') };
      await mkdir(home, { recursive: true });
    });
    afterEach(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    it('system file, then system drop-ins, then user drop-ins, each in name order; later files win', async () => {
      await put(sys.systemFile, 'unqualified-search-registries = ["s.example"]\n' + conf('a.example', 'one.example'));
      await put(join(sys.systemDir, '20-b.conf'), conf('a.example', 'three.example'));
      await put(join(sys.systemDir, '10-a.conf'), conf('a.example', 'two.example') + '[[registry]]\nprefix = "b.example"\nblocked = true\n');
      await put(join(sys.systemDir, 'ignored.txt'), 'not toml [');
      await mkdir(join(sys.systemDir, 'sub.conf'));
      await put(join(home, '.config/containers/registries.conf.d/05-user.conf'), conf('c.example', 'user.example'));
      const c = loadRegistriesConf({ ...sys, env: { HOME: home } });
      assert.equal(findRegistry(c, 'a.example/x')!.location, 'three.example');
      assert.equal(findRegistry(c, 'b.example/x')!.blocked, true);
      assert.equal(findRegistry(c, 'c.example/x')!.location, 'user.example');
      assert.deepEqual(c.files.map((f) => f.slice(dir.length)), [
        '/etc/registries.conf',
        '/etc/registries.conf.d/10-a.conf',
        '/etc/registries.conf.d/20-b.conf',
        '/home/.config/containers/registries.conf.d/05-user.conf',
      ]);
      assert.deepEqual(c.unqualifiedSearchRegistries, ['s.example']);
      // A drop-in that sets the list, even to [], replaces it; one that does not, keeps it.
      await put(join(home, '.config/containers/registries.conf.d/10-empty.conf'), 'unqualified-search-registries = []\n');
      const e = loadRegistriesConf({ ...sys, env: { HOME: home } });
      assert.deepEqual(e.unqualifiedSearchRegistries, []);
      assert.match(e.unqualifiedSearchOrigin!, /10-empty\.conf$/);
    });

    it("a user file replaces the system's file and drop-ins; the user's drop-ins still apply", async () => {
      await put(sys.systemFile, conf('a.example', 'system.example'));
      await put(join(sys.systemDir, '10.conf'), conf('b.example', 'system.example'));
      await put(join(home, '.config/containers/registries.conf'), conf('a.example', 'user.example'));
      await put(join(home, '.config/containers/registries.conf.d/10.conf'), conf('c.example', 'user-d.example'));
      const c = loadRegistriesConf({ ...sys, env: { HOME: home } });
      assert.equal(findRegistry(c, 'a.example/x')!.location, 'user.example');
      assert.equal(findRegistry(c, 'b.example/x'), undefined);
      assert.equal(findRegistry(c, 'c.example/x')!.location, 'user-d.example');
      assert.equal(registriesConfSources({ ...sys, env: { HOME: home } }).file, join(home, '.config/containers/registries.conf'));
    });

    it('CONTAINERS_REGISTRIES_CONF (and --registries-conf) name the file, which must exist; drop-ins stay', async () => {
      await put(join(home, '.config/containers/registries.conf'), conf('a.example', 'user.example'));
      await put(join(dir, 'mine.conf'), conf('a.example', 'env.example'));
      await put(join(sys.systemDir, '10.conf'), conf('b.example', 'system-d.example'));
      const env = { HOME: home, CONTAINERS_REGISTRIES_CONF: join(dir, 'mine.conf') };
      const c = loadRegistriesConf({ ...sys, env });
      assert.equal(findRegistry(c, 'a.example/x')!.location, 'env.example');
      assert.equal(findRegistry(c, 'b.example/x')!.location, 'system-d.example');
      assert.throws(() => loadRegistriesConf({ ...sys, env: { ...env, CONTAINERS_REGISTRIES_CONF: join(dir, 'none.conf') } }), {
        code: 'CONFIG_INVALID',
      });
      // The option wins over the variable; an explicit drop-in directory is the only one read.
      await put(join(dir, 'only.d/1.conf'), conf('d.example', 'only.example'));
      const o = loadRegistriesConf({ ...sys, env, file: join(dir, 'mine.conf'), dropInDir: join(dir, 'only.d') });
      assert.equal(findRegistry(o, 'b.example/x'), undefined);
      assert.equal(findRegistry(o, 'd.example/x')!.location, 'only.example');
      // Nothing anywhere: no configuration, not an error.
      await rm(join(home, '.config'), { recursive: true });
      await rm(sys.systemDir, { recursive: true });
      assert.deepEqual(loadRegistriesConf({ ...sys, env: { HOME: home } }).files, []);
    });
  });
});

describe('registry: credentials', () => {
  let dir: string;
  let env: NodeJS.ProcessEnv;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tiu-creds-'));
    env = { HOME: join(dir, 'home'), XDG_RUNTIME_DIR: join(dir, 'run') };
    await mkdir(join(dir, 'run/containers'), { recursive: true });
    await mkdir(join(dir, 'home/.config/containers'), { recursive: true });
    await mkdir(join(dir, 'home/.docker'), { recursive: true });
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  const b64 = (s: string) => Buffer.from(s).toString('base64');

  it('lists the auth files in the documented order', () => {
    assert.deepEqual(authFilePaths({ env }), [
      join(dir, 'run/containers/auth.json'),
      join(dir, 'home/.config/containers/auth.json'),
      join(dir, 'home/.docker/config.json'),
      join(dir, 'home/.dockercfg'),
    ]);
    assert.equal(authFilePaths({ env: { ...env, REGISTRY_AUTH_FILE: '/x/auth.json' } })[0], '/x/auth.json');
    assert.equal(authFilePaths({ env: { ...env, XDG_CONFIG_HOME: '/cfg' } })[1], '/cfg/containers/auth.json');
    assert.equal(authFilePaths({ env: { ...env, DOCKER_CONFIG: '/dk' } })[2], '/dk/config.json');
    assert.deepEqual(authFilePaths({ env, authFile: '/only.json' }), ['/only.json']);
  });

  it('takes the first file that knows the registry, the most specific key within it', async () => {
    await writeFile(join(dir, 'home/.config/containers/auth.json'), JSON.stringify({ auths: { 'r.example': { auth: b64('cfg:one') }, 'r.example/team': { auth: b64('team:two') } } }));
    await writeFile(join(dir, 'home/.docker/config.json'), JSON.stringify({ auths: { 'https://index.docker.io/v1/': { auth: b64('hub:three') }, 'r.example': { auth: b64('docker:four') } } }));
    await writeFile(join(dir, 'home/.dockercfg'), JSON.stringify({ 'https://legacy.example': { auth: b64('old:five'), email: 'x@y' } }));
    const r = await lookupCredentials('r.example', 'other/app', { env });
    assert.equal(r.credentials?.username, 'cfg');
    assert.equal(r.credentials?.source, join(dir, 'home/.config/containers/auth.json'));
    assert.equal((await lookupCredentials('r.example', 'team/app', { env })).credentials?.username, 'team');
    assert.equal((await lookupCredentials('docker.io', 'library/debian', { env })).credentials?.password, 'three');
    assert.equal((await lookupCredentials('legacy.example', 'a', { env })).credentials?.username, 'old');
    const none = await lookupCredentials('nobody.example', 'a', { env });
    assert.equal(none.credentials, undefined);
    assert.equal(none.consulted.length, 4);
    assert.equal((await lookupCredentials('r.example', 'a', { env, creds: 'u:p:with:colons' })).credentials?.password, 'p:with:colons');
  });

  it('says which file is broken, and never echoes secrets', async () => {
    await writeFile(join(dir, 'run/containers/auth.json'), '{"auths": {"r.example": {"auth": "' + b64('nocolon') + '"}}}');
    await assert.rejects(lookupCredentials('r.example', 'a', { env }), (e: unknown) => isTiuError(e, 'CONFIG_INVALID') && e.message.includes('auth.json') && !e.message.includes('nocolon'));
    await writeFile(join(dir, 'run/containers/auth.json'), '{not json');
    await assert.rejects(lookupCredentials('r.example', 'a', { env }), (e: unknown) => isTiuError(e, 'CONFIG_INVALID'));
    await rm(join(dir, 'run/containers/auth.json'));
    assert.throws(() => parseCredsOption('justuser'), (e: unknown) => isTiuError(e, 'CREDENTIALS_INVALID') && !e.message.includes('justuser'));
  });

  it('normalises docker-style keys', () => {
    assert.equal(normalizeAuthKey('https://index.docker.io/v1/'), 'docker.io');
    assert.equal(normalizeAuthKey('http://127.0.0.1:5000/'), '127.0.0.1:5000');
    assert.equal(normalizeAuthKey('quay.io/ns/repo'), 'quay.io/ns/repo');
  });
});
