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
import { copyFile, mkdir, mkdtemp, readdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { requireRoot } from '../helpers/env.ts';
import { baseOs, createMicroOS, MICROOS_SUBVOLUMES, type MicroOS, type OsFile } from '../helpers/microos.ts';
import { buildImage } from '../helpers/update-deps.ts';
import { run } from '../../src/host/exec.ts';
import {
  entryFiles,
  LOADER_DEFAULT,
  loaderDefaultOf,
  parseEntryName,
  selectedEntry,
} from '../../src/deploy/boot/entries.ts';
import { COMMIT_STEPS, deleteSnapshot } from '../../src/deploy/snapshot.ts';
import { openContext, readState, type Context } from '../../src/deploy/state.ts';
import { HEALTH_UD } from '../../src/deploy/health.ts';
import { COUNTER_RAN_OUT } from '../../src/deploy/boot/index.ts';
import { LOADER_GUID } from '../../src/host/esp.ts';
import { encodeLoaderVariable } from '../helpers/efivars.ts';

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
  const entries = async () =>
    (await readdir(join(esp, 'loader/entries')).catch(() => [] as string[])).filter((n) => n.endsWith('.conf')).sort();
  const entryOf = async (n: number) => (await entries()).find((e) => parseEntryName(e)?.snapshot === n);
  const kernels = async () => {
    const out: string[] = [];
    for (const d of await readdir(join(esp, 'tiu')).catch(() => [] as string[]))
      for (const f of await readdir(join(esp, 'tiu', d))) out.push(`tiu/${d}/${f}`);
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
        else
          out[r] = createHash('sha256')
            .update(await readFile(join(esp, r)))
            .digest('hex');
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

  /**
   * "Boot" snapshot n: its subvolume mounted as a second sysroot (what the kernel's
   * rootflags=subvol= mounts), with .snapshots, the MicroOS subvolumes and the ESP, so
   * `tiu health --boot --sysroot` runs as on that boot (booted = n).
   */
  const booted: string[] = [];
  const bootInto = async (n: number): Promise<string> => {
    const root = await mkdtemp(join(os.dir, `booted-${n}-`));
    booted.push(root);
    await run('mount', ['-o', `subvol=@/.snapshots/${n}/snapshot`, os.loop, root]);
    await run('mount', ['-o', 'subvol=@/.snapshots', os.loop, join(root, '.snapshots')]);
    for (const sv of MICROOS_SUBVOLUMES) await run('mount', ['-o', `subvol=@/${sv}`, os.loop, join(root, sv)]);
    await run('mount', ['--bind', esp, join(root, 'boot/efi')]);
    return root;
  };
  /** `tiu status --json` rows: [number, health, boot entry state, entry name]. */
  const statusRows = async () => {
    const st = await tiu(['status', '--sysroot', os.sysroot]);
    assert.equal(st.code, 0, st.stderr);
    return (
      st.json!.snapshots as { number: number; health?: string; bootEntry: { state: string; name: string } | null }[]
    ).map((s) => [s.number, s.health, s.bootEntry?.state, s.bootEntry?.name]);
  };

  before(async function () {
    requireRoot(this);
    os = await createMicroOS({
      sizeMiB: 500,
      files: [...(await baseOs()), ...kernelFiles(KV1), ...cmdline('quiet console=ttyS0\n')],
    });
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
    await writeFile(
      join(os.sysroot, 'etc/tiu/policy.json'),
      JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }),
    );
    await writeFile(join(os.sysroot, 'etc/tiu/tiu.conf'), 'default-hooks = false\nkernel-cmdline = "tiu.test=1"\n');
    layout = join(os.dir, 'images');
  });
  after(async () => {
    for (const r of booted) await run('umount', ['-R', r], { okExitCodes: [0, 1, 32] });
    if (esp) await run('umount', [esp], { okExitCodes: [0, 1, 32] });
    if (espLoop) await run('losetup', ['-d', espLoop], { okExitCodes: [0, 1] });
    await os?.teardown();
  });

  it('status names the integration before any update', async () => {
    const r = await tiu(['status', '--sysroot', os.sysroot]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((r.json!.boot as { integration: string }).integration, 'systemd-boot');
  });

  it("an update writes the new snapshot's entry with +3 and shared kernels; the loader default follows the commit", async () => {
    const r = await update(await image(await tree(KV1)));
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json!.snapshot, 2);
    assert.deepEqual(
      await entries(),
      ['tiu-1.conf', 'tiu-2+3.conf'],
      'the booted snapshot gets an entry too, without a counter',
    );
    assert.equal(loaderDefaultOf(await loaderConf()), LOADER_DEFAULT);
    assert.equal(await selected(), 'tiu-2+3.conf');
    const text = await readFile(join(esp, 'loader/entries/tiu-2+3.conf'), 'utf8');
    assert.match(
      text,
      new RegExp(
        `^options +root=UUID=${uuid} rootflags=subvol=@/\\.snapshots/2/snapshot quiet console=ttyS0 tiu\\.test=1$`,
        'm',
      ),
    );
    assert.doesNotMatch(text, /bogus/, "the image's root=/rootflags= are dropped");
    // Same kernel bytes in snapshots 1 and 2: one kernel and one initrd on the ESP.
    const k = await kernels();
    assert.equal(k.length, 2, k.join(' '));
    assert.ok(k.every((f) => f.startsWith(`tiu/${KV1}/`)));
    for (const f of entryFiles(text)) assert.ok(k.includes(f));
    const st = await tiu(['status', '--sysroot', os.sysroot]);
    const snaps = st.json!.snapshots as { number: number; bootEntry: { state: string; triesLeft?: number } | null }[];
    assert.deepEqual(
      snaps.map((s) => [s.number, s.bootEntry?.state, s.bootEntry?.triesLeft]),
      [
        [1, 'blessed', undefined],
        [2, 'counting', 3],
      ],
    );
  });

  it("a new kernel version gets its own files; boot-tries from the image's /etc/kernel/tries", async () => {
    const r = await update(
      await image(
        await tree(KV2, [
          { path: 'etc/kernel/tries', content: '5\n' },
          { path: 'usr/lib/tiu/etc/kernel/tries', content: '5\n' },
        ]),
      ),
    );
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
    assert.deepEqual(
      (await kernels()).filter((f) => f.startsWith(`tiu/${KV2}/`)),
      [],
      'the kernel only snapshot 3 used is gone',
    );
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
      assert.equal(
        await assertBootable(`after the run following ${step}`),
        after.default,
        'the loader boots the btrfs default',
      );
      const live = new Set(after.snapshots.map((s) => s.number));
      for (const e of await entries())
        assert.ok(live.has(parseEntryName(e)!.snapshot), `${e} belongs to an existing snapshot`);
      const used = new Set<string>();
      for (const e of await entries())
        for (const f of entryFiles(await readFile(join(esp, 'loader/entries', e), 'utf8'))) used.add(f);
      assert.deepEqual(await kernels(), [...used].sort(), 'no ESP file without an entry');
    });
  }

  it('a hostile image is refused with nothing written to the ESP: a kernel symlink to a host file, a cmdline with a newline', async () => {
    const secret = join(os.dir, 'host-secret');
    await writeFile(secret, 'host file, not a kernel\n');
    const cases: [string, OsFile[], string][] = [
      [
        'kernel symlink',
        [...(await baseOs()), { path: 'usr/lib/modules/6.9.0-evil/vmlinuz', symlink: secret }, ...cmdline('quiet\n')],
        'PATH_UNSAFE',
      ],
      ['cmdline newline', await tree('6.9.1-evil', [], { cmdline: 'quiet\ninitrd /EFI/evil\n' }), 'CMDLINE_INVALID'],
      ['cmdline control character', await tree('6.9.2-evil', [], { cmdline: 'quiet\u001b[2J\n' }), 'CMDLINE_INVALID'],
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
    const big: OsFile[] = [
      ...(await baseOs()),
      { path: 'usr/lib/modules/6.9.9-big/vmlinuz', content: randomBytes(9 * 1024 * 1024) },
      ...cmdline('quiet\n'),
    ];
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
    const row = (status.json!.snapshots as { number: number; health?: string; bootEntry: { state: string } }[]).find(
      (s) => s.number === n,
    )!;
    assert.equal(row.health, 'bad');
    assert.equal(row.bootEntry.state, 'bad');
    const human = await run(TIU, ['status', '--sysroot', os.sysroot]);
    assert.match(human.stdout, new RegExp(`snapshot ${n} is bad: ${COUNTER_RAN_OUT}`));
    assert.match(human.stdout, /boot integration: systemd-boot/);
    assert.ok((await stat(join(esp, 'loader/loader.conf'))).size > 0);
  });
  it('a good `tiu health --boot` verdict after one counted boot blesses the entry: tiu-N+2-1.conf -> tiu-N.conf', async () => {
    const r = await update(await image(await tree(KV2)));
    assert.equal(r.code, 0, r.stderr);
    const n = r.json!.snapshot as number;
    assert.equal(await entryOf(n), `tiu-${n}+3.conf`);
    // systemd-boot counted the boot that is running now (it renames before starting the kernel).
    await rename(join(esp, 'loader/entries', `tiu-${n}+3.conf`), join(esp, 'loader/entries', `tiu-${n}+2-1.conf`));
    assert.equal(await selected(), `tiu-${n}+2-1.conf`);
    const root = await bootInto(n);
    const h = await tiu(['health', '--boot', '--no-reboot', '--sysroot', root]);
    assert.equal(h.code, 0, h.stderr);
    assert.equal(h.json!.outcome, 'good');
    assert.equal(h.json!.snapshot, n);
    assert.equal(await entryOf(n), `tiu-${n}.conf`, 'blessed as systemd-bless-boot does: the counter is gone');
    assert.equal(await selected(), `tiu-${n}.conf`);
    assert.deepEqual(
      (await statusRows()).find((row) => row[0] === n),
      [n, 'good', 'blessed', `tiu-${n}.conf`],
    );
    await assertBootable('after the blessing');
  });

  it('a failing health check marks the entry bad (+0-1) before the reboot, so systemd-boot boots the previous snapshot', async () => {
    const prev = (await readState(ctx)).default!;
    assert.equal(await entryOf(prev), `tiu-${prev}.conf`, 'the previous snapshot is blessed (the test before)');
    const failing: OsFile = {
      path: 'usr/libexec/tiu/health.d/50-app',
      content: '#!/bin/sh\necho "app did not start" >&2\nexit 2\n',
      mode: 0o755,
    };
    const r = await update(await image(await tree(KV2, [failing])));
    assert.equal(r.code, 0, r.stderr);
    const m = r.json!.snapshot as number;
    await rename(join(esp, 'loader/entries', `tiu-${m}+3.conf`), join(esp, 'loader/entries', `tiu-${m}+2-1.conf`));
    const root = await bootInto(m);
    // The reboot is `systemctl reboot`: a stand-in records what is on the ESP at that moment.
    const bin = await mkdtemp(join(os.dir, 'bin-'));
    const seen = join(bin, 'entries-at-reboot');
    await writeFile(
      join(bin, 'systemctl'),
      `#!/bin/sh\n[ "$1" = reboot ] && ls '${join(esp, 'loader/entries')}' > '${seen}'\n`,
      { mode: 0o755 },
    );
    // And when the btrfs default moves back: the entry is bad already (were set-default to fail, the loader still leaves m).
    const seenAtDefault = join(bin, 'entries-at-set-default');
    const realBtrfs = (await run('sh', ['-c', 'command -v btrfs'])).stdout.trim();
    await writeFile(
      join(bin, 'btrfs'),
      `#!/bin/sh\n[ "$2" = set-default ] && ls '${join(esp, 'loader/entries')}' > '${seenAtDefault}'\nexec '${realBtrfs}' "$@"\n`,
      { mode: 0o755 },
    );
    const h = await tiu(['health', '--boot', '--sysroot', root], { PATH: `${bin}:${process.env.PATH ?? ''}` });
    assert.equal(h.code, 1, h.stderr);
    assert.equal(h.json!.outcome, 'rolled-back');
    assert.equal(h.json!.rollbackTo, prev);
    assert.equal(h.json!.rebooting, true);
    const atReboot = (await readFile(seen, 'utf8')).split('\n').filter((x) => x.endsWith('.conf'));
    const mAtReboot = atReboot.find((x) => parseEntryName(x)?.snapshot === m);
    assert.ok(
      mAtReboot && parseEntryName(mAtReboot)!.triesLeft === 0,
      `snapshot ${m}'s entry has no tries left at the reboot: ${atReboot.join(' ')}`,
    );
    assert.equal(
      selectedEntry(atReboot, loaderDefaultOf(await loaderConf())),
      `tiu-${prev}.conf`,
      "systemd-boot 252's choice at the reboot is the previous snapshot",
    );
    const atDefault = (await readFile(seenAtDefault, 'utf8')).split('\n').filter((x) => x.endsWith('.conf'));
    assert.ok(
      atDefault.includes(`tiu-${m}+0-1.conf`),
      `marked bad before the btrfs default moved: ${atDefault.join(' ')}`,
    );
    const st = await readState(ctx);
    assert.equal(st.default, prev);
    assert.equal(await entryOf(m), `tiuparked-${m}+0-1.conf`);
    assert.equal(await selected(), `tiu-${prev}.conf`);
    const rows = await statusRows();
    assert.deepEqual(
      rows.find((row) => row[0] === m),
      [m, 'bad', 'bad', `tiuparked-${m}+0-1.conf`],
    );
    assert.deepEqual(
      rows.find((row) => row[0] === prev),
      [prev, 'good', 'blessed', `tiu-${prev}.conf`],
    );
    assert.equal(st.snapshots.find((s) => s.number === m)!.userdata[HEALTH_UD.failed], '50-app');
  });

  it('a LoaderEntryDefault (bootctl set-default) naming an older entry is removed at the commit, or the loader would stay there', async () => {
    const vars = await mkdtemp(join(os.dir, 'efivars-'));
    const variable = join(vars, `LoaderEntryDefault-${LOADER_GUID}`);
    const env = { TIU_TEST_EFIVARS: vars };
    const def = (await readState(ctx)).default!;
    await writeFile(variable, encodeLoaderVariable(`tiu-${def}.conf`));
    const before = await tiu(['status', '--sysroot', os.sysroot], env);
    assert.equal((before.json!.boot as { efiEntryDefault?: string }).efiEntryDefault, `tiu-${def}.conf`);
    const r = await update(await image(await tree(KV1)), env);
    assert.equal(r.code, 0, r.stderr);
    const n = r.json!.snapshot as number;
    assert.ok(!existsSync(variable), 'the variable is gone');
    const after = await tiu(['status', '--sysroot', os.sysroot], env);
    const boot = after.json!.boot as { efiEntryDefault?: string; selected?: string };
    assert.equal(boot.efiEntryDefault, undefined);
    assert.equal(boot.selected, `tiu-${n}+3.conf`, 'systemd-boot boots the commit');
    // `tiu-*` itself is tiu's pattern: kept.
    await writeFile(variable, encodeLoaderVariable('tiu-*'));
    const again = await update(await image(await tree(KV2)), env);
    assert.equal(again.code, 0, again.stderr);
    assert.ok(existsSync(variable));
  });
});
