/**
 * /etc/tiu/tiu.conf, TOML:
 *
 *   image = "docker://registry.example.com/os/microos:latest"   # what `tiu update` fetches
 *   policy = "/etc/tiu/policy.json"     # signature policy; default: /etc/tiu/policy.json, else /etc/containers/policy.json
 *   cache = "/var/cache/tiu"                                    # OCI layout for --download-only/--offline
 *   default-hooks = true                                        # initrd + bootloader hooks for MicroOS
 *   signed-identity = "registry.example.com/os/microos"         # the name bundles are signed as, checked
 *                                 # when the source has none (oci: USB stick); default: image's repository
 *   disk-reserve = "5%"           # free space an update never uses on the root filesystem: a percentage
 *                                 # of its size or a size ("1G", "512M"); default: the smaller of 5% and 1 GiB
 *   min-speed = "1K"              # a registry transfer slower than this (bytes/s, K/M suffixes) …
 *   speed-time = 60               # … for this many seconds ends with REGISTRY_TOO_SLOW (0: never)
 *   request-deadline = 600        # seconds any one request may take at least; a blob gets more in
 *                                 # proportion to its size (its size at min-speed); 0: no deadline
 *   require-signature-expiry = true  # freshness: at least one signature the policy accepted must carry
 *                                 # an expiry (tiu sign --expires) in the future, else SIGNATURE_EXPIRED
 *                                 # (exit 4) and the system stays as it is; default: false
 *
 *   esp = "/boot/efi"             # the EFI system partition's mount point; default: /boot/efi, else /efi
 *   kernel-cmdline = "quiet"      # added to every boot entry tiu writes (after the image's /etc/kernel/cmdline)
 *   boot-tries = 3                # boot counter of a new entry; default: the image's /etc/kernel/tries, else 3
 *
 *   [[hook]]                                                    # more hooks, run in order after the defaults
 *   name = "update-ca"
 *   command = ["update-ca-certificates"]
 *   when = "always"            # always | kernel-changed | initrd-missing (once per kernel, {kver})
 *   if-exists = "/usr/sbin/update-ca-certificates"              # only when the new snapshot has it
 *
 * Paths are inside the system: with --sysroot DIR they are read below DIR.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parse } from 'smol-toml';
import { TiuError } from '../errors.ts';
import { dockerName, parseReference, type DockerReference } from '../oci/reference.ts';
import { parseReserve, type DiskReserve } from './apply/space.ts';
import { parseSize } from '../format.ts';
import type { SpeedSettings } from '../transport/registry/speed.ts';

export class ConfigError extends TiuError {
  constructor(file: string, message: string) {
    super('CONFIG_INVALID', `${file}: ${message}`, { file });
  }
}

export type HookWhen = 'always' | 'kernel-changed' | 'initrd-missing';

export interface HookSpec {
  name: string;
  /** argv inside the chroot; `{kver}` and `{snapshot}` are replaced. */
  command: string[];
  when: HookWhen;
  ifExists?: string;
  /** Skipped when the new snapshot has this path (update-initramfs only where there is no dracut). */
  unlessExists?: string;
}

export interface TiuConfig {
  image?: string;
  /**
   * The registry repository (host/path, no tag) whose signatures a bundle from an OCI layout
   * must carry: a layout has no registry name of its own for signedIdentity to check.
   */
  signedIdentity?: string;
  /** containers-policy.json(5); undefined: the trust module's default paths. */
  policy?: string;
  cache: string;
  hooks: HookSpec[];
  /** Free space an update leaves on the root filesystem (undefined: the smaller of 5% and 1 GiB). */
  diskReserve?: DiskReserve;
  /** Minimum throughput and deadline of registry requests (undefined: the defaults, or the environment's). */
  network?: SpeedSettings;
  /** The ESP's mount point inside the system (undefined: /boot/efi, else /efi). */
  esp?: string;
  /** Kernel command line additions for boot entries (validated when used). */
  kernelCmdline?: string;
  /** Tries counter of a new boot entry (undefined: the image's /etc/kernel/tries, else 3). */
  bootTries?: number;
  /** Refuse an image unless an accepted signature carries an expiry in the future (src/trust/freshness.ts). */
  requireSignatureExpiry?: boolean;
  /** The file it came from, when there was one. */
  file?: string;
}

export const CONFIG_PATH = '/etc/tiu/tiu.conf';

