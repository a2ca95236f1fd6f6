/**
 * Hooks: programs run inside the new snapshot (a chroot with /dev /proc /sys /boot/efi bound)
 * after its tree is written and before it is committed. Which hooks run is planned from facts
 * about the old and new trees (kernels, initrds), separately from running them. A failing
 * hook aborts the update.
 */
import type { Stats } from 'node:fs';
import { join } from 'node:path';
import { withChroot } from './chroot.ts';
import { RootedDir } from './rooted.ts';
import { TiuError, asError } from '../errors.ts';
import type { HookSpec } from './config.ts';

export class HookFailedError extends TiuError {
  constructor(hook: string, argv: string[], cause: unknown) {
    super(
      'HOOK_FAILED',
      `hook '${hook}' (${argv.join(' ')}) failed: ${asError(cause).message}`,
      { hook, argv, ...(cause instanceof TiuError ? { cause: cause.details } : {}) },
      { cause },
    );
  }
}

export interface KernelFacts {
  /** Kernel versions in the new tree's /usr/lib/modules. */
  kernels: string[];
  /** Versions whose kernel is new or different compared with the old tree. */
  changed: string[];
  /** Versions for which the new tree brings no initrd in /usr/lib/modules/<ver>/. */
  withoutInitrd: string[];
}

export interface PlannedHook {
  name: string;
  argv: string[];
}

/**
 * What is at `rel` in the tree, read beneath its root without following a link: image content is
 * hostile, and a symlink on the way (`usr/lib/modules -> /host/dir`) means nothing is there.
 */
async function lstatIn(root: RootedDir, rel: string): Promise<Stats | undefined> {
  return root.lstat(rel).catch(() => undefined);
}

async function namesIn(root: RootedDir, rel: string): Promise<string[]> {
  if (!(await root.isDir(rel).catch(() => false))) return [];
  return (await root.readdir(rel)).map((d) => d.name);
}

/** openSUSE keeps the kernel next to its modules, Debian in /boot/vmlinuz-<ver>. */
async function kernelSignature(root: RootedDir, ver: string): Promise<string | undefined> {
  for (const f of [
    ...['vmlinuz', 'Image', 'vmlinux'].map((k) => join('usr/lib/modules', ver, k)),
    `boot/vmlinuz-${ver}`,
  ]) {
    const s = await lstatIn(root, f);
    if (s?.isFile()) return `${f}:${s.size}:${s.mtimeMs}`;
  }
  return undefined;
}

async function kernelVersions(root: RootedDir): Promise<string[]> {
  const names = await namesIn(root, 'usr/lib/modules');
  const debian = (await namesIn(root, 'boot')).flatMap((n) => /^vmlinuz-(.+)$/.exec(n)?.[1] ?? []);
  const out: string[] = [];
  for (const n of new Set([...names, ...debian])) if ((await kernelSignature(root, n)) !== undefined) out.push(n);
  return out.sort();
}

/** Where an initrd for `ver` may be: next to the modules (dracut hook, openSUSE), Debian's /boot/initrd.img-<ver>, older tiu's /boot/initrd-<ver>. */
export const INITRD_PATHS = (ver: string): string[] => [
  join('usr/lib/modules', ver, 'initrd'),
  `boot/initrd.img-${ver}`,
  `boot/initrd-${ver}`,
];

export async function kernelFacts(oldDir: string, newDir: string): Promise<KernelFacts> {
  const oldRoot = await RootedDir.open(oldDir);
  const newRoot = await RootedDir.open(newDir);
  const kernels = await kernelVersions(newRoot);
  const changed: string[] = [];
  const withoutInitrd: string[] = [];
  for (const v of kernels) {
    if ((await kernelSignature(oldRoot, v)) !== (await kernelSignature(newRoot, v))) changed.push(v);
    let initrd = false;
    for (const p of INITRD_PATHS(v)) if (await lstatIn(newRoot, p)) initrd = true;
    if (!initrd) withoutInitrd.push(v);
  }
  // A kernel that went away changes the boot menu too.
  for (const v of await kernelVersions(oldRoot)) if (!kernels.includes(v)) changed.push(v);
  return { kernels, changed, withoutInitrd };
}

/** The pure plan: which hooks, with which argv, given the facts and what exists in the new tree. */
export function planHooks(
  hooks: readonly HookSpec[],
  facts: KernelFacts,
  snapshot: number,
  exists: (path: string) => boolean,
): PlannedHook[] {
  const out: PlannedHook[] = [];
  const fill = (argv: string[], kver?: string) =>
    argv.map((a) => a.replaceAll('{snapshot}', String(snapshot)).replaceAll('{kver}', kver ?? ''));
  for (const h of hooks) {
    if (h.ifExists && !exists(h.ifExists)) continue;
    if (h.unlessExists && exists(h.unlessExists)) continue;
    if (h.when === 'always') out.push({ name: h.name, argv: fill(h.command) });
    else if (h.when === 'kernel-changed') {
      if (facts.changed.length) out.push({ name: h.name, argv: fill(h.command, facts.kernels.at(-1)) });
    } else {
      for (const v of facts.withoutInitrd.filter((k) => facts.changed.includes(k)))
        out.push({ name: `${h.name} ${v}`, argv: fill(h.command, v) });
    }
  }
  return out;
}

/** Which `if-exists` paths exist in the new tree (as regular files or links, not following links out of it). */
export async function existingPaths(root: string, hooks: readonly HookSpec[]): Promise<Set<string>> {
  const rd = await RootedDir.open(root);
  const out = new Set<string>();
  for (const h of hooks) {
    // As the hook's chroot sees the path: the image's own symlinks (bin -> usr/bin) count, resolved beneath the root.
    for (const p of [h.ifExists, h.unlessExists]) if (p && (await rd.lstatInRoot(p).catch(() => undefined))) out.add(p);
  }
  return out;
}

export interface HookRun {
  name: string;
  argv: string[];
  ms: number;
}

/** Run the planned hooks in a chroot of `root`; the first failure stops and throws HOOK_FAILED. */
export async function runHooks(
  root: string,
  planned: PlannedHook[],
  opts: { sysroot: string; signal?: AbortSignal; timeout?: number },
): Promise<HookRun[]> {
  if (!planned.length) return [];
  const ran: HookRun[] = [];
  await withChroot(
    root,
    async (c) => {
      for (const h of planned) {
        const t0 = Date.now();
        try {
          await c.run(h.argv, {
            signal: opts.signal,
            timeout: opts.timeout ?? 1_800_000,
            env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' },
          });
        } catch (e) {
          throw new HookFailedError(h.name, h.argv, e);
        }
        ran.push({ name: h.name, argv: h.argv, ms: Date.now() - t0 });
      }
    },
    { sysroot: opts.sysroot },
  );
  return ran;
}
