/**
 * The system tests' VM: builds (or reuses) the cached disk image of test/system/build-image.sh
 * and boots private copies of it in qemu under TCG. Every boot is one qemu process: qemu runs
 * with -no-reboot, so a reboot inside the VM (or a kernel panic, panic=5) ends it and the test
 * starts the next boot, reading what came up.
 *
 * Two ways to boot (TIU_VM_BOOT, or `Vm.create(name, { boot })`):
 *   'uefi'    (the default) the firmware (Debian's OVMF: CODE read-only, a private copy of VARS per VM that
 *             outlives its qemu processes, as a machine's NVRAM does) starts systemd-boot from
 *             the disk's ESP, which boots the default entry and counts its tries there: what a
 *             device does. Everything a boot needs is on the VM's own disk.
 *   'kernel'  qemu -kernel/-initrd/-append with snapshot 1's kernel and the image's cmdline
 *             (no bootloader: the kernel mounts the btrfs default subvolume); TIU_VM_BOOT=kernel. The test talks to the VM over a virtio-serial port (org.tiu.test) served by
 * /usr/lib/tiu-test/shell.sh in the image; the serial console (kernel + systemd) goes to one
 * log file per boot, kept when a test fails.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { createServer, type Server, type Socket } from 'node:net';
import { mkdtemp, rm, copyFile, appendFile, writeFile, readFile } from 'node:fs/promises';
import { constants as fsConstants } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);
const repo = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const vmCache = process.env.TIU_VM_CACHE ?? '/var/cache/tiu-test';

export type BootPath = 'uefi' | 'kernel';
/** The boot path of VMs that do not choose one. */
export const defaultBootPath: BootPath = process.env.TIU_VM_BOOT === 'kernel' ? 'kernel' : 'uefi';
const ovmfCode = process.env.TIU_OVMF_CODE ?? '/usr/share/OVMF/OVMF_CODE_4M.fd';
const ovmfVars = process.env.TIU_OVMF_VARS ?? '/usr/share/OVMF/OVMF_VARS_4M.fd';

export interface VmImage {
  dir: string;
  disk: string;
  kernel: string;
  initrd: string;
  /** `uname -r` of snapshot 1's kernel. */
  kver: string;
  /** The kernel command line of snapshot 1's entry (root=UUID=..., the btrfs default subvolume). */
  cmdline: string;
  /** The same without root= (the guest's /etc/kernel/cmdline). */
  cmdlineOptions: string;
  /** A second kernel (another `uname -r`) as a tree fragment: boot/, usr/lib/modules/KVER/. */
  kernel2: { tree: string; kver: string };
  /** The root tree installed as snapshot 1 (with /var etc.): the source for test bundles. */
  tree: string;
  /** Wall time of build-image.sh in this process (0 when an earlier call had it). */
  buildMs: number;
}

let imagePromise: Promise<VmImage> | undefined;

/** Build or reuse the cached image (once per process). */
export function vmImage(): Promise<VmImage> {
  imagePromise ??= (async () => {
    const t0 = Date.now();
    const { stdout, stderr } = await execFileP('bash', [join(repo, 'test/system/build-image.sh')], {
      maxBuffer: 64 << 20,
      env: { ...process.env, TIU_VM_CACHE: vmCache },
    }).catch((e: Error & { stderr?: string }) => {
      throw new Error(`test/system/build-image.sh failed: ${e.message}\n${e.stderr ?? ''}`);
    });
    const buildMs = Date.now() - t0;
    if (stderr.trim()) process.stderr.write(stderr.replace(/^/gm, '      '));
    const dir = stdout.trim().split('\n').pop()!;
    const read = async (f: string) => (await readFile(join(dir, f), 'utf8')).trim();
    return {
      dir,
      disk: join(dir, 'disk.raw'),
      kernel: join(dir, 'vmlinuz'),
      initrd: join(dir, 'initrd.img'),
      kver: await read('kver'),
      cmdline: await read('cmdline'),
      cmdlineOptions: await read('cmdline-options'),
      kernel2: { tree: join(dir, 'kernel2'), kver: await read('kernel2/kver') },
      tree: join(dir, 'tree'),
      buildMs,
    };
  })();
  return imagePromise;
}

