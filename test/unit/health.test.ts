import { strict as assert } from 'node:assert';
import {
  HEALTH_UD,
  planBoot,
  rollbackTarget,
  runBootHealth,
  failedValue,
  type CheckResult,
  type HealthHost,
  type HealthSnapshot,
  type HealthState,
} from '../../src/deploy/health.ts';
import { isTiuError } from '../../src/errors.ts';

function snap(number: number, userdata: Record<string, string> = {}, inProgress = false): HealthSnapshot {
  return { number, inProgress, userdata };
}
const good = { [HEALTH_UD.health]: 'good' };
const bad = { [HEALTH_UD.health]: 'bad' };
const ok = (name: string): CheckResult => ({ name, path: `/x/${name}`, ok: true, exitCode: 0, output: '' });
const fail = (name: string): CheckResult => ({ name, path: `/x/${name}`, ok: false, exitCode: 1, output: 'broken' });

/** A HealthHost over an in-memory snapshot list that records what it was asked to do. */
function fakeHost(state: HealthState, checks: CheckResult[]) {
  const calls: string[] = [];
  const host: HealthHost = {
    readState: () => Promise.resolve(structuredClone(state)),
    setUserdata: (n, data) => {
      const s = state.snapshots.find((x) => x.number === n)!;
      for (const [k, v] of Object.entries(data)) {
        if (v === '') delete s.userdata[k];
        else s.userdata[k] = v;
      }
      calls.push(`userdata ${n} ${JSON.stringify(data)}`);
      return Promise.resolve();
    },
    setDefault: (n) => {
      state.default = n;
      calls.push(`default ${n}`);
      return Promise.resolve();
    },
    runChecks: () => {
      calls.push('checks');
      return Promise.resolve(checks);
    },
    reboot: () => {
      calls.push('reboot');
      return Promise.resolve();
    },
    log: () => undefined,
  };
  return { host, calls, state };
}