/** What MicroOS needs after a new tree lands: an initrd when the image brings none, boot entries. */
export const DEFAULT_HOOKS: readonly HookSpec[] = [
  // Where the boot integration (src/deploy/boot) looks for an initrd: next to the kernel's modules.
  {
    name: 'initrd',
    command: ['dracut', '--force', '--kver', '{kver}', '/usr/lib/modules/{kver}/initrd'],
    when: 'initrd-missing',
    ifExists: '/usr/bin/dracut',
  },
  // Debian's initramfs-tools: writes /boot/initrd.img-{kver}; only where the image has no dracut.
  {
    name: 'update-initramfs',
    command: ['update-initramfs', '-c', '-k', '{kver}'],
    when: 'initrd-missing',
    ifExists: '/usr/sbin/update-initramfs',
    unlessExists: '/usr/bin/dracut',
  },
  {
    name: 'grub2-mkconfig',
    command: ['grub2-mkconfig', '-o', '/boot/grub2/grub.cfg'],
    when: 'kernel-changed',
    ifExists: '/usr/sbin/grub2-mkconfig',
  },
  {
    name: 'sdbootutil',
    command: ['sdbootutil', 'add-all-kernels', '{snapshot}'],
    when: 'always',
    ifExists: '/usr/bin/sdbootutil',
  },
];

const KEYS = new Set([
  'image',
  'policy',
  'cache',
  'default-hooks',
  'hook',
  'signed-identity',
  'disk-reserve',
  'min-speed',
  'speed-time',
  'request-deadline',
  'esp',
  'kernel-cmdline',
  'boot-tries',
  'require-signature-expiry',
]);
const HOOK_KEYS = new Set(['name', 'command', 'when', 'if-exists', 'unless-exists']);
const WHEN: readonly string[] = ['always', 'kernel-changed', 'initrd-missing'];

