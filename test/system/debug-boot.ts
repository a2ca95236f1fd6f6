/**
 * Developer tool: boot the test VM once and run the given shell commands in it, printing their
 * output (e.g. `node test/system/debug-boot.ts 'systemd-analyze blame'`). Keeps nothing.
 * TIU_VM_BOOT=uefi boots through OVMF and systemd-boot (test/helpers/vm.ts).
 */
import { Vm } from '../helpers/vm.ts';

const vm = await Vm.create('debug');
try {
  const outcome = await vm.boot();
  console.log(`boot: ${outcome} in ${((vm.bootTimes[0] ?? 0) / 1000).toFixed(1)} s`);
  if (outcome === 'ready') {
    for (const cmd of process.argv.slice(2)) {
      const r = await vm.run(cmd);
      console.log(`$ ${cmd}  (exit ${r.code})\n${r.output}`);
    }
  } else {
    console.log(vm.consoleTail(60));
  }
} finally {
  await vm.dispose(false);
}