describe('deploy/health', () => {
  describe('rollbackTarget', () => {
    it('picks the newest snapshot marked good, skipping bad and unfinished ones', () => {
      const st: HealthState = {
        snapshots: [snap(1, good), snap(2, good), snap(3, bad), snap(4, good, true), snap(5)],
        booted: 5,
        default: 5,
      };
      assert.equal(rollbackTarget(st, 5), 2);
    });
    it('falls back to the newest older finished snapshot when none is marked good', () => {
      const st: HealthState = { snapshots: [snap(1), snap(2, bad), snap(3)], booted: 3 };
      assert.equal(rollbackTarget(st, 3), 1);
    });
    it('has no target when the booted snapshot is the only one', () => {
      assert.equal(rollbackTarget({ snapshots: [snap(1)], booted: 1 }, 1), undefined);
    });
  });

  describe('planBoot', () => {
    it('verifies a snapshot that is already good', () => {
      assert.deepEqual(planBoot({ snapshots: [snap(1, good)], booted: 1 }), { kind: 'verify', snapshot: 1 });
    });
    it('counts the next attempt of an unmarked snapshot', () => {
      const p = planBoot({ snapshots: [snap(1, good), snap(2, { [HEALTH_UD.attempts]: '1' })], booted: 2 });
      assert.deepEqual(p, { kind: 'check', snapshot: 2, attempt: 2 });
    });
    it('gives up after maxAttempts boots that never marked it good', () => {
      const p = planBoot({ snapshots: [snap(1, good), snap(2, { [HEALTH_UD.attempts]: '3' })], booted: 2 }, 3);
      assert.deepEqual(p, { kind: 'give-up', snapshot: 2, attempts: 3, rollbackTo: 1 });
    });
    it('re-checks a snapshot marked bad that was booted again on purpose', () => {
      const p = planBoot({ snapshots: [snap(1, good), snap(2, { ...bad, [HEALTH_UD.attempts]: '1' })], booted: 2 });
      assert.deepEqual(p, { kind: 'check', snapshot: 2, attempt: 2 });
    });
    it('refuses a root that is not a snapshot', () => {
      assert.throws(
        () => planBoot({ snapshots: [snap(1)] }),
        (e) => isTiuError(e, 'SYSROOT_NOT_SNAPSHOT'),
      );
      assert.throws(
        () => planBoot({ snapshots: [snap(1)], booted: 7 }),
        (e) => isTiuError(e, 'SNAPSHOT_NOT_FOUND'),
      );
    });
  });

  describe('runBootHealth', () => {
    it('marks a new snapshot good when its checks pass, counting the boot first', async () => {
      const f = fakeHost({ snapshots: [snap(1, good), snap(2)], booted: 2, default: 2 }, [ok('a'), ok('b')]);
      const r = await runBootHealth(f.host);
      assert.equal(r.outcome, 'good');
      assert.equal(r.attempt, 1);
      assert.deepEqual(f.calls, [
        `userdata 2 {"tiu-boot-attempts":"1"}`,
        'checks',
        `userdata 2 {"tiu-health":"good","tiu-health-failed":""}`,
      ]);
      assert.equal(f.state.snapshots[1]!.userdata[HEALTH_UD.health], 'good');
      assert.equal(f.state.default, 2);
    });

    it('rolls a failing new snapshot back to the last good one and reboots', async () => {
      const f = fakeHost({ snapshots: [snap(1, good), snap(2, good), snap(3)], booted: 3, default: 3 }, [
        ok('a'),
        fail('b'),
      ]);
      const r = await runBootHealth(f.host);
      assert.equal(r.outcome, 'rolled-back');
      assert.equal(r.rollbackTo, 2);
      assert.deepEqual(r.failed, ['b']);
      assert.equal(f.state.default, 2);
      assert.equal(f.state.snapshots[2]!.userdata[HEALTH_UD.health], 'bad');
      assert.equal(f.state.snapshots[2]!.userdata[HEALTH_UD.failed], 'b');
      assert.deepEqual(f.calls.slice(-3), [
        `userdata 3 {"tiu-health":"bad","tiu-health-failed":"b"}`,
        'default 2',
        'reboot',
      ]);
    });

    it('does not reboot when told not to', async () => {
      const f = fakeHost({ snapshots: [snap(1, good), snap(2)], booted: 2, default: 2 }, [fail('x')]);
      const r = await runBootHealth(f.host, { reboot: false });
      assert.equal(r.outcome, 'rolled-back');
      assert.equal(r.rebooting, false);
      assert.ok(!f.calls.includes('reboot'));
      assert.equal(f.state.default, 1);
    });

    it('never rolls back a snapshot proven good earlier', async () => {
      const f = fakeHost({ snapshots: [snap(1, good), snap(2, good)], booted: 2, default: 2 }, [fail('x')]);
      const r = await runBootHealth(f.host);
      assert.equal(r.outcome, 'failed-proven');
      assert.deepEqual(f.calls, ['checks']);
      assert.equal(f.state.default, 2);
    });

    it('rolls back without running checks once the attempts are used up', async () => {
      const f = fakeHost(
        { snapshots: [snap(1, good), snap(2, { [HEALTH_UD.attempts]: '2' })], booted: 2, default: 2 },
        [ok('a')],
      );
      const r = await runBootHealth(f.host, { maxAttempts: 2 });
      assert.equal(r.outcome, 'rolled-back');
      assert.ok(!f.calls.includes('checks'));
      assert.equal(f.state.default, 1);
      assert.match(f.state.snapshots[1]!.userdata[HEALTH_UD.failed]!, /not marked good after 2 boots/);
    });

    it('stays put (marked bad, no reboot) when there is nothing to roll back to', async () => {
      const f = fakeHost({ snapshots: [snap(1)], booted: 1, default: 1 }, [fail('x')]);
      const r = await runBootHealth(f.host);
      assert.equal(r.outcome, 'no-rollback-target');
      assert.ok(!f.calls.includes('reboot'));
      assert.equal(f.state.default, 1);
      assert.equal(f.state.snapshots[0]!.userdata[HEALTH_UD.health], 'bad');
    });

    it('keeps failed check names storable as snapper userdata', () => {
      assert.equal(failedValue(['a,b', 'c=d', 'e']), 'a_b;c_d;e');
    });
  });
});
