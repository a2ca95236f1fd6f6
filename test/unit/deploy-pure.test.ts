import assert from 'node:assert/strict';
import { isTiuError } from '../../src/errors.ts';
import { DEFAULT_HOOKS, parseConfig } from '../../src/deploy/config.ts';
import { kernelFacts, planHooks, type KernelFacts } from '../../src/deploy/hooks.ts';
import { mkdir, mkdtemp, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deriveState, snapshotNumberOf } from '../../src/deploy/state.ts';
import { formatUserdata } from '../../src/host/snapper.ts';
import { parseMountInfo } from '../../src/host/mount.ts';
import type { SnapperSnapshot } from '../../src/host/snapper.ts';
import { cacheTag } from '../../src/deploy/update/settle.ts';

const row = (number: number, userdata: Record<string, string> = {}): SnapperSnapshot => ({
  number,
  type: 'single',
  default: false,
  active: false,
  date: '',
  description: `s${number}`,
  cleanup: 'number',
  userdata,
});

describe('deploy/config', () => {
  it('defaults without a file', () => {
    const c = parseConfig('');
    assert.equal(c.image, undefined);
    assert.equal(c.policy, undefined);
    assert.equal(c.cache, '/var/cache/tiu');
    assert.deepEqual(c.hooks, DEFAULT_HOOKS);
  });
  it('reads image, paths and extra hooks after the defaults', () => {
    const c = parseConfig(
      `image = "docker://r.example/os:1"\npolicy = "/etc/tiu/policy.json"\ncache = "/var/lib/tiu"\n[[hook]]\nname = "ca"\ncommand = ["update-ca-certificates", "--fresh"]\nwhen = "always"\nif-exists = "/usr/sbin/update-ca-certificates"\n`,
    );
    assert.equal(c.image, 'docker://r.example/os:1');
    assert.equal(c.cache, '/var/lib/tiu');
    assert.deepEqual(c.hooks.at(-1), {
      name: 'ca',
      command: ['update-ca-certificates', '--fresh'],
      when: 'always',
      ifExists: '/usr/sbin/update-ca-certificates',
    });
    assert.equal(c.hooks.length, DEFAULT_HOOKS.length + 1);
    assert.equal(parseConfig('default-hooks = false').hooks.length, 0);
  });
  it('require-signature-expiry: off by default, on when true', () => {
    assert.equal(parseConfig('').requireSignatureExpiry, undefined);
    assert.equal(parseConfig('require-signature-expiry = false').requireSignatureExpiry, undefined);
    assert.equal(parseConfig('require-signature-expiry = true').requireSignatureExpiry, true);
  });
  for (const [text, what] of [
    ['require-signature-expiry = "yes"', "'require-signature-expiry' must be true or false"],
    ['image = ', 'not valid TOML'],
    ['imagee = "x"', "unknown key 'imagee'"],
    ['cache = "relative"', 'absolute'],
    ['[[hook]]\ncommand = []', 'non-empty array'],
    ['[[hook]]\ncommand = ["x"]\nwhen = "sometimes"', "'when'"],
    ['default-hooks = "yes"', 'true or false'],
  ] as const) {
    it(`refuses ${JSON.stringify(text)} with CONFIG_INVALID`, () => {
      assert.throws(
        () => parseConfig(text, '/etc/tiu/tiu.conf'),
        (e: unknown) =>
          isTiuError(e, 'CONFIG_INVALID') && e.message.includes(what) && e.message.startsWith('/etc/tiu/tiu.conf'),
      );
    });
  }
});

