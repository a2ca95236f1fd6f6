import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { planEtcMerge, sameNode, scanEtc, type EtcNode, type EtcTree } from '../../src/deploy/etc-merge.ts';

const f = (content: string, mode = 0o644, uid = 0): EtcNode => ({ type: 'file', mode, uid, gid: 0, content });
const d = (mode = 0o755): EtcNode => ({ type: 'dir', mode, uid: 0, gid: 0, content: '' });
const l = (target: string): EtcNode => ({ type: 'symlink', mode: 0o777, uid: 0, gid: 0, content: target });
const tree = (o: Record<string, EtcNode>): EtcTree => new Map(Object.entries(o));

function ops(plan: ReturnType<typeof planEtcMerge>): string[] {
  return plan.actions.map((a) => `${a.op} ${a.path}${a.op === 'tiunew' ? ' -> ' + a.to : ''}`);
}

describe('deploy/etc-merge planning', () => {
  it('untouched files take the new default, admin changes are kept', () => {
    const base = tree({ 'a.conf': f('A1'), 'b.conf': f('B1') });
    const ours = tree({ 'a.conf': f('A1'), 'b.conf': f('B-admin') });
    const theirs = tree({ 'a.conf': f('A2'), 'b.conf': f('B1') });
    const p = planEtcMerge(base, ours, theirs);
    assert.deepEqual(ops(p), ['take a.conf']);
    assert.deepEqual(p.keptLocal, ['b.conf']);
    assert.deepEqual(p.conflicts, []);
  });
  it('a conflict keeps the admin file and writes the new default beside it as .tiunew', () => {
    const p = planEtcMerge(tree({ 'x.conf': f('1') }), tree({ 'x.conf': f('admin') }), tree({ 'x.conf': f('2') }));
    assert.deepEqual(ops(p), ['tiunew x.conf -> x.conf.tiunew']);
    assert.deepEqual(p.conflicts, [{ path: 'x.conf', kind: 'both-changed', tiunew: 'x.conf.tiunew' }]);
  });
  it('the same change on both sides is no conflict', () => {
    const p = planEtcMerge(tree({ x: f('1') }), tree({ x: f('2') }), tree({ x: f('2') }));
    assert.deepEqual(p.actions, []);
    assert.deepEqual(p.conflicts, []);
  });
  it('deletions: by the admin and unchanged upstream stays deleted; upstream and untouched goes', () => {
    const base = tree({
      'gone-admin': f('1'),
      'gone-up': f('1'),
      'gone-up-changed': f('1'),
      'gone-admin-changed': f('1'),
    });
    const ours = tree({ 'gone-up': f('1'), 'gone-up-changed': f('mine') });
    const theirs = tree({ 'gone-admin': f('1'), 'gone-admin-changed': f('2') });
    const p = planEtcMerge(base, ours, theirs);
    assert.deepEqual(ops(p).sort(), ['delete gone-up', 'tiunew gone-admin-changed -> gone-admin-changed.tiunew']);
    assert.deepEqual(p.conflicts.map((c) => `${c.path}:${c.kind}`).sort(), [
      'gone-admin-changed:deleted-by-admin-changed-upstream',
      'gone-up-changed:changed-by-admin-deleted-upstream',
    ]);
    assert.ok(p.keptLocal.includes('gone-admin'));
  });
  it('modes and symlink targets count as content', () => {
    const base = tree({ m: f('x', 0o644), s: l('a'), sm: l('a') });
    const ours = tree({ m: f('x', 0o600), s: l('a'), sm: l('mine') });
    const theirs = tree({ m: f('x', 0o644), s: l('b'), sm: l('b') });
    const p = planEtcMerge(base, ours, theirs);
    assert.deepEqual(ops(p), ['take s', 'tiunew sm -> sm.tiunew']);
    assert.deepEqual(p.keptLocal, ['m']);
    assert.ok(!sameNode(f('x', 0o644), f('x', 0o600)));
    assert.ok(!sameNode(f('x', 0o644, 0), f('x', 0o644, 1)));
  });
  it('new files from the image are added; files the admin added stay', () => {
    const p = planEtcMerge(
      tree({}),
      tree({ 'local.conf': f('mine'), both: f('mine') }),
      tree({ 'new.conf': f('n'), both: f('theirs') }),
    );
    assert.deepEqual(ops(p), ['tiunew both -> both.tiunew', 'take new.conf']);
    assert.deepEqual(
      p.conflicts.map((c) => c.kind),
      ['both-changed'],
    );
  });
  it('a directory removed upstream stays while the admin has files in it', () => {
    const base = tree({ d: d(), 'd/a': f('1'), e: d(), 'e/a': f('1') });
    const ours = tree({ d: d(), 'd/a': f('1'), 'd/mine': f('m'), e: d(), 'e/a': f('1') });
    const p = planEtcMerge(base, ours, tree({}));
    assert.deepEqual(ops(p), ['delete e/a', 'delete e', 'delete d/a']);
    assert.deepEqual(p.keptNonEmpty, ['d']);
  });
  it('never plans a write below a path the admin made a non-directory', () => {
    const base = tree({ d: d(), 'd/a': f('1') });
    const ours = tree({ d: l('/somewhere') });
    const theirs = tree({ d: d(), 'd/a': f('2'), 'd/b': f('new') });
    const p = planEtcMerge(base, ours, theirs);
    assert.ok(!p.actions.some((a) => a.path.startsWith('d/')), JSON.stringify(ops(p)));
    assert.deepEqual(p.conflicts.map((c) => `${c.path}:${c.kind}`).sort(), [
      'd/a:parent-not-directory',
      'd/b:parent-not-directory',
    ]);
  });
  it('leaves passwd, group, shadow, gshadow to the users merge', () => {
    const p = planEtcMerge(
      tree({ passwd: f('1') }),
      tree({ passwd: f('1') }),
      tree({ passwd: f('2'), shadow: f('s') }),
    );
    assert.deepEqual(p.actions, []);
  });
});

describe('deploy/etc-merge scanning (issue 19: memory)', function () {
  this.timeout(60_000);
  const peakRssMiB = (): number => Number(/VmHWM:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1]) / 1024;

  it('hashes a file piece by piece, never holding it whole (peak RSS of a 256 MiB file)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'tiu-etc-scan-'));
    try {
      const big = 256 * 1024 * 1024;
      const fh = await open(join(dir, 'huge.conf'), 'w');
      await fh.truncate(big); // sparse: zeros without using the disk
      await fh.close();
      await writeFile(join(dir, 'small.conf'), 'x=1\n');
      writeFileSync('/proc/self/clear_refs', '5'); // the peak from now on
      const before = peakRssMiB();
      const scanned = await scanEtc(dir);
      const grew = peakRssMiB() - before;
      assert.equal(scanned.get('small.conf')?.content, createHash('sha256').update('x=1\n').digest('hex'));
      const zeros = createHash('sha256');
      const block = Buffer.alloc(1024 * 1024);
      for (let left = big; left > 0; left -= block.length) zeros.update(block);
      assert.equal(scanned.get('huge.conf')?.content, zeros.digest('hex'));
      // Read whole, the file alone was 256 MiB of RSS.
      assert.ok(grew < 48, `the scan raised the peak RSS by ${grew.toFixed(1)} MiB`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
