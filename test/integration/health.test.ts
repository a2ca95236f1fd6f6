/**
 * `tiu health --boot` on a MicroOS-layout btrfs (loop device, real snapper): the marks land
 * in snapper userdata, a failing snapshot gives way to the last good one as the btrfs default.
 * (The real reboot cycle is test/system/update-reboot.test.ts.)
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { requireRoot } from '../helpers/env.ts';
import { baseOs, createMicroOS, type MicroOS } from '../helpers/microos.ts';
import { openContext, readState, type Context } from '../../src/deploy/state.ts';
import { setDefaultSnapshot } from '../../src/deploy/snapshot.ts';
import { HEALTH_UD } from '../../src/deploy/health.ts';

const execFileP = promisify(execFile);
const tiu = join(dirname(fileURLToPath(import.meta.url)), '../../bin/tiu');

async function runTiu(args: string[]): Promise<{ code: number; json: Record<string, unknown>; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileP(tiu, [...args, '--json']);
    return { code: 0, json: JSON.parse(stdout) as Record<string, unknown>, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, json: JSON.parse(err.stdout) as Record<string, unknown>, stderr: err.stderr };
  }
}

describe('tiu health --boot on a MicroOS layout', function () {
  this.timeout(120_000);
  let os: MicroOS;
  let ctx: Context;
  const ud = async (n: number) => (await readState(ctx)).snapshots.find((s) => s.number === n)!.userdata;

  before(async function () {
    requireRoot(this);
    os = await createMicroOS({
      files: [
        ...(await baseOs()),
        { path: 'usr/libexec/tiu/health.d/10-ok', content: '#!/bin/sh\necho all fine\n', mode: 0o755 },
      ],
    });
    ctx = await openContext(os.sysroot);
  });
  after(async () => {
    await os?.teardown();
  });

  it('marks a healthy booted snapshot good, counting the boot; a later boot only verifies it', async () => {
    const r = await runTiu(['health', '--boot', '--sysroot', os.sysroot]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json.outcome, 'good');
    assert.equal(r.json.snapshot, 1);
    assert.deepEqual(
      (r.json.checks as { name: string; ok: boolean }[]).map((c) => [c.name, c.ok]),
      [['10-ok', true]],
    );
    assert.equal((await ud(1))[HEALTH_UD.health], 'good');
    assert.equal((await ud(1))[HEALTH_UD.attempts], '1');
    const again = await runTiu(['health', '--boot', '--sysroot', os.sysroot]);
    assert.equal(again.json.outcome, 'verified');
    assert.equal((await ud(1))[HEALTH_UD.attempts], '1');
  });

  it('a failing new snapshot is marked bad and the last good snapshot becomes the default', async () => {
    // Snapshot 2: an older, known-good system to go back to. Snapshot 1 plays the new one.
    const good = await ctx.snapper.create({
      from: 1,
      readWrite: false,
      description: 'known good',
      userdata: { [HEALTH_UD.health]: 'good' },
    });
    await ctx.snapper.modify(1, { userdata: { [HEALTH_UD.health]: '', [HEALTH_UD.attempts]: '' } });
    await mkdir(join(os.sysroot, 'etc/tiu/health.d'), { recursive: true });
    await writeFile(join(os.sysroot, 'etc/tiu/health.d/50-app'), '#!/bin/sh\necho "app did not start" >&2\nexit 2\n', {
      mode: 0o755,
    });
    const plain = await runTiu(['health', '--sysroot', os.sysroot]);
    assert.equal(plain.code, 1);
    assert.deepEqual(plain.json.failed, ['50-app']);
    assert.equal((await readState(ctx)).default, 1, 'plain `tiu health` changes nothing');

    const r = await runTiu(['health', '--boot', '--no-reboot', '--sysroot', os.sysroot]);
    assert.equal(r.code, 1);
    assert.equal(r.json.outcome, 'rolled-back');
    assert.equal(r.json.rollbackTo, good);
    assert.equal(r.json.rebooting, false);
    const failed = (r.json.checks as { name: string; ok: boolean; output: string }[]).find((c) => c.name === '50-app')!;
    assert.equal(failed.output, 'app did not start');
    const st = await readState(ctx);
    assert.equal(st.default, good);
    assert.equal(st.booted, 1);
    assert.equal((await ud(1))[HEALTH_UD.health], 'bad');
    assert.equal((await ud(1))[HEALTH_UD.failed], '50-app');
  });

  it('rolls back without running checks once a snapshot used up its boot attempts', async () => {
    await rm(join(os.sysroot, 'etc/tiu/health.d/50-app'));
    await setDefaultSnapshot(ctx, 1);
    await ctx.snapper.modify(1, { userdata: { [HEALTH_UD.health]: '', [HEALTH_UD.attempts]: '2' } });
    const r = await runTiu(['health', '--boot', '--no-reboot', '--max-attempts', '2', '--sysroot', os.sysroot]);
    assert.equal(r.code, 1);
    assert.equal(r.json.outcome, 'rolled-back');
    assert.deepEqual(r.json.checks, []);
    assert.equal((await readState(ctx)).default, 2);
    assert.match((await ud(1))[HEALTH_UD.failed]!, /not marked good after 2 boots/);
  });

  it('refuses bad options with USAGE', async () => {
    const r = await runTiu(['health', '--boot', '--max-attempts', '0', '--sysroot', os.sysroot]);
    assert.equal(r.code, 2);
    assert.equal((r.json.error as { code: string }).code, 'USAGE');
  });
});