describe('deploy/hooks planHooks', () => {
  const facts = (f: Partial<KernelFacts>): KernelFacts => ({
    kernels: ['6.1.0'],
    changed: [],
    withoutInitrd: [],
    ...f,
  });
  const all = () => true;
  it('no kernel change: only the always-hooks (sdbootutil with the snapshot number)', () => {
    assert.deepEqual(planHooks(DEFAULT_HOOKS, facts({}), 7, all), [
      { name: 'sdbootutil', argv: ['sdbootutil', 'add-all-kernels', '7'] },
    ]);
  });
  it('a new kernel with its initrd in the image: bootloader only, no dracut', () => {
    const p = planHooks(DEFAULT_HOOKS, facts({ kernels: ['6.2.0'], changed: ['6.2.0'] }), 3, all);
    assert.deepEqual(
      p.map((h) => h.name),
      ['grub2-mkconfig', 'sdbootutil'],
    );
  });
  it('a new kernel without an initrd: dracut for that version', () => {
    const p = planHooks(
      DEFAULT_HOOKS,
      facts({ kernels: ['6.1.0', '6.2.0'], changed: ['6.2.0'], withoutInitrd: ['6.1.0', '6.2.0'] }),
      3,
      all,
    );
    assert.deepEqual(p[0], {
      name: 'initrd 6.2.0',
      argv: ['dracut', '--force', '--kver', '6.2.0', '/usr/lib/modules/6.2.0/initrd'],
    });
    assert.deepEqual(
      p.map((h) => h.name),
      ['initrd 6.2.0', 'grub2-mkconfig', 'sdbootutil'],
      'update-initramfs is skipped where dracut is',
    );
  });
  it('a Debian tree without dracut: update-initramfs -c -k for the new kernel', () => {
    const p = planHooks(
      DEFAULT_HOOKS,
      facts({ kernels: ['6.1.0-13-amd64'], changed: ['6.1.0-13-amd64'], withoutInitrd: ['6.1.0-13-amd64'] }),
      3,
      (x) => x === '/usr/sbin/update-initramfs',
    );
    assert.deepEqual(p, [
      { name: 'update-initramfs 6.1.0-13-amd64', argv: ['update-initramfs', '-c', '-k', '6.1.0-13-amd64'] },
    ]);
  });
  it('skips hooks whose program the new tree lacks', () => {
    const p = planHooks(
      DEFAULT_HOOKS,
      facts({ changed: ['6.1.0'], withoutInitrd: ['6.1.0'] }),
      3,
      (p) => p === '/usr/sbin/grub2-mkconfig',
    );
    assert.deepEqual(
      p.map((h) => h.name),
      ['grub2-mkconfig'],
    );
  });
});

describe('deploy/state deriveState', () => {
  it('marks booted/default, staged and the rollback target from userdata', () => {
    const s = deriveState(
      '/',
      [
        row(1),
        row(2, { 'tiu-image': 'docker://r/os:2', 'tiu-digest': 'sha256:b' }),
        row(3, { 'tiu-in-progress': 'yes' }),
      ],
      1,
      2,
    );
    assert.equal(s.staged, 2);
    assert.equal(s.rollback, 1);
    assert.equal(s.snapshots[1]?.image, 'docker://r/os:2');
    assert.equal(s.snapshots[2]?.inProgress, true);
  });
  it('without a staged update, rolls back to the newest finished snapshot before the default', () => {
    const s = deriveState('/', [row(1), row(4), row(5, { 'tiu-in-progress': 'yes' }), row(6)], 6, 6);
    assert.equal(s.staged, undefined);
    assert.equal(s.rollback, 4);
    assert.equal(deriveState('/', [row(1)], 1, 1).rollback, undefined);
  });
  it('rollback skips snapshots the health check marked bad and prefers good ones', () => {
    const s = deriveState(
      '/',
      [row(1, { 'tiu-health': 'good' }), row(2), row(3, { 'tiu-health': 'bad' }), row(4)],
      4,
      4,
    );
    assert.equal(s.rollback, 1);
    assert.equal(deriveState('/', [row(1), row(2), row(3, { 'tiu-health': 'bad' }), row(4)], 4, 4).rollback, 2);
  });
  it('snapshot numbers from subvolume paths', () => {
    assert.equal(snapshotNumberOf('@/.snapshots/12/snapshot'), 12);
    assert.equal(snapshotNumberOf('/@/.snapshots/1/snapshot'), 1);
    assert.equal(snapshotNumberOf('@'), undefined);
    assert.equal(snapshotNumberOf('@/.snapshots/1/snapshot/etc'), undefined);
  });
});

