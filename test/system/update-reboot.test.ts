/**
 * The device's life in a VM: the USB-stick case, end to end, with real reboots.
 *
 * On the host, `tiu build` turns modified copies of the VM's own tree into bundles (v2 good, v3
 * with a failing health check, v4 good), `tiu sign` signs them, and they go into one OCI
 * layout on an ext4 disk image the VM sees as a second virtio disk. The VM trusts the key
 * through /etc/tiu/policy.json. Each boot is one qemu process (-no-reboot): a reboot inside
 * the VM ends it, and the test boots the next one and reads what came up.
 *
 *   1. `tiu update oci:/run/media/usb/os:v2 --reboot`: v2 boots, is marked good
 *   2. v3's health check fails: tiu rolls back and reboots by itself, v2 comes up, v3 is bad
 *   3. the VM is killed in the middle of applying v4: it boots v2, the next update gets v4
 *   4. the unattended path: tiu-update.service pulls the `image` of /etc/tiu/tiu.conf from a real
 *      registry on the host over qemu user networking (10.0.2.2 in the guest); unsigned, it is
 *      refused with nothing written; signed, v5 boots and is marked good
 *
 * The VM boots as Vm.create chooses (test/helpers/vm.ts): through OVMF and systemd-boot on the
 * disk's ESP, the entries tiu writes (or with qemu -kernel when TIU_VM_BOOT=kernel).
 *
 * The scenarios build on each other like one device's history (each boot under TCG is
 * expensive; CI time is shared). A failing test keeps the consoles of every boot.
 */
import { strict as assert } from 'node:assert';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile, mkdir, readFile, chmod } from 'node:fs/promises';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { requireRoot } from '../helpers/env.ts';
import { Vm, VmExitedError, type RunResult } from '../helpers/vm.ts';
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts';

const execFileP = promisify(execFile);
const repo = join(dirname(fileURLToPath(import.meta.url)), '../..');
const tiuBin = join(repo, 'bin/tiu');
const PASS = 'vm-test-passphrase';
const IDENTITY = 'tiu.test/os';
const USB = '/run/media/usb';

interface Version {
  tag: string;
  versionId: string;
  /** A health check that fails, shipped in the image. */
  unhealthy?: boolean;
}
const V2: Version = { tag: 'v2', versionId: '12.2-tiu' };
const V3: Version = { tag: 'v3-bad', versionId: '12.3-tiu', unhealthy: true };
const V4: Version = { tag: 'v4', versionId: '12.4-tiu' };
const V5: Version = { tag: 'v5', versionId: '12.5-tiu' };

