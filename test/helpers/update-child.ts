/**
 * A separate process running `update` whose hook announces itself (its pid in
 * /tiu-hook-started inside the new snapshot) and hangs, so that a test can SIGKILL the update
 * in the middle: after the layers were written, before the commit. argv: SYSROOT REF DIGEST
 */
import { parseConfig } from '../../src/deploy/config.ts';
import { update } from '../../src/deploy/update.ts';
import { testDeps } from './update-deps.ts';

const [sysroot, reference, digest] = process.argv.slice(2) as [string, string, string];
const config = parseConfig('default-hooks = false\n[[hook]]\nname = "hang"\ncommand = ["/bin/sh", "-c", "echo $$ > /tiu-hook-started; exec sleep 600"]\n');
await update(testDeps(new Set([digest])), { sysroot, reference, config });
