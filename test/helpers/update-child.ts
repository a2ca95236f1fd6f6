/**
 * A separate process running `update` whose hook announces itself (its pid in
 * /tiu-hook-started inside the new snapshot) and hangs, so that a test can SIGKILL the update
 * in the middle: after the layers were written, before the commit. argv: SYSROOT
 */
import { parseConfig } from '../../src/deploy/config.ts';
import { update } from '../../src/deploy/update.ts';
import { v2Files } from './microos.ts';
import { buildImage, TestTarget, testDeps } from './update-deps.ts';

const sysroot = process.argv[2]!;
const source = new TestTarget('child-source');
const img = await buildImage(source, 'v2', await v2Files(), 'zstd');
const config = parseConfig('default-hooks = false\n[[hook]]\nname = "hang"\ncommand = ["/bin/sh", "-c", "echo $$ > /tiu-hook-started; exec sleep 600"]\n');
await update(testDeps({ source, trusted: new Set([img.manifest.digest]) }), { sysroot, reference: 'test:v2', config });