export function parseConfig(text: string, file = CONFIG_PATH): TiuConfig {
  let doc: Record<string, unknown>;
  try {
    doc = parse(text);
  } catch (e) {
    throw new ConfigError(file, `not valid TOML: ${(e as Error).message.split('\n')[0]}`);
  }
  for (const k of Object.keys(doc)) if (!KEYS.has(k)) throw new ConfigError(file, `unknown key '${k}'`);
  const str = (k: string): string | undefined => {
    const v = doc[k];
    if (v === undefined) return undefined;
    if (typeof v !== 'string' || v === '') throw new ConfigError(file, `'${k}' must be a non-empty string`);
    return v;
  };
  const defaults = doc['default-hooks'] ?? true;
  if (typeof defaults !== 'boolean') throw new ConfigError(file, `'default-hooks' must be true or false`);
  const rawHooks = doc.hook ?? [];
  if (!Array.isArray(rawHooks)) throw new ConfigError(file, `'hook' must be an array of tables ([[hook]])`);
  const hooks: HookSpec[] = rawHooks.map((h: unknown, i) => {
    const at = `hook #${i + 1}`;
    if (!h || typeof h !== 'object' || Array.isArray(h)) throw new ConfigError(file, `${at} is not a table`);
    const t = h as Record<string, unknown>;
    for (const k of Object.keys(t)) if (!HOOK_KEYS.has(k)) throw new ConfigError(file, `${at}: unknown key '${k}'`);
    const cmd = t.command;
    if (!Array.isArray(cmd) || cmd.length === 0 || !cmd.every((a) => typeof a === 'string') || cmd[0] === '') {
      throw new ConfigError(file, `${at}: 'command' must be a non-empty array of strings`);
    }
    const when = t.when ?? 'always';
    if (typeof when !== 'string' || !WHEN.includes(when))
      throw new ConfigError(file, `${at}: 'when' must be one of ${WHEN.join(', ')}`);
    const ifExists = t['if-exists'];
    if (ifExists !== undefined && (typeof ifExists !== 'string' || !ifExists.startsWith('/'))) {
      throw new ConfigError(file, `${at}: 'if-exists' must be an absolute path`);
    }
    const unlessExists = t['unless-exists'];
    if (unlessExists !== undefined && (typeof unlessExists !== 'string' || !unlessExists.startsWith('/'))) {
      throw new ConfigError(file, `${at}: 'unless-exists' must be an absolute path`);
    }
    const name = t.name ?? cmd[0];
    if (typeof name !== 'string') throw new ConfigError(file, `${at}: 'name' must be a string`);
    return {
      name,
      command: cmd,
      when: when as HookWhen,
      ...(ifExists ? { ifExists } : {}),
      ...(unlessExists ? { unlessExists } : {}),
    };
  });
  const policy = str('policy');
  const cache = str('cache') ?? '/var/cache/tiu';
  for (const [k, v] of [
    ['policy', policy],
    ['cache', cache],
  ] as const) {
    if (v !== undefined && !v.startsWith('/')) throw new ConfigError(file, `'${k}' must be an absolute path`);
  }
  const image = str('image');
  const signedIdentity = str('signed-identity') ?? repositoryOf(image);
  if (signedIdentity !== undefined) {
    const ref = parseIdentity(signedIdentity);
    if (!ref || ref.tag || ref.digest)
      throw new ConfigError(
        file,
        `'signed-identity' must be a registry repository like registry.example.com/os/microos`,
      );
  }
  let diskReserve: DiskReserve | undefined;
  if (doc['disk-reserve'] !== undefined) {
    diskReserve = parseReserve(doc['disk-reserve']);
    if (!diskReserve)
      throw new ConfigError(
        file,
        `'disk-reserve' must be a percentage up to 50% ("5%") or a size ("1G", "512M", a number of bytes)`,
      );
  }
  const network: SpeedSettings = {};
  if (doc['min-speed'] !== undefined) {
    const v = doc['min-speed'];
    const n = typeof v === 'number' ? v : typeof v === 'string' ? parseSize(v) : undefined;
    if (n === undefined || !Number.isSafeInteger(n) || n < 0)
      throw new ConfigError(file, `'min-speed' must be bytes per second ("1K", "64K", a number)`);
    network.minBytesPerSec = n;
  }
  for (const [k, field] of [
    ['speed-time', 'speedTimeMs'],
    ['request-deadline', 'deadlineFloorMs'],
  ] as const) {
    const v = doc[k];
    if (v === undefined) continue;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0)
      throw new ConfigError(file, `'${k}' must be a number of seconds`);
    network[field] = Math.round(v * 1000);
  }
  const esp = str('esp');
  if (esp !== undefined && !esp.startsWith('/')) throw new ConfigError(file, `'esp' must be an absolute path`);
  const kernelCmdline = str('kernel-cmdline');
  // eslint-disable-next-line no-control-regex
  if (kernelCmdline !== undefined && /[\u0000-\u001f\u007f]/.test(kernelCmdline))
    throw new ConfigError(file, `'kernel-cmdline' must not contain newlines or control characters`);
  const tries = doc['boot-tries'];
  if (tries !== undefined && (typeof tries !== 'number' || !Number.isInteger(tries) || tries < 1 || tries > 100))
    throw new ConfigError(file, `'boot-tries' must be an integer from 1 to 100`);
  const requireExpiry = doc['require-signature-expiry'] ?? false;
  if (typeof requireExpiry !== 'boolean')
    throw new ConfigError(file, `'require-signature-expiry' must be true or false`);
  return {
    image,
    signedIdentity,
    ...(esp ? { esp } : {}),
    ...(kernelCmdline ? { kernelCmdline } : {}),
    ...(tries !== undefined ? { bootTries: tries } : {}),
    ...(requireExpiry ? { requireSignatureExpiry: true } : {}),
    policy,
    cache,
    hooks: [...(defaults ? DEFAULT_HOOKS : []), ...hooks],
    ...(diskReserve ? { diskReserve } : {}),
    ...(Object.keys(network).length ? { network } : {}),
    file,
  };
}

function parseIdentity(name: string): DockerReference | undefined {
  try {
    const ref = parseReference(name.startsWith('docker://') ? name : `docker://${name}`);
    return ref.transport === 'docker' ? ref : undefined;
  } catch {
    return undefined;
  }
}

/** host/repo of a docker image reference; undefined for layouts. */
function repositoryOf(image: string | undefined): string | undefined {
  if (image === undefined) return undefined;
  try {
    const ref = parseReference(image);
    return ref.transport === 'docker' ? dockerName(ref, false) : undefined;
  } catch {
    return undefined;
  }
}

/** The config of the system at `sysroot`; defaults when the file does not exist. */
export async function loadConfig(sysroot = '/', path = CONFIG_PATH): Promise<TiuConfig> {
  const file = join(sysroot, path);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { ...parseConfig('', file), file: undefined };
    throw new ConfigError(file, `cannot be read: ${(e as Error).message}`);
  }
  return parseConfig(text, file);
}
