/**
 * The main job end to end, on this machine, as a user would run it (`npm run demo`, as root):
 *   1. a MicroOS-layout btrfs on a loop device with snapper, running "version 1";
 *   2. a local registry on 127.0.0.1;
 *   3. `tiu build` turns the version-2 OS tree into a bundle and pushes it;
 *   4. the device's policy trusts one cosign key: the unsigned bundle is refused;
 *   5. `tiu key generate` + `tiu sign`, then `tiu update --sysroot` writes a new snapshot
 *      and makes it the default; `tiu status` shows it; an identical update is a no-op.
 * Everything is removed at the end (pass --keep to keep the loop device mounted).
 */
import { execa } from 'execa';
import { mkdtemp, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { baseOs, createMicroOS, v2Files, writeTree, type MicroOS } from '../test/helpers/microos.ts';
import { startRegistry, type RunningRegistry } from '../test/helpers/registry.ts';

const root = new URL('..', import.meta.url).pathname;
const tiuBin = join(root, 'bin/tiu');
const keep = process.argv.includes('--keep');

function step(title: string): void {
  process.stdout.write(`\n\x1b[1m== ${title}\x1b[0m\n`);
}

async function tiu(
  args: string[],
  opts: { env?: Record<string, string>; expectFailure?: boolean } = {},
): Promise<string> {
  process.stdout.write(`$ tiu ${args.join(' ')}\n`);
  const r = await execa(tiuBin, args, { env: opts.env, reject: false, stderr: 'inherit' });
  if (r.stdout) process.stdout.write(r.stdout + (r.stdout.endsWith('\n') ? '' : '\n'));
  if (opts.expectFailure ? r.exitCode === 0 : r.exitCode !== 0) {
    throw new Error(
      `tiu ${args[0]} ${opts.expectFailure ? 'succeeded but should have failed' : `failed with exit code ${r.exitCode}`}`,
    );
  }
  return r.stdout;
}

if (process.getuid?.() !== 0) {
  console.error('demo: run as root (it makes a btrfs on a loop device and runs snapper)');
  process.exit(1);
}

let os: MicroOS | undefined;
let registry: RunningRegistry | undefined;
const work = await mkdtemp(join(tmpdir(), 'tiu-demo-'));
try {
  step('1. a MicroOS-layout btrfs on a loop device, running version 1');
  os = await createMicroOS({ files: await baseOs() });
  process.stdout.write(`sysroot ${os.sysroot} on ${os.loop}\n`);
  await tiu(['status', '--sysroot', os.sysroot]);

  step('2. a local registry');
  registry = await startRegistry();
  process.stdout.write(`docker-registry on ${registry.host}\n`);
  const ref = `docker://${registry.host}/microos/os:2`;

  step('3. CI: build version 2 from an OS tree and push it');
  const tree = join(work, 'tree-v2');
  await writeTree(tree, await v2Files());
  await tiu(['build', tree, '--tag', ref, '--annotation', 'org.opencontainers.image.version=2'], {
    env: { SOURCE_DATE_EPOCH: '1767225600' },
  });
  await tiu(['inspect', ref]);

  step('4. the device trusts one key: an unsigned bundle is refused');
  const env = { COSIGN_PASSWORD: 'demo-passphrase' };
  await tiu(['key', 'generate', '--output-key-prefix', join(work, 'cosign')], { env });
  const pub = await readFile(join(work, 'cosign.pub'));
  await mkdir(join(os.sysroot, 'etc/tiu'), { recursive: true });
  const policy = {
    default: [{ type: 'reject' }],
    transports: {
      docker: {
        [`${registry.host}/microos`]: [
          { type: 'sigstoreSigned', keyData: pub.toString('base64'), signedIdentity: { type: 'matchRepository' } },
        ],
      },
    },
  };
  await writeFile(join(os.sysroot, 'etc/tiu/policy.json'), JSON.stringify(policy, null, 2) + '\n');
  await tiu(['update', ref, '--sysroot', os.sysroot], { expectFailure: true });

  step('5. CI signs it; the device updates into a new snapshot');
  await tiu(['sign', '--key', join(work, 'cosign.key'), ref], { env });
  await tiu(['verify', '--key', join(work, 'cosign.pub'), ref]);
  await tiu(['update', ref, '--sysroot', os.sysroot]);
  await tiu(['status', '--sysroot', os.sysroot]);
  const { stdout: def } = await execa('btrfs', ['subvolume', 'get-default', os.sysroot]);
  const n = /\.snapshots\/(\d+)\/snapshot/.exec(def)?.[1];
  if (!n) throw new Error(`unexpected default subvolume: ${def}`);
  process.stdout.write(`next boot: snapshot ${n}; its os-release:\n`);
  process.stdout.write(await readFile(join(os.snapshotPath(Number(n)), 'usr/lib/os-release'), 'utf8'));

  step('6. the same bundle again changes nothing');
  await tiu(['update', ref, '--sysroot', os.sysroot]);
  process.stdout.write('\ndemo: done\n');
} finally {
  if (!keep) {
    await registry?.stop();
    await os?.teardown();
    await rm(work, { recursive: true, force: true });
  } else {
    process.stdout.write(`kept: ${os?.sysroot ?? ''} ${work}\n`);
  }
}
