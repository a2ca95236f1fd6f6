/**
 * The systemd-boot bookkeeping on the ESP (issue 14), no VM: a MicroOS btrfs (loop device, real
 * snapper) with a vfat ESP on a second loop device mounted at the sysroot's boot/efi, systemd-boot
 * "installed" (Debian's systemd-bootx64.efi when the package is there, else any bytes). Trees
 * carry usr/lib/modules/<kver>/{vmlinuz,initrd}. The real CLI runs every step; what the loader
 * would boot is computed with systemd-boot 252's rules (selectedEntry in src/deploy/boot/entries.ts).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { requireRoot } from '../helpers/env.ts';
import { baseOs, createMicroOS, type MicroOS, type OsFile } from '../helpers/microos.ts';
import { buildImage } from '../helpers/update-deps.ts';
import { run } from '../../src/host/exec.ts';
import { entryFiles, LOADER_DEFAULT, loaderDefaultOf, parseEntryName, selectedEntry } from '../../src/deploy/boot/entries.ts';
import { COMMIT_STEPS, deleteSnapshot } from '../../src/deploy/snapshot.ts';
import { openContext, readState, type Context } from '../../src/deploy/state.ts';
import { HEALTH_UD } from '../../src/deploy/health.ts';
import { COUNTER_RAN_OUT } from '../../src/deploy/boot/index.ts';

const TIU = new URL('../../bin/tiu', import.meta.url).pathname;
const SDBOOT = '/usr/lib/systemd/boot/efi/systemd-bootx64.efi';
const KV1 = '6.1.0-tiu1';
const KV2 = '6.2.0-tiu2';

interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  json: Record<string, unknown> | undefined;
  stderr: string;
}

function tiu(args: string[], env: Record<string, string> = {}): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const p = spawn(TIU, [...args, '--json'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('error', reject);
    p.on('close', (code, signal) => {
      let json: Record<string, unknown> | undefined;
      try {
        json = JSON.parse(out) as Record<string, unknown>;
      } catch {
        json = undefined;
      }
      resolve({ code, signal, json, stderr: err });
    });
  });
}
const errorCode = (r: Ran) => (r.json?.error as { code?: string } | undefined)?.code;

/** Deterministic fake kernel/initrd bytes per kernel version. */
const blob = (seed: string, size: number) => {
  const out = Buffer.alloc(size);
  for (let off = 0, i = 0; off < size; i++) off += createHash('sha256').update(`${seed}:${i}`).digest().copy(out, off);
  return out;
};
const kernelFiles = (kver: string, o: { initrd?: boolean } = {}): OsFile[] => [
  { path: `usr/lib/modules/${kver}/vmlinuz`, content: blob(`k-${kver}`, 300 * 1024) },
  ...(o.initrd === false ? [] : [{ path: `usr/lib/modules/${kver}/initrd`, content: blob(`i-${kver}`, 500 * 1024) }]),
];
const cmdline = (text: string): OsFile[] => [
  { path: 'etc/kernel/cmdline', content: text },
  { path: 'usr/lib/tiu/etc/kernel/cmdline', content: text },
];

