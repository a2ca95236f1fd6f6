/**
 * The USB-stick case under an ordinary policy: a layout has no registry name, so the signature's
 * docker-reference is checked against tiu.conf's signed-identity (default: the repository of
 * tiu.conf's `image`), with the layout's tag.
 */
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { generateKeyPairSync } from 'node:crypto';
import { requireRoot } from '../helpers/env.ts';
import { baseOs, createMicroOS, v2Files, type MicroOS } from '../helpers/microos.ts';
import { buildImage, signInLayout, TEST_IDENTITY } from '../helpers/update-deps.ts';

const TIU = new URL('../../bin/tiu', import.meta.url).pathname;

describe('tiu update from an OCI layout (USB stick) with a matchRepoDigestOrExact policy', function () {
  this.timeout(300_000);
  let os: MicroOS;
  let images: string;

  before(async function () {
    requireRoot(this);
    os = await createMicroOS({ files: await baseOs() });
    images = join(os.dir, 'usb');
    await buildImage(images, '2', await v2Files(), 'zstd');
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    await signInLayout(images, '2', privateKey);
    await mkdir(join(os.sysroot, 'etc/tiu'), { recursive: true });
    const pub = publicKey.export({ format: 'pem', type: 'spki' });
    // The policy's default identity rule: the signature must name the image's own reference.
    const req = [{ type: 'sigstoreSigned', keyData: Buffer.from(pub).toString('base64') }];
    await writeFile(
      join(os.sysroot, 'etc/tiu/policy.json'),
      JSON.stringify({ default: [{ type: 'reject' }], transports: { oci: { '': req } } }),
    );
  });
  after(async () => {
    await os?.teardown();
  });

  const update = (args: string[] = []) =>
    execa(TIU, ['update', `oci:${images}:2`, '--sysroot', os.sysroot, '--json', ...args], { reject: false });

  it('without a configured identity the layout cannot prove its name: IDENTITY_MISMATCH, nothing written', async () => {
    await writeFile(join(os.sysroot, 'etc/tiu/tiu.conf'), 'default-hooks = false\n');
    const r = await update();
    assert.equal(r.exitCode, 1, r.stdout);
    assert.equal((JSON.parse(r.stdout) as { error: { code: string } }).error.code, 'IDENTITY_MISMATCH');
    const st = JSON.parse((await execa(TIU, ['status', '--sysroot', os.sysroot, '--json'])).stdout) as {
      snapshots: unknown[];
      default: number;
    };
    assert.equal(st.snapshots.length, 1);
    assert.equal(st.default, 1);
  });

  it('a signature for another repository is still refused', async () => {
    await writeFile(
      join(os.sysroot, 'etc/tiu/tiu.conf'),
      'signed-identity = "registry.example/other/os"\ndefault-hooks = false\n',
    );
    const r = await update();
    assert.equal(r.exitCode, 1, r.stdout);
    assert.equal((JSON.parse(r.stdout) as { error: { code: string } }).error.code, 'IDENTITY_MISMATCH');
  });
  it('with signed-identity (from tiu.conf) it verifies as that repository with the layout tag and updates', async () => {
    await writeFile(
      join(os.sysroot, 'etc/tiu/tiu.conf'),
      `image = "docker://${TEST_IDENTITY}:latest"\ndefault-hooks = false\n`,
    );
    const r = await update();
    assert.equal(r.exitCode, 0, r.stdout + r.stderr);
    const st = JSON.parse((await execa(TIU, ['status', '--sysroot', os.sysroot, '--json'])).stdout) as {
      default: number;
    };
    assert.equal(st.default, 2);
  });
});