describe('host helpers (pure)', () => {
  it('formats snapper userdata and refuses separators in values', () => {
    assert.equal(formatUserdata({ a: '1', 'tiu-digest': 'sha256:x', gone: '' }), 'a=1,tiu-digest=sha256:x,gone=');
    assert.throws(
      () => formatUserdata({ a: 'x,y' }),
      (e: unknown) => isTiuError(e, 'SNAPPER_FAILED'),
    );
    assert.throws(
      () => formatUserdata({ 'a b': 'x' }),
      (e: unknown) => isTiuError(e, 'SNAPPER_FAILED'),
    );
  });
  it('parses mountinfo with escapes', () => {
    const m = parseMountInfo(
      '36 35 0:30 /@/.snapshots/1/snapshot /mnt/my\\040root rw,relatime shared:1 - btrfs /dev/loop0 rw,subvol=/@/.snapshots/1/snapshot\n',
    );
    assert.equal(m[0]?.mountPoint, '/mnt/my root');
    assert.equal(m[0]?.root, '/@/.snapshots/1/snapshot');
    assert.equal(m[0]?.fsType, 'btrfs');
  });
  it('cache tags are valid OCI tags, stable per reference', () => {
    assert.match(cacheTag('docker://r.example/os:1'), /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/);
    assert.equal(cacheTag('a'), cacheTag('a'));
    assert.notEqual(cacheTag('a'), cacheTag('b'));
  });
});

describe('deploy/hooks kernelFacts (on directories)', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tiu-kfacts-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  const tree = async (name: string, kernels: Record<string, { vmlinuz: string; initrd?: boolean }>) => {
    const root = join(dir, name);
    for (const [v, k] of Object.entries(kernels)) {
      await mkdir(join(root, 'usr/lib/modules', v), { recursive: true });
      await writeFile(join(root, 'usr/lib/modules', v, 'vmlinuz'), k.vmlinuz);
      await utimes(join(root, 'usr/lib/modules', v, 'vmlinuz'), 1_700_000_000, 1_700_000_000);
      if (k.initrd) await writeFile(join(root, 'usr/lib/modules', v, 'initrd'), 'i');
    }
    await mkdir(root, { recursive: true });
    return root;
  };
  it('same kernel: nothing changed', async () => {
    const a = await tree('a', { '6.1': { vmlinuz: 'k' } });
    const b = await tree('b', { '6.1': { vmlinuz: 'k' } });
    assert.deepEqual(await kernelFacts(a, b), { kernels: ['6.1'], changed: [], withoutInitrd: ['6.1'] });
  });
  it('a new version with its initrd, an old one gone', async () => {
    const a = await tree('c', { '6.1': { vmlinuz: 'k' } });
    const b = await tree('d', { '6.2': { vmlinuz: 'k2', initrd: true } });
    assert.deepEqual(await kernelFacts(a, b), { kernels: ['6.2'], changed: ['6.2', '6.1'], withoutInitrd: [] });
  });
  it('the same version rebuilt (different size) counts as changed; no modules dir is no kernel', async () => {
    const a = await tree('e', { '6.1': { vmlinuz: 'k' } });
    const b = await tree('f', { '6.1': { vmlinuz: 'kk' } });
    assert.deepEqual((await kernelFacts(a, b)).changed, ['6.1']);
    const none = await tree('g', {});
    assert.deepEqual(await kernelFacts(none, none), { kernels: [], changed: [], withoutInitrd: [] });
  });
  it('reads the tree without following links out of it: a symlinked modules dir or kernel is no kernel', async () => {
    const host = await tree('host', { '6.9': { vmlinuz: 'host kernel', initrd: true } });
    const linkedDir = await tree('h', {});
    await mkdir(join(linkedDir, 'usr/lib'), { recursive: true });
    await symlink(join(host, 'usr/lib/modules'), join(linkedDir, 'usr/lib/modules'));
    const linkedKernel = await tree('i', {});
    await mkdir(join(linkedKernel, 'usr/lib/modules/6.9'), { recursive: true });
    await symlink(join(host, 'usr/lib/modules/6.9/vmlinuz'), join(linkedKernel, 'usr/lib/modules/6.9/vmlinuz'));
    const none = await tree('j', {});
    assert.deepEqual(await kernelFacts(none, linkedDir), { kernels: [], changed: [], withoutInitrd: [] });
    assert.deepEqual(await kernelFacts(none, linkedKernel), { kernels: [], changed: [], withoutInitrd: [] });
  });
});