export interface ExtraDisk {
  /** A raw disk image file. */
  path: string;
  /** Shown in the guest as /dev/disk/by-id/virtio-SERIAL. */
  serial: string;
  readonly?: boolean;
}

export interface RunResult {
  code: number;
  output: string;
}

export type BootOutcome = 'ready' | 'exited';

export class VmExitedError extends Error {}

/** Per boot, until the test channel answers (TIU_VM_BOOT_TIMEOUT, ms). Generous: TCG on a busy machine. */
const bootTimeoutMs = Number(process.env.TIU_VM_BOOT_TIMEOUT ?? 600_000);

/** One VM: a private copy of the image's disk and any number of boots. */
export class Vm {
  readonly image: VmImage;
  readonly workdir: string;
  readonly disk: string;
  readonly bootPath: BootPath;
  /** The VM's UEFI variable store (its NVRAM), kept across boots. */
  readonly efiVars: string;
  readonly extraDisks: ExtraDisk[] = [];
  /**
   * The network of the next boots: 'none' (-nic none), or 'user': qemu user networking with a
   * virtio NIC (eth0 in the guest, unconfigured until the test configures it), where the
   * host's 127.0.0.1 is 10.0.2.2 and the guest is expected at 10.0.2.15/24.
   */
  network: 'none' | 'user' = 'none';
  /** Boots so far (1 = the first). */
  boots = 0;
  /** Wall time of each boot until it announced itself (ms), or until qemu exited. */
  readonly bootTimes: number[] = [];
  private child: ChildProcess | undefined;
  private server: Server | undefined;
  private sock: Socket | undefined;
  private exited: Promise<number | null> = Promise.resolve(null);
  private consoleText = '';
  private lineBuf = '';
  private waiters: { match: (line: string) => boolean; resolve: (line: string) => void; reject: (e: Error) => void }[] =
    [];
  private nextId = 1;
  private running = false;

  private constructor(image: VmImage, workdir: string, bootPath: BootPath) {
    this.image = image;
    this.workdir = workdir;
    this.disk = join(workdir, 'disk.raw');
    this.bootPath = bootPath;
    this.efiVars = join(workdir, 'OVMF_VARS.fd');
  }

  static async create(name: string, opts: { boot?: BootPath } = {}): Promise<Vm> {
    const image = await vmImage();
    const workdir = await mkdtemp(join(process.env.TIU_VM_WORKDIR ?? '/var/tmp', `tiu-vm-${name}-`));
    const vm = new Vm(image, workdir, opts.boot ?? defaultBootPath);
    // A sparse private copy; the cached image stays untouched.
    await execFileP('cp', ['--sparse=always', image.disk, vm.disk]);
    if (vm.bootPath === 'uefi') await copyFile(ovmfVars, vm.efiVars);
    return vm;
  }

  addDisk(d: ExtraDisk): void {
    this.extraDisks.push(d);
  }

  get isRunning(): boolean {
    return this.running;
  }

  /** The current (or last) boot's console output. */
  get console(): string {
    return this.consoleText;
  }

  consoleLogPath(boot = this.boots): string {
    return join(this.workdir, `console-${boot}.log`);
  }