async function sh(cmd: string, args: string[], env: Record<string, string> = {}): Promise<string> {
  try {
    const { stdout } = await execFileP(cmd, args, { maxBuffer: 64 << 20, env: { ...process.env, ...env } });
    return stdout;
  } catch (e) {
    const err = e as Error & { stderr?: string; stdout?: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${err.message}\n${err.stderr ?? ''}${err.stdout ?? ''}`);
  }
}

interface StatusSnapshot {
  number: number;
  booted: boolean;
  default: boolean;
  inProgress: boolean;
  health?: string;
  image?: string;
  userdata: Record<string, string>;
}
interface Status {
  booted?: number;
  default?: number;
  snapshots: StatusSnapshot[];
}

describe('system: update, reboot, health and rollback in a VM (USB-stick bundles)', function () {
  this.timeout(3_600_000);
  let vm: Vm | undefined;
  let registry: RunningRegistry | undefined;
  let work = '';
  let failed = false;
  /** The scenarios run in order on one VM: each needs the one before it to have passed. */
  let passed = -1;
  const requirePrevious = (n: number) => {
    if (passed !== n - 1)
      throw new Error(`scenario ${n} starts where scenario ${n - 1} ends, and that one did not pass`);
  };
  const timings: [string, number][] = [];
  const timed = async <T>(what: string, f: () => Promise<T>): Promise<T> => {
    const t0 = Date.now();
    try {
      return await f();
    } finally {
      timings.push([what, Date.now() - t0]);
    }
  };

  /** In the VM: mount the USB disk (read-only) where the updates come from. */
  const mountUsb = () =>
    vm!.sh(`mkdir -p ${USB}; mountpoint -q ${USB} || mount -o ro /dev/disk/by-id/virtio-tiuusb ${USB}`);
  /**
   * Run a command in the VM and parse its stdout as JSON. The VM's shell mixes stderr into the
   * output, so stderr goes to a file and comes back only when the command fails: snapper, for
   * one, says "loading N failed" on stderr (exit 0) while another snapper is writing snapshot N.
   */
  const vmJson = async (command: string): Promise<unknown> =>
    JSON.parse(await vm!.sh(`${command} 2>/run/tiu-test.stderr || { rc=$?; cat /run/tiu-test.stderr; exit $rc; }`));
  const status = async (): Promise<Status> => (await vmJson('tiu status --json')) as Status;
  const versionId = async () => /^VERSION_ID="?([^"\n]*)"?$/m.exec(await vm!.sh('cat /etc/os-release'))?.[1];

  /** Start `tiu update ... --reboot` and wait for the VM to go down; a failing update fails the test. */
  async function updateAndReboot(tag: string): Promise<void> {
    const v = vm!;
    const run = v.run(`tiu update oci:${USB}/os:${tag} --reboot`, 1_800_000).then(
      (r: RunResult) => r,
      (e: unknown) => (e instanceof VmExitedError ? undefined : Promise.reject(e as Error)),
    );
    const first = await Promise.race([run, v.waitForExit(1_800_000).then(() => 'exited' as const)]);
    if (first !== 'exited' && first !== undefined && first.code !== 0) {
      throw new Error(`tiu update ${tag} failed (exit ${first.code}):\n${first.output}`);
    }
    await v.waitForExit(300_000);
  }

  /** `tiu build` of the VM's own tree with this version's os-release (and failing check) into oci:LAYOUT:TAG. */
  async function buildBundle(ver: Version, layout: string): Promise<void> {
    const tree = join(work, `tree-${ver.tag}`);
    try {
      await sh('cp', ['-a', '--reflink=auto', vm!.image.tree, tree]);
      const osRelease = join(tree, 'usr/lib/os-release');
      const text = await readFile(osRelease, 'utf8');
      await writeFile(osRelease, text.replace(/^VERSION_ID=.*$/m, `VERSION_ID="${ver.versionId}"`));
      if (ver.unhealthy) {
        const d = join(tree, 'usr/libexec/tiu/health.d');
        await mkdir(d, { recursive: true });
        await writeFile(join(d, '50-app'), '#!/bin/sh\necho "the app of this image does not start" >&2\nexit 1\n');
        await chmod(join(d, '50-app'), 0o755);
      }
      await sh(tiuBin, ['build', tree, '--tag', `oci:${layout}:${ver.tag}`]);
    } finally {
      await rm(tree, { recursive: true, force: true });
    }
  }

  before(async function () {
    requireRoot(this, 'needs root (debootstrap, loop devices, mounts) for the VM image');
    failed = true; // until the setup is through: a failing setup keeps the VM's logs too
    const t0 = Date.now();
    vm = await Vm.create('update');
    // Every boot has a NIC (qemu user networking); the guest leaves it unconfigured until
    // scenario 4 configures it, so the earlier boots are as without one and no reboot is
    // needed to add it.
    vm.network = 'user';
    timings.push([`VM image (build-image.sh${vm.image.buildMs > 60_000 ? ', built' : ', cached'})`, vm.image.buildMs]);
    work = await mkdtemp('/var/tmp/tiu-vm-bundles-');
    await timed('bundles: 3 builds + signatures + USB disk on the host', async () => {
      await sh(tiuBin, ['key', 'generate', '--output-key-prefix', join(work, 'os')], { COSIGN_PASSWORD: PASS });
      const layout = join(work, 'usb', 'os');
      for (const ver of [V2, V3, V4]) {
        await buildBundle(ver, layout);
        await sh(
          tiuBin,
          ['sign', '--key', join(work, 'os.key'), '--identity', `${IDENTITY}:${ver.tag}`, `oci:${layout}:${ver.tag}`],
          { COSIGN_PASSWORD: PASS },
        );
      }
      const kib = Number((await sh('du', ['-sk', join(work, 'usb')])).split('\t')[0]);
      const img = join(work, 'usb.img');
      await sh('mkfs.ext4', [
        '-q',
        '-L',
        'TIUUSB',
        '-d',
        join(work, 'usb'),
        img,
        `${Math.ceil((kib * 1.2) / 1024) + 64}M`,
      ]);
      vm!.addDisk({ path: img, serial: 'tiuusb', readonly: true });
    });
    await timed('boot 1 (v1)', () => vm!.bootReady());
    // The admin provisions the device: the signing key and the policy that requires it.
    const pub = await readFile(join(work, 'os.pub'), 'utf8');
    const policy = {
      default: [{ type: 'reject' }],
      transports: {
        oci: {
          '': [
            {
              type: 'sigstoreSigned',
              keyPath: '/etc/tiu/keys/os.pub',
              signedIdentity: { type: 'exactRepository', dockerRepository: IDENTITY },
            },
          ],
        },
      },
    };
    await vm.sh(
      `mkdir -p /etc/tiu/keys && cat > /etc/tiu/keys/os.pub <<'EOF'\n${pub}EOF\n` +
        `cat > /etc/tiu/policy.json <<'EOF'\n${JSON.stringify(policy, null, 2)}\nEOF\n` +
        `printf 'policy = "/etc/tiu/policy.json"\\n' > /etc/tiu/tiu.conf`,
    );
    await mountUsb();
    const st = await status();
    assert.equal(st.booted, 1);
    assert.equal(
      st.snapshots.find((s) => s.number === 1)?.health,
      'good',
      'the first boot marks the installed snapshot good',
    );
    console.log(`      setup took ${((Date.now() - t0) / 1000).toFixed(0)} s`);
    failed = false;
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed') failed = true;
  });

  after(async function () {
    if (timings.length) {
      console.log('      wall times:');
      for (const [what, ms] of timings) console.log(`        ${(ms / 1000).toFixed(1).padStart(7)} s  ${what}`);
    }
    await vm?.dispose(failed);
    await registry?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('0: the VM boots snapshot 1 of the MicroOS layout: read-only root, writable /etc subvolume, the other subvolumes', async function () {
    const v = vm!;
    assert.equal((await v.sh('findmnt -n -o FSTYPE /')).trim(), 'btrfs');
    assert.equal((await v.sh('findmnt -n -o FSROOT /')).trim(), '/@/.snapshots/1/snapshot');
    if (v.bootPath === 'uefi') {
      // systemd-boot's entry names the snapshot.
      assert.match(await v.sh('cat /proc/cmdline'), / rootflags=subvol=@\/\.snapshots\/1\/snapshot /);
    } else {
      // -kernel: no subvol=, the kernel mounted the default subvolume.
      assert.doesNotMatch(await v.sh('cat /proc/cmdline'), /subvol/);
    }
    assert.match(await v.sh('btrfs subvolume get-default /'), /path @\/\.snapshots\/1\/snapshot$/m);
    const ro = await v.run('touch /probe');
    assert.notEqual(ro.code, 0);
    assert.match(ro.output, /Read-only file system/);
    await v.sh('touch /etc/probe && rm /etc/probe');
    for (const m of ['/var', '/.snapshots', '/home', '/root', '/opt', '/srv', '/usr/local']) {
      assert.equal((await v.sh(`findmnt -n -o FSROOT ${m}`)).trim(), `/@${m}`);
    }
    // The GPT disk's ESP, with systemd-boot and snapshot 1's entry.
    assert.equal((await v.sh('findmnt -n -o FSTYPE,SOURCE /boot/efi')).trim().replace(/\s+/g, ' '), 'vfat /dev/vda1');
    assert.equal((await v.run('test -f /boot/efi/EFI/BOOT/BOOTX64.EFI -a -f /boot/efi/loader/loader.conf')).code, 0);
    if (v.bootPath === 'uefi') {
      // Booted by the firmware through systemd-boot, from the disk (no -kernel).
      const bootctl = await v.sh('bootctl status 2>&1');
      assert.match(bootctl, /Product: systemd-boot 25\d/, bootctl);
      assert.match(bootctl, /Boot counting/, bootctl);
    }
    // Installed by scripts/install.sh: tiu's own Node 24, running compiled JavaScript.
    assert.match(await v.sh('/usr/lib/tiu/node_modules/.bin/node --version'), /^v24\./);
    assert.equal((await v.run('test -e /usr/lib/tiu/src')).code, 1, 'no TypeScript sources on the device');
    assert.match(await v.sh('systemctl is-enabled tiu-health.service'), /enabled/);
    // tiu's units as installed, checked by systemd itself (unknown keys, missing programs, bad times).
    const verify = await v.run('systemd-analyze verify tiu-health.service tiu-update.service tiu-update.timer');
    assert.equal(verify.code, 0, verify.output);
    assert.doesNotMatch(verify.output, /tiu-(health|update)\.(service|timer)/, verify.output);
    assert.match(v.console, /tiu-health: snapshot 1 is healthy: marked good/);
    passed = 0;
  });

  it('1: tiu update --reboot from an OCI layout on a USB disk boots the new image and marks it good', async function () {
    requirePrevious(1);
    const v = vm!;
    await timed('scenario 1: update v1 -> v2 until qemu exits', () => updateAndReboot(V2.tag));
    await timed('scenario 1: boot (v2)', () => v.bootReady());
    assert.equal(await versionId(), V2.versionId);
    assert.match(v.console, /snapshot 2 is healthy: marked good/);
    const st = await status();
    assert.equal(st.booted, 2);
    assert.equal(st.default, 2);
    const s2 = st.snapshots.find((s) => s.number === 2)!;
    assert.equal(s2.health, 'good');
    assert.equal(s2.inProgress, false);
    assert.match(s2.image ?? '', /os:v2$/);
    passed = 1;
  });

  it('2: a bundle whose health check fails is rolled back by itself: the VM comes up on the previous image', async function () {
    requirePrevious(2);
    const v = vm!;
    await mountUsb();
    await timed('scenario 2: update v2 -> v3-bad until qemu exits', () => updateAndReboot(V3.tag));
    const outcome = await timed('scenario 2: boot (v3-bad, rolls back)', () => v.boot());
    assert.equal(outcome, 'exited', 'the unhealthy boot ends by itself, before the system is up');
    assert.match(v.console, /snapshot 3 is unhealthy \(50-app\): making snapshot 2 the default and rebooting/);
    await timed('scenario 2: boot (v2 again)', () => v.bootReady());
    assert.equal(await versionId(), V2.versionId);
    const st = await status();
    assert.equal(st.booted, 2);
    assert.equal(st.default, 2);
    const s3 = st.snapshots.find((s) => s.number === 3)!;
    assert.equal(s3.health, 'bad');
    assert.equal(s3.userdata['tiu-health-failed'], '50-app');
    assert.equal(st.snapshots.find((s) => s.number === 2)!.health, 'good');
    passed = 2;
  });

  it('3: killed in the middle of an apply, the VM boots the old image and the next update succeeds', async function () {
    requirePrevious(3);
    const v = vm!;
    await mountUsb();
    // $! is tiu's pid: setsid and /usr/bin/tiu exec, they do not fork.
    await v.sh(
      `setsid tiu update oci:${USB}/os:${V4.tag} >/var/log/tiu-update-killed.log 2>&1 < /dev/null & echo $! >/run/tiu-update-killed.pid`,
    );
    // Pull the plug as soon as tiu says it writes the image into the new snapshot. (Waiting a
    // fixed time after the snapshot appears could race the end of this small update on a faster
    // host.) By then the snapshot and its userdata are on disk: the /etc snapshots made after it
    // committed btrfs transactions.
    const inProgress = await timed('scenario 3: update v4 until it writes into the snapshot', async () => {
      const deadline = Date.now() + 900_000;
      while (Date.now() < deadline) {
        const log = await v.run('cat /var/log/tiu-update-killed.log; kill -0 "$(cat /run/tiu-update-killed.pid)"');
        const m = /^writing \d+ layer\(s\) into snapshot (\d+)$/m.exec(log.output);
        if (m) return Number(m[1]);
        if (log.code !== 0) throw new Error(`tiu update ended before it was killed:\n${log.output}`);
        await new Promise((r) => setTimeout(r, 200));
      }
      throw new Error('tiu update did not start writing into a snapshot');
    });
    await v.kill();
    await timed('scenario 3: boot after the kill (v2)', () => v.bootReady());
    assert.equal(await versionId(), V2.versionId);
    let st = await status();
    assert.equal(st.booted, 2);
    assert.equal(st.default, 2, 'the killed update never moved the default');
    const left = st.snapshots.find((s) => s.number === inProgress);
    assert.ok(left?.inProgress, `snapshot ${inProgress} is left marked in progress (killed before its commit)`);
    await mountUsb();
    await timed('scenario 3: update v2 -> v4 until qemu exits', () => updateAndReboot(V4.tag));
    await timed('scenario 3: boot (v4)', () => v.bootReady());
    assert.equal(await versionId(), V4.versionId);
    st = await status();
    assert.equal(st.booted, st.default);
    const now = st.snapshots.find((s) => s.number === st.booted)!;
    assert.equal(now.health, 'good');
    assert.match(now.image ?? '', /os:v4$/);
    // The killed update's snapshot was deleted by the next run; snapper may give its number to the new one.
    const reused = st.snapshots.find((s) => s.number === inProgress);
    assert.ok(
      reused === undefined || (reused.booted && !reused.inProgress),
      `the unfinished snapshot ${inProgress} was cleaned up`,
    );
    assert.deepEqual(
      st.snapshots.filter((s) => s.inProgress),
      [],
    );
    passed = 3;
  });

  it('4: tiu-update.service pulls the configured image from a registry over the network: refused unsigned, booted signed', async function () {
    requirePrevious(4);
    const v = vm!;
    const reg = (registry = await startRegistry());
    // The guest reaches the host's 127.0.0.1 as 10.0.2.2 (qemu user networking).
    const guestRegistry = `10.0.2.2:${reg.port}`;
    const image = `${guestRegistry}/tiu/os:${V5.tag}`;
    const hostRef = `docker://${reg.host}/tiu/os:${V5.tag}`;
    const layout = join(work, 'ci', 'os');
    // CI: build v5 and push it, not signed yet.
    await timed('scenario 4: build v5 + push it unsigned (host)', async () => {
      await buildBundle(V5, layout);
      await sh(tiuBin, ['copy', `oci:${layout}:${V5.tag}`, hostRef]);
    });
    // The admin: a network, the registry (plain http), the policy for it and the image to follow.
    const pub = await readFile(join(work, 'os.pub'), 'utf8');
    const policy = {
      default: [{ type: 'reject' }],
      transports: {
        oci: {
          '': [
            {
              type: 'sigstoreSigned',
              keyPath: '/etc/tiu/keys/os.pub',
              signedIdentity: { type: 'exactRepository', dockerRepository: IDENTITY },
            },
          ],
        },
        docker: {
          [guestRegistry]: [
            {
              type: 'sigstoreSigned',
              keyData: Buffer.from(pub).toString('base64'),
              signedIdentity: { type: 'matchRepository' },
            },
          ],
        },
      },
    };
    await timed('scenario 4: network up in the VM', async () => {
      await v.sh(
        `mkdir -p /etc/systemd/network && cat > /etc/systemd/network/50-eth0.network <<'EOF'\n` +
          `[Match]\nName=eth0\n\n[Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\nLinkLocalAddressing=no\nIPv6AcceptRA=no\nEOF\n` +
          'systemctl enable --now systemd-networkd.service\n' +
          // A persistent journal: the update's log outlives its reboot.
          'mkdir -p /var/log/journal && journalctl --flush',
      );
      // The registry answers from the guest: /v2/ over bash's /dev/tcp (the image has neither curl nor ip).
      await v.sh(
        `for i in $(seq 1 60); do timeout 5 bash -c 'exec 3<>/dev/tcp/10.0.2.2/${reg.port} && printf "GET /v2/ HTTP/1.0\\r\\n\\r\\n" >&3 && head -1 <&3' | grep ' 200 ' && exit 0; sleep 0.5; done; networkctl status eth0; exit 1`,
        120_000,
      );
    });
    await v.sh(
      `mkdir -p /etc/containers && cat > /etc/containers/registries.conf <<'EOF'\n[[registry]]\nlocation = "${guestRegistry}"\ninsecure = true\nEOF\n` +
        `cat > /etc/tiu/policy.json <<'EOF'\n${JSON.stringify(policy, null, 2)}\nEOF\n` +
        `printf 'policy = "/etc/tiu/policy.json"\\nimage = "%s"\\n' '${image}' > /etc/tiu/tiu.conf`,
    );
    const before = await status();

    // Unsigned: the unit fails, says why, and writes nothing.
    const refused = await timed('scenario 4: tiu-update.service refuses the unsigned v5', () =>
      v.run('systemctl start tiu-update.service', 900_000),
    );
    assert.notEqual(
      refused.code,
      0,
      `systemctl start tiu-update.service succeeded on an unsigned image:\n${refused.output}`,
    );
    const show = await v.sh(
      'systemctl show -P Result tiu-update.service; systemctl show -P ExecMainStatus tiu-update.service',
    );
    assert.deepEqual(show.trim().split('\n'), ['exit-code', '1']);
    const journal = await v.sh('journalctl -b -u tiu-update.service -o cat --no-pager');
    assert.match(journal, /has no signature .*\[SIGNATURE_MISSING\]/);
    assert.match(
      journal,
      new RegExp(`${guestRegistry.replace(/\./g, '\\.')}/tiu/os`),
      'the error names the registry and repository',
    );
    const after = await status();
    assert.deepEqual(
      after.snapshots.map((s) => s.number),
      before.snapshots.map((s) => s.number),
      'no snapshot was created',
    );
    assert.equal(after.default, before.default);

    // CI signs v5 as the device will see it and pushes the signature with it.
    await timed('scenario 4: sign v5 + push the signature (host)', async () => {
      await sh(tiuBin, ['sign', '--key', join(work, 'os.key'), '--identity', image, `oci:${layout}:${V5.tag}`], {
        COSIGN_PASSWORD: PASS,
      });
      await sh(tiuBin, ['copy', '--referrers', `oci:${layout}:${V5.tag}`, hostRef]);
    });
    await v.sh('systemctl reset-failed tiu-update.service; systemctl start --no-block tiu-update.service');
    await timed('scenario 4: tiu-update.service v4 -> v5 until qemu exits', async () => {
      const exited = v.waitForExit(1_800_000).then(() => 'exited' as const);
      for (;;) {
        const r = await Promise.race([exited, new Promise<'poll'>((res) => setTimeout(() => res('poll'), 5000))]);
        if (r === 'exited') return;
        const state = await v.run('systemctl show -P ActiveState tiu-update.service').catch((e: unknown) => {
          if (e instanceof VmExitedError) return undefined;
          throw e;
        });
        if (state?.output.trim() === 'failed') {
          const log = await v.run('journalctl -b -u tiu-update.service -o cat --no-pager');
          throw new Error(`tiu-update.service failed:\n${log.output}`);
        }
      }
    });
    await timed('scenario 4: boot (v5)', () => v.bootReady());
    assert.equal(await versionId(), V5.versionId);
    const st = await status();
    assert.equal(st.booted, st.default);
    const now = st.snapshots.find((s) => s.number === st.booted)!;
    assert.ok(!before.snapshots.some((s) => s.number === now.number), 'v5 is a new snapshot');
    assert.equal(now.health, 'good');
    assert.equal(now.inProgress, false);
    assert.equal(now.image, image, 'the snapshot records the registry reference it was pulled from');
    // The unit's log of the update, from the boot before.
    const updateLog = await v.sh('journalctl -b -1 -u tiu-update.service -o cat --no-pager');
    assert.match(
      updateLog,
      new RegExp(`snapshot ${now.number} \\(from \\d+\\) holds ${image.replace(/\./g, '\\.')} \\(sha256:`),
    );
    assert.match(updateLog, /^rebooting$/m);
    // The admin's network survived the update (/etc merge), and nothing at boot waits for it.
    assert.equal((await v.sh('systemctl is-active systemd-networkd.service')).trim(), 'active');
    assert.equal(
      (await v.run('systemctl is-active systemd-networkd-wait-online.service')).output.trim(),
      'inactive',
      'no boot waits for network-online.target',
    );
    passed = 4;
  });
});
