/**
 * The test VM itself: the image boots the btrfs default subvolume in the MicroOS layout, and a
 * reboot inside the VM ends qemu so the harness boots it again.
 */
import { strict as assert } from 'node:assert';
import { requireRoot } from '../helpers/env.ts';
import { Vm } from '../helpers/vm.ts';

describe('system: the test VM', function () {
  this.timeout(900_000);
  let vm: Vm | undefined;
  let failed = false;

  before(async function () {
    requireRoot(this, 'needs root (debootstrap, loop devices) to build the VM image');
    failed = true;
    vm = await Vm.create('boot');
    failed = false;
    if (vm.image.buildMs > 0) console.log(`      image ready in ${(vm.image.buildMs / 1000).toFixed(1)} s`);
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed') failed = true;
  });
  after(async function () {
    await vm?.dispose(failed);
  });

  it('boots snapshot 1 read-only with a writable /etc subvolume, and reboots into the next boot', async function () {
    const v = vm!;
    await v.bootReady();
    console.log(`      boot 1 took ${(v.bootTimes[0]! / 1000).toFixed(1)} s`);
    assert.equal((await v.sh('findmnt -n -o FSTYPE /')).trim(), 'btrfs');
    assert.equal((await v.sh('findmnt -n -o FSROOT /')).trim(), '/@/.snapshots/1/snapshot');
    const def = await v.sh('btrfs subvolume get-default /');
    assert.match(def, /path @\/\.snapshots\/1\/snapshot$/m);
    const ro = await v.run('touch /probe');
    assert.notEqual(ro.code, 0);
    assert.match(ro.output, /Read-only file system/);
    await v.sh('touch /etc/probe && rm /etc/probe');
    for (const m of ['/var', '/.snapshots', '/home', '/root', '/opt', '/srv', '/usr/local']) {
      const src = await v.sh(`findmnt -n -o FSROOT ${m}`);
      assert.equal(src.trim(), `/@${m}`);
    }
    assert.match(await v.sh('snapper --no-dbus list'), /^1\*? +\| single/m);
    assert.match(await v.sh('tiu --version'), /^tiu \d+\.\d+\.\d+/);
    assert.match(await v.sh('node --version'), /^v24\./);
    await v.run('systemctl reboot');
    await v.waitForExit();
    await v.bootReady();
    console.log(`      boot 2 took ${(v.bootTimes[1]! / 1000).toFixed(1)} s`);
    assert.match(await v.sh('cat /proc/cmdline'), /root=\/dev\/vda/);
  });
});