  /**
   * Start qemu and wait until the VM announces itself on the command channel ('ready') or
   * qemu ends by itself first ('exited', e.g. a rollback's reboot).
   */
  async boot(timeoutMs = bootTimeoutMs): Promise<BootOutcome> {
    if (this.running) throw new Error('the VM is already running');
    this.boots += 1;
    const boot = this.boots;
    this.consoleText = '';
    this.lineBuf = '';
    const sockPath = join(this.workdir, 'cmd.sock');
    await rm(sockPath, { force: true });
    const server = createServer();
    this.server = server;
    const connected = new Promise<Socket>((resolve) => server.once('connection', resolve));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(sockPath, resolve);
    });
    const args = [
      '-accel',
      'tcg',
      '-cpu',
      'max',
      '-smp',
      '2',
      '-m',
      '1024',
      '-no-reboot',
      '-display',
      'none',
      '-monitor',
      'none',
      '-serial',
      'stdio',
    ];
    if (this.bootPath === 'uefi') {
      args.push(
        '-drive',
        `if=pflash,format=raw,unit=0,readonly=on,file=${ovmfCode}`,
        '-drive',
        `if=pflash,format=raw,unit=1,file=${this.efiVars}`,
        // No option ROM: the firmware never tries to boot from the network.
        ...(this.network === 'user'
          ? ['-netdev', 'user,id=net0', '-device', 'virtio-net-pci,netdev=net0,romfile=']
          : ['-nic', 'none']),
      );
    } else {
      args.push(
        '-nic',
        this.network === 'user' ? 'user,model=virtio-net-pci' : 'none',
        '-kernel',
        this.image.kernel,
        '-initrd',
        this.image.initrd,
        '-append',
        this.image.cmdline,
      );
    }
    args.push(
      // The root disk first: PCI slots go in command-line order, so it is /dev/vda; the firmware boots it.
      '-drive',
      `file=${this.disk},format=raw,if=none,id=root,cache=writeback,discard=unmap`,
      '-device',
      `virtio-blk-pci,drive=root,serial=tiuroot${this.bootPath === 'uefi' ? ',bootindex=0' : ''}`,
    );
    this.extraDisks.forEach((d, i) => {
      args.push('-drive', `file=${d.path},format=raw,if=none,id=disk${i}${d.readonly ? ',readonly=on' : ''}`);
      args.push('-device', `virtio-blk-pci,drive=disk${i},serial=${d.serial}`);
    });
    args.push(
      '-device',
      'virtio-serial',
      '-chardev',
      `socket,id=tiutest,path=${sockPath}`,
      '-device',
      'virtserialport,chardev=tiutest,name=org.tiu.test',
    );
    const log = this.consoleLogPath(boot);
    await writeFile(join(this.workdir, `qemu-${boot}.argv`), ['qemu-system-x86_64', ...args].join(' ') + '\n');
    const t0 = Date.now();
    const child = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    this.running = true;
    let pending = Promise.resolve();
    const onOut = (d: Buffer): void => {
      const s = d.toString('utf8');
      this.consoleText += s;
      pending = pending.then(() => appendFile(log, s)).catch(() => undefined);
    };
    child.stdout.on('data', onOut);
    child.stderr.on('data', onOut);
    this.exited = new Promise((resolve) => {
      child.once('exit', (code) => {
        this.running = false;
        void pending.then(() => resolve(code));
      });
      child.once('error', (e) => {
        this.consoleText += `\n[harness] qemu failed to start: ${e.message}\n`;
        this.running = false;
        resolve(null);
      });
    });
    void this.exited.then(() => {
      server.close();
      this.sock?.destroy();
      const err = new VmExitedError(`the VM (boot ${boot}) exited`);
      for (const w of this.waiters.splice(0)) w.reject(err);
    });
    void connected.then((sock) => {
      this.sock = sock;
      sock.setEncoding('utf8');
      sock.on('data', (d: string) => this.onChannel(d));
      sock.on('error', () => undefined);
    });
    const ready = this.waitLine((l) => l.startsWith('TIU-VM-READY'));
    const outcome = await Promise.race([
      ready.then(
        () => 'ready' as const,
        () => 'exited' as const,
      ),
      this.exited.then(() => 'exited' as const),
      sleep(timeoutMs).then(() => 'timeout' as const),
    ]);
    this.bootTimes.push(Date.now() - t0);
    if (outcome === 'timeout') {
      await this.kill();
      throw new Error(
        `boot ${boot} did not reach the test channel in ${timeoutMs / 1000} s; console: ${log}\n${this.consoleTail()}`,
      );
    }
    return outcome;
  }

  /** Boot and require the VM to come up. */
  async bootReady(): Promise<void> {
    const o = await this.boot();
    if (o !== 'ready')
      throw new Error(
        `boot ${this.boots} ended before it came up; console: ${this.consoleLogPath()}\n${this.consoleTail()}`,
      );
  }

  consoleTail(lines = 40): string {
    return this.consoleText.split('\n').slice(-lines).join('\n');
  }

  private onChannel(d: string): void {
    this.lineBuf += d;
    let i;
    while ((i = this.lineBuf.indexOf('\n')) >= 0) {
      const line = this.lineBuf.slice(0, i).replace(/\r$/, '');
      this.lineBuf = this.lineBuf.slice(i + 1);
      const w = this.waiters.findIndex((x) => x.match(line));
      if (w >= 0) this.waiters.splice(w, 1)[0]!.resolve(line);
    }
  }

  private waitLine(match: (line: string) => boolean): Promise<string> {
    if (!this.running) return Promise.reject(new VmExitedError('the VM is not running'));
    return new Promise((resolve, reject) => this.waiters.push({ match, resolve, reject }));
  }

  /** Run a bash script in the VM as root; resolves with its exit code and output. */
  async run(script: string, timeoutMs = 300_000): Promise<RunResult> {
    if (!this.sock || !this.running) throw new VmExitedError('the VM is not up');
    const id = String(this.nextId++);
    const reply = this.waitLine((l) => l.startsWith(`TIU-OUT ${id} `));
    this.sock.write(`RUN ${id} ${Buffer.from(script).toString('base64')}\n`);
    let timer: NodeJS.Timeout | undefined;
    const line = await Promise.race([
      reply,
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`no answer to ${JSON.stringify(script)} in ${timeoutMs / 1000} s`)),
          timeoutMs,
        );
      }),
    ]).finally(() => clearTimeout(timer));
    const [, , code, b64] = line.split(' ');
    return { code: Number(code), output: Buffer.from(b64 ?? '', 'base64').toString('utf8') };
  }

  /** Run a script that must succeed; returns its output. */
  async sh(script: string, timeoutMs?: number): Promise<string> {
    const r = await this.run(script, timeoutMs);
    if (r.code !== 0) throw new Error(`in the VM, ${JSON.stringify(script)} exited ${r.code}:\n${r.output}`);
    return r.output;
  }

  /** Wait for qemu to end by itself (a reboot or poweroff inside the VM). */
  async waitForExit(timeoutMs = 300_000): Promise<void> {
    if (!this.running) return;
    const r = await Promise.race([
      this.exited.then(() => 'exited' as const),
      sleep(timeoutMs).then(() => 'timeout' as const),
    ]);
    if (r === 'timeout') {
      await this.kill();
      throw new Error(
        `the VM did not reboot within ${timeoutMs / 1000} s; console: ${this.consoleLogPath()}\n${this.consoleTail()}`,
      );
    }
  }

  /** Pull the plug: SIGKILL qemu (what the guest had not written is lost, as in a power cut). */
  async kill(): Promise<void> {
    if (this.child && this.running) {
      this.child.kill('SIGKILL');
      await this.exited;
    }
  }

  /** Stop the VM; remove the work directory unless `keep` (a failed test keeps its logs). */
  async dispose(keep: boolean): Promise<void> {
    await this.kill();
    this.server?.close();
    if (keep) {
      await rm(this.disk, { force: true }).catch(() => undefined);
      process.stderr.write(`      VM logs kept in ${this.workdir}\n`);
    } else {
      await rm(this.workdir, { recursive: true, force: true });
    }
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms).unref());
}

/** Copy a file (used for disks handed to the VM). */
export async function copyDisk(src: string, dst: string): Promise<void> {
  await copyFile(src, dst, fsConstants.COPYFILE_FICLONE);
}
