/**
 * Key rotation on a device, through the CLI: a policy listing several keys (keyPaths, keyDatas)
 * accepts an image signed by any of them, and retiring a key from the policy refuses the images
 * only it signed, while images signed by both during the changeover keep updating. Images on a
 * real registry (distribution), the device a MicroOS-layout btrfs with snapper.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { requireRoot } from '../helpers/env.ts';
import { baseOs, createMicroOS, v2Files, type MicroOS } from '../helpers/microos.ts';
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts';
import { buildImage } from '../helpers/update-deps.ts';

const TIU = new URL('../../bin/tiu', import.meta.url).pathname;
const PASS = { old: 'old key passphrase 5b1f', new: 'new key passphrase 93ce' };

interface Result {
  exitCode: number;
  json: { error?: { code: string; message: string } } & Record<string, unknown>;
  out: string;
}

describe('key rotation: several keys in policy.json, retiring one (CLI, registry, MicroOS on btrfs)', function () {
  this.timeout(300_000);
  let os: MicroOS;
  let reg: RunningRegistry;
  let keys: string;
  const ref = (tag: string) => `docker://${reg.host}/fake/microos:${tag}`;

  async function tiu(args: string[], env: Record<string, string> = {}): Promise<Result> {
    const r = await execa(TIU, [...args, '--json'], { reject: false, env: { ...env } });
    let json = {} as Result['json'];
    try {
      json = JSON.parse(r.stdout) as Result['json'];
    } catch {
      /* asserted by the caller through exitCode */
    }
    return { exitCode: r.exitCode ?? -1, json, out: `${r.stdout}\n${r.stderr}` };
  }
  async function ok(args: string[], env?: Record<string, string>): Promise<Result> {
    const r = await tiu(args, env);
    assert.equal(r.exitCode, 0, r.out);
    return r;
  }
  async function refused(args: string[], code: string): Promise<Result> {
    const r = await tiu(args);
    assert.equal(r.json.error?.code, code, r.out);
    assert.equal(r.exitCode, 1, r.out);
    return r;
  }
  const sign = (tag: string, who: 'old' | 'new') =>
    ok(['sign', '--key', join(keys, `${who}.key`), ref(tag)], { COSIGN_PASSWORD: PASS[who] });
  /** The device's policy: the registry's repository needs a signature by one of `pubs`. */
  async function devicePolicy(requirement: Record<string, unknown>): Promise<void> {
    await writeFile(
      join(os.sysroot, 'etc/tiu/policy.json'),
      JSON.stringify({
        default: [{ type: 'reject' }],
        transports: { docker: { [`${reg.host}/fake`]: [{ type: 'sigstoreSigned', ...requirement }] } },
      }),
    );
  }
  const pub = (who: 'old' | 'new') => join(keys, `${who}.pub`);
  const keyData = (who: 'old' | 'new') => readFileSync(pub(who)).toString('base64');
  async function state(): Promise<{ snapshots: number; default: number }> {
    const st = JSON.parse((await execa(TIU, ['status', '--sysroot', os.sysroot, '--json'])).stdout) as {
      snapshots: unknown[];
      default: number;
    };
    return { snapshots: st.snapshots.length, default: st.default };
  }
  const check = (tag: string) => ['update', '--check', '--sysroot', os.sysroot, ref(tag)];
  const update = (tag: string) => ['update', '--sysroot', os.sysroot, ref(tag)];

  before(async function () {
    requireRoot(this);
    reg = await startRegistry();
    os = await createMicroOS({ files: await baseOs() });
    keys = join(os.dir, 'keys');
    await mkdir(keys);
    await mkdir(join(os.sysroot, 'etc/tiu'), { recursive: true });
    await writeFile(join(os.sysroot, 'etc/tiu/tiu.conf'), 'default-hooks = false\n');
    await ok(['key', 'generate', '--output-key-prefix', join(keys, 'old')], { TIU_PASSWORD: PASS.old });
    await ok(['key', 'generate', '--output-key-prefix', join(keys, 'new')], { TIU_PASSWORD: PASS.new });
    // Three images: signed by the old key only, by the new key only, by both (the changeover).
    const layout = join(os.dir, 'layout');
    const v2 = await v2Files();
    for (const [tag, note] of [
      ['old-only', 'a'],
      ['new-only', 'b'],
      ['both', 'c'],
    ] as const) {
      await buildImage(layout, tag, [...v2, { path: 'usr/share/fake/which', content: `${note}\n` }], 'zstd');
      await ok(['copy', `oci:${layout}:${tag}`, ref(tag)]);
    }
    await sign('old-only', 'old');
    await sign('new-only', 'new');
    await sign('both', 'old');
    await sign('both', 'new');
  });
  after(async () => {
    await os?.teardown();
    await reg?.stop();
  });

  it('keyPaths with both keys: images signed by either verify, and the device updates to one', async () => {
    await devicePolicy({ keyPaths: [pub('old'), pub('new')] });
    const policy = join(os.sysroot, 'etc/tiu/policy.json');
    for (const tag of ['old-only', 'new-only', 'both']) {
      const v = await ok(['verify', '--policy', policy, ref(tag)]);
      assert.ok((v.json.signatures as unknown[]).length >= 1, tag);
      await ok(check(tag));
    }
    await ok(update('new-only'));
    assert.deepEqual(await state(), { snapshots: 2, default: 2 });
  });

  it('the old key retired: its images are refused (SIGNATURE_INVALID, nothing written), the others update', async () => {
    await devicePolicy({ keyPaths: [pub('new')] });
    const r = await refused(update('old-only'), 'SIGNATURE_INVALID');
    assert.match(r.json.error!.message, /does not verify with the trusted key/);
    await refused(check('old-only'), 'SIGNATURE_INVALID');
    assert.deepEqual(await state(), { snapshots: 2, default: 2 }, 'the refusal wrote no snapshot');
    await ok(check('new-only'));
    // An image signed by both keys during the changeover: the new key alone accepts it.
    await ok(update('both'));
    assert.deepEqual(await state(), { snapshots: 3, default: 3 });
  });

  it('keyDatas behave the same: both keys accept either image, one key refuses the other one', async () => {
    await devicePolicy({ keyDatas: [keyData('old'), keyData('new')] });
    await ok(check('old-only'));
    await ok(check('new-only'));
    await devicePolicy({ keyDatas: [keyData('old')] });
    await ok(check('old-only'));
    await refused(check('new-only'), 'SIGNATURE_INVALID');
    await ok(check('both'));
  });

  it('the new key alone as keyPath (the rotation finished): old signatures are refused by tiu verify too', async () => {
    await devicePolicy({ keyPath: pub('new') });
    const policy = join(os.sysroot, 'etc/tiu/policy.json');
    await refused(['verify', '--policy', policy, ref('old-only')], 'SIGNATURE_INVALID');
    await ok(['verify', '--policy', policy, ref('both')]);
    assert.deepEqual(await state(), { snapshots: 3, default: 3 });
  });
});
