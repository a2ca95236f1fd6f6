/**
 * The initrd hooks with the real tool, no VM: a copy of the VM's Debian tree whose kernel comes
 * without an initrd gets one from its own update-initramfs, run by tiu's default hooks in tiu's
 * chroot (/dev, /proc, /sys bound, unmounted afterwards), at the path the boot integration
 * reads (boot/initrd.img-<kver>). A tree that brings its initrd runs no initrd hook.
 */
import { strict as assert } from 'node:assert';
import { execFile } from 'node:child_process';
import { lstat, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { DEFAULT_HOOKS } from '../../src/deploy/config.ts';
import { existingPaths, kernelFacts, planHooks, runHooks } from '../../src/deploy/hooks.ts';
import { requireRoot } from '../helpers/env.ts';
import { vmImage } from '../helpers/vm.ts';

const execFileP = promisify(execFile);

describe("system: initrd hooks run the image's own update-initramfs in the chroot (no VM)", function () {
  this.timeout(1_800_000);
  let work = '';
  after(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('a kernel without an initrd gets one from update-initramfs; a kernel with one runs no initrd hook', async function () {
    requireRoot(this, 'needs root (chroot, bind mounts) and the VM image');
    const image = await vmImage();
    work = await mkdtemp('/var/tmp/tiu-initrd-hooks-');
    const old = join(work, 'old');
    const root = join(work, 'root');
    await mkdir(old);
    await execFileP('cp', ['-a', '--reflink=auto', image.tree, root], { maxBuffer: 16 << 20 });
    const kver = image.kver;
    const initrd = join(root, 'boot', `initrd.img-${kver}`);

    // With its initrd (as the image ships it): the kernel is new, but no initrd hook is planned.
    let present = await existingPaths(root, DEFAULT_HOOKS);
    const withInitrd = planHooks(DEFAULT_HOOKS, await kernelFacts(old, root), 7, (p) => present.has(p));
    assert.deepEqual(
      withInitrd.filter((h) => /initr/.test(h.name)),
      [],
      JSON.stringify(withInitrd),
    );

    // Without it: update-initramfs (the tree has no dracut), run for real in the chroot.
    await rm(initrd);
    await rm(join(root, 'usr/lib/modules', kver, 'initrd'), { force: true });
    const facts = await kernelFacts(old, root);
    assert.deepEqual(facts.withoutInitrd, [kver]);
    present = await existingPaths(root, DEFAULT_HOOKS);
    const planned = planHooks(DEFAULT_HOOKS, facts, 7, (p) => present.has(p)).filter((h) => /initr/.test(h.name));
    assert.deepEqual(
      planned.map((h) => h.argv),
      [['update-initramfs', '-c', '-k', kver]],
    );
    const before = await readFile('/proc/self/mountinfo', 'utf8');
    const ran = await runHooks(root, planned, { sysroot: '/' });
    assert.equal(ran.length, 1);
    assert.equal(await readFile('/proc/self/mountinfo', 'utf8'), before, 'the chroot left nothing mounted');
    assert.ok((await lstat(initrd)).isFile(), 'update-initramfs wrote boot/initrd.img-<kver>');
    // An initramfs the kernel can boot: it holds /init and the kernel's modules.
    const { stdout } = await execFileP('chroot', [root, 'lsinitramfs', `/boot/initrd.img-${kver}`], {
      maxBuffer: 64 << 20,
    });
    const files = stdout.split('\n');
    assert.ok(files.includes('init'), 'the initramfs has /init');
    assert.ok(
      files.some((f) => f.startsWith(`usr/lib/modules/${kver}/`) || f.startsWith(`lib/modules/${kver}/`)),
      'the initramfs has the modules of its kernel',
    );
    assert.equal((await kernelFacts(old, root)).withoutInitrd.length, 0, 'the boot integration now finds its initrd');
  });
});
