/**
 * Stage `hooks`: what the first boot of the new snapshot needs — the SELinux relabel marker
 * where the policy wants labels the image lacks, then the hooks (initrd …) in a chroot.
 */
import { join } from 'node:path';
import { selinuxConfigWants } from '../../host/selinux.ts';
import { DEFAULT_HOOKS } from '../config.ts';
import { planHooks } from '../hooks.ts';
import type { UpdateDeps } from './deps.ts';
import type { Hooked, Merged } from './run.ts';

export async function hooks(deps: UpdateDeps, run: Merged): Promise<Hooked> {
  const { newRd, newRoot, config, boot } = run;
  let relabel = false;
  if (
    selinuxConfigWants((await newRd.readFileIfExists('etc/selinux/config'))?.toString('utf8') ?? '') &&
    !(await deps.system.hasSelinuxLabel(join(newRoot, 'usr')))
  ) {
    await newRd.writeFileAtomic('.autorelabel', '', { mode: 0o644 });
    relabel = true;
  }

  const facts = await deps.system.kernelFacts(run.oldRoot, newRoot);
  // tiu writes the systemd-boot entries itself where it found systemd-boot: sdbootutil's
  // default hook would add a second, differently named set.
  const hookSpecs = boot
    ? config.hooks.filter((h) => !(h.name === 'sdbootutil' && DEFAULT_HOOKS.includes(h)))
    : config.hooks;
  const present = await deps.system.existingPaths(newRoot, hookSpecs);
  const planned = planHooks(hookSpecs, facts, run.snapshot, (p) => present.has(p));
  for (const h of planned) run.progress(`hook ${h.name}: ${h.argv.join(' ')}`);
  const ran = await deps.system.runHooks(newRoot, planned, { sysroot: run.ctx.sysroot, signal: run.signal });
  return { ...run, relabel, hooks: ran };
}