describe('systemd-boot entries on the ESP (update, rollback, deletion, crashes, hostile images, health)', function () {
  this.timeout(300_000);
  let os: MicroOS;
  let ctx: Context;
  let esp: string;
  let espLoop = '';
  let layout: string;
  let uuid: string;
  let tagN = 0;

  const image = async (files: OsFile[]): Promise<string> => {
    const tag = `t${++tagN}`;
    await buildImage(layout, tag, files);
    return `oci:${layout}:${tag}`;
  };
  const tree = async (kver: string, extra: OsFile[] = [], o: { cmdline?: string; initrd?: boolean } = {}) => [
    ...(await baseOs()),
    ...kernelFiles(kver, o),
    ...cmdline(o.cmdline ?? 'quiet console=ttyS0 root=/dev/bogus rootflags=bogus\n'),
    { path: 'usr/share/fake/serial', content: `${tagN}\n` },
    ...extra,
  ];
  const update = (ref: string, env: Record<string, string> = {}) => tiu(['update', ref, '--sysroot', os.sysroot], env);
  const entries = async () => (await readdir(join(esp, 'loader/entries')).catch(() => [] as string[])).filter((n) => n.endsWith('.conf')).sort();
  const entryOf = async (n: number) => (await entries()).find((e) => parseEntryName(e)?.snapshot === n);
  const kernels = async () => {
    const out: string[] = [];
    for (const d of await readdir(join(esp, 'tiu')).catch(() => [] as string[])) for (const f of await readdir(join(esp, 'tiu', d))) out.push(`tiu/${d}/${f}`);
    return out.sort();
  };
  const loaderConf = async () => readFile(join(esp, 'loader/loader.conf'), 'utf8').catch(() => undefined);
  const selected = async () => selectedEntry(await entries(), loaderDefaultOf(await loaderConf()));
  /** Every file below the ESP with its hash: "nothing written" is this unchanged. */
  const espHash = async () => {
    const out: Record<string, string> = {};
    const walk = async (rel: string) => {
      for (const d of await readdir(join(esp, rel), { withFileTypes: true })) {
        const r = rel ? `${rel}/${d.name}` : d.name;
        if (d.isDirectory()) await walk(r);
        else out[r] = createHash('sha256').update(await readFile(join(esp, r))).digest('hex');
      }
    };
    await walk('');
    return out;
  };
  /** The loader's choice exists, names files that exist and a finished snapshot that exists. */
  const assertBootable = async (label: string) => {
    const sel = await selected();
    assert.ok(sel, `${label}: systemd-boot would find an entry`);
    const n = parseEntryName(sel)!.snapshot;
    const text = await readFile(join(esp, 'loader/entries', sel), 'utf8');
    for (const f of entryFiles(text)) assert.ok(existsSync(join(esp, f)), `${label}: ${sel} names ${f}, which exists`);
    assert.ok(existsSync(os.snapshotPath(n)), `${label}: snapshot ${n} of ${sel} exists`);
    const s = (await readState(ctx)).snapshots.find((x) => x.number === n);
    // Committed: finished, or the btrfs default whose in-progress mark the next run clears.
    assert.ok(s && (!s.inProgress || s.default), `${label}: snapshot ${n} is committed`);
    assert.match(text, new RegExp(`rootflags=subvol=@/\\.snapshots/${n}/snapshot`));
    return n;
  };

  before(async function () {
    requireRoot(this);
    os = await createMicroOS({ sizeMiB: 500, files: [...(await baseOs()), ...kernelFiles(KV1), ...cmdline('quiet console=ttyS0\n')] });
    ctx = await openContext(os.sysroot);
    uuid = (await run('btrfs', ['filesystem', 'show', os.sysroot])).stdout.match(/uuid:\s*(\S+)/)![1]!;
    const img = join(os.dir, 'esp.img');
    await run('truncate', ['-s', '8M', img]);
    espLoop = (await run('losetup', ['-f', '--show', img])).stdout.trim();
    // The ESP is vfat where the kernel has it; a kernel without vfat (some CI sandboxes) gets
    // an ext4 stand-in, said on the console: tiu's bookkeeping does not depend on the type.
    const vfat = /\svfat$/m.test(await readFile('/proc/filesystems', 'utf8'));
    if (vfat) await run('mkfs.vfat', ['-n', 'ESP', espLoop]);
    else {
      console.warn('      note: this kernel has no vfat; the ESP is ext4 here');
      await run('mkfs.ext4', ['-q', '-O', '^has_journal', espLoop]);
    }
    esp = join(os.sysroot, 'boot/efi');
    await run('mount', ['-t', vfat ? 'vfat' : 'ext4', espLoop, esp]);
    await mkdir(join(esp, 'EFI/systemd'), { recursive: true });
    if (existsSync(SDBOOT)) await copyFile(SDBOOT, join(esp, 'EFI/systemd/systemd-bootx64.efi'));
    else await writeFile(join(esp, 'EFI/systemd/systemd-bootx64.efi'), 'not really systemd-boot');
    await mkdir(join(os.sysroot, 'etc/tiu'), { recursive: true });
    await writeFile(join(os.sysroot, 'etc/tiu/policy.json'), JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
    await writeFile(join(os.sysroot, 'etc/tiu/tiu.conf'), 'default-hooks = false\nkernel-cmdline = "tiu.test=1"\n');
    layout = join(os.dir, 'images');
  });
  after(async () => {
    if (esp) await run('umount', [esp], { okExitCodes: [0, 1, 32] });
    if (espLoop) await run('losetup', ['-d', espLoop], { okExitCodes: [0, 1] });
    await os?.teardown();
  });

  it('status names the integration before any update', async () => {
    const r = await tiu(['status', '--sysroot', os.sysroot]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((r.json!.boot as { integration: string }).integration, 'systemd-boot');
  });

  it('an update writes the new snapshot\'s entry with +3 and shared kernels; the loader default follows the commit', async () => {
    const r = await update(await image(await tree(KV1)));
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json!.snapshot, 2);
    assert.deepEqual(await entries(), ['tiu-1.conf', 'tiu-2+3.conf'], 'the booted snapshot gets an entry too, without a counter');
    assert.equal(loaderDefaultOf(await loaderConf()), LOADER_DEFAULT);
    assert.equal(await selected(), 'tiu-2+3.conf');
    const text = await readFile(join(esp, 'loader/entries/tiu-2+3.conf'), 'utf8');
    assert.match(text, new RegExp(`^options +root=UUID=${uuid} rootflags=subvol=@/\\.snapshots/2/snapshot quiet console=ttyS0 tiu\\.test=1$`, 'm'));
    assert.doesNotMatch(text, /bogus/, "the image's root=/rootflags= are dropped");
    // Same kernel bytes in snapshots 1 and 2: one kernel and one initrd on the ESP.
    const k = await kernels();
    assert.equal(k.length, 2, k.join(' '));
    assert.ok(k.every((f) => f.startsWith(`tiu/${KV1}/`)));
    for (const f of entryFiles(text)) assert.ok(k.includes(f));
    const st = await tiu(['status', '--sysroot', os.sysroot]);
    const snaps = st.json!.snapshots as { number: number; bootEntry: { state: string; triesLeft?: number } | null }[];
    assert.deepEqual(snaps.map((s) => [s.number, s.bootEntry?.state, s.bootEntry?.triesLeft]), [[1, 'blessed', undefined], [2, 'counting', 3]]);
  });

  it('a new kernel version gets its own files; boot-tries from the image\'s /etc/kernel/tries', async () => {
    const r = await update(await image(await tree(KV2, [{ path: 'etc/kernel/tries', content: '5\n' }, { path: 'usr/lib/tiu/etc/kernel/tries', content: '5\n' }])));
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json!.snapshot, 3);
    assert.deepEqual(await entries(), ['tiu-1.conf', 'tiu-2+3.conf', 'tiu-3+5.conf']);
    assert.equal(await selected(), 'tiu-3+5.conf');
    assert.equal((await kernels()).filter((f) => f.startsWith(`tiu/${KV2}/`)).length, 2);
  });

  it('tiu rollback parks the newer entry and the loader default follows; deleting the snapshot removes its entry and unused kernel', async () => {
    const r = await tiu(['rollback', '2', '--sysroot', os.sysroot]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await readState(ctx)).default, 2);
    assert.equal(await selected(), 'tiu-2+3.conf');
    assert.equal(await entryOf(3), 'tiuparked-3+5.conf');
    await deleteSnapshot(ctx, 3);
    // Deleted behind the ESP's back (as snapper's number cleanup does): the next health (or update) run reconciles.
    const h = await tiu(['health', '--boot', '--no-reboot', '--sysroot', os.sysroot]);
    assert.equal(h.code, 0, h.stderr);
    assert.equal(await entryOf(3), undefined);
    assert.deepEqual((await kernels()).filter((f) => f.startsWith(`tiu/${KV2}/`)), [], 'the kernel only snapshot 3 used is gone');
    assert.ok(!existsSync(join(esp, 'tiu', KV2)), 'and its directory');
    await assertBootable('after deletion');
  });

  for (const step of COMMIT_STEPS) {
    it(`a crash after commit step '${step}' leaves a bootable default, and the next run reconciles`, async () => {
      const before = (await readState(ctx)).default!;
      const ref = await image(await tree(KV2));
      const r = await update(ref, { TIU_TEST_CRASH_AFTER: step });
      assert.equal(r.signal, 'SIGKILL', `killed after ${step}: ${r.stderr}`);
      const booting = await assertBootable(`crash after ${step}`);
      const committed = step === 'btrfs-default' || step === 'loader-default';
      const st = await readState(ctx);
      if (!committed) {
        assert.equal(st.default, before);
        assert.equal(booting, before, 'the old default boots');
      } else {
        assert.notEqual(st.default, before, 'the btrfs default moved');
        assert.equal(booting, step === 'loader-default' ? st.default : before);
      }
      // The next run: cleanup + reconcile, then the update (again, or already present).
      const again = await update(ref);
      assert.equal(again.code, 0, again.stderr);
      const after = await readState(ctx);
      assert.equal(await assertBootable(`after the run following ${step}`), after.default, 'the loader boots the btrfs default');
      const live = new Set(after.snapshots.map((s) => s.number));
      for (const e of await entries()) assert.ok(live.has(parseEntryName(e)!.snapshot), `${e} belongs to an existing snapshot`);
      const used = new Set<string>();
      for (const e of await entries()) for (const f of entryFiles(await readFile(join(esp, 'loader/entries', e), 'utf8'))) used.add(f);
      assert.deepEqual(await kernels(), [...used].sort(), 'no ESP file without an entry');
    });
  }

  it('a hostile image is refused with nothing written to the ESP: a kernel symlink to a host file, a cmdline with a newline', async () => {
    const secret = join(os.dir, 'host-secret');
    await writeFile(secret, 'host file, not a kernel\n');
    const cases: [string, OsFile[], string][] = [
      ['kernel symlink', [...(await baseOs()), { path: 'usr/lib/modules/6.9.0-evil/vmlinuz', symlink: secret }, ...cmdline('quiet\n')], 'UNSAFE_PATH'],
      ['cmdline newline', await tree('6.9.1-evil', [], { cmdline: 'quiet\ninitrd /EFI/evil\n' }), 'BAD_CMDLINE'],
      ['cmdline control character', await tree('6.9.2-evil', [], { cmdline: 'quiet\u001b[2J\n' }), 'BAD_CMDLINE'],
    ];
    for (const [label, files, code] of cases) {
      const def = (await readState(ctx)).default;
      const hash = await espHash();
      const r = await update(await image(files));
      assert.equal(r.code, 1, `${label}: ${r.stderr}`);
      assert.equal(errorCode(r), code, label);
      assert.deepEqual(await espHash(), hash, `${label}: the ESP is unchanged`);
      assert.equal((await readState(ctx)).default, def);
      assert.ok(!(await readdir(join(esp, 'tiu'))).some((d) => d.includes('evil')), label);
    }
  });

  it('an image whose kernel does not fit on the ESP: ESP_FULL before the commit, the default unchanged', async () => {
    const def = (await readState(ctx)).default;
    const big: OsFile[] = [...(await baseOs()), { path: 'usr/lib/modules/6.9.9-big/vmlinuz', content: randomBytes(9 * 1024 * 1024) }, ...cmdline('quiet\n')];
    const r = await update(await image(big));
    assert.equal(r.code, 1, r.stderr);
    assert.equal(errorCode(r), 'ESP_FULL');
    assert.equal((await readState(ctx)).default, def);
    assert.ok(!existsSync(join(esp, 'tiu/6.9.9-big')));
    await assertBootable('after ESP_FULL');
  });

  it('health after a boot counter ran out (+0-3): the failed snapshot is marked bad, both defaults go back to the booted one', async () => {
    const r = await update(await image(await tree(KV2)));
    assert.equal(r.code, 0, r.stderr);
    const n = r.json!.snapshot as number;
    const name = (await entryOf(n))!;
    assert.match(name, /^tiu-\d+\+3\.conf$/);
    // systemd-boot counted three boots that never reached userspace, then booted snapshot 1 (what runs here).
    await rename(join(esp, 'loader/entries', name), join(esp, 'loader/entries', `tiu-${n}+0-3.conf`));
    assert.notEqual(parseEntryName((await selected())!)!.snapshot, n, 'the loader skips the entry without tries');
    const h = await tiu(['health', '--boot', '--no-reboot', '--sysroot', os.sysroot]);
    assert.equal(h.code, 0, h.stderr);
    assert.equal((h.json!.boot as { failed?: number }).failed, n);
    const st = await readState(ctx);
    assert.equal(st.default, 1, 'the btrfs default is the booted snapshot again');
    assert.equal(parseEntryName((await selected())!)!.snapshot, 1, 'so is the loader default');
    const snap = st.snapshots.find((s) => s.number === n)!;
    assert.equal(snap.userdata[HEALTH_UD.health], 'bad');
    assert.equal(snap.userdata[HEALTH_UD.failed], COUNTER_RAN_OUT);
    assert.equal(await entryOf(n), `tiuparked-${n}+0-3.conf`);
    const status = await tiu(['status', '--sysroot', os.sysroot]);
    const row = (status.json!.snapshots as { number: number; health?: string; bootEntry: { state: string } }[]).find((s) => s.number === n)!;
    assert.equal(row.health, 'bad');
    assert.equal(row.bootEntry.state, 'bad');
    const human = await run(TIU, ['status', '--sysroot', os.sysroot]);
    assert.match(human.stdout, new RegExp(`snapshot ${n} is bad: ${COUNTER_RAN_OUT}`));
    assert.match(human.stdout, /boot integration: systemd-boot/);
    assert.ok((await stat(join(esp, 'loader/loader.conf'))).size > 0);
  });
});
