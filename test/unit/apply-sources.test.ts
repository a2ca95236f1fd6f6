/**
 * Content sources (issue 16): the planner asks other snapshots for content the old tree lacks,
 * the update picks which snapshots, and the executor takes a source's file only when it is still
 * what was matched, resolved beneath that snapshot's root without following links.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, symlink, unlink, writeFile } from 'node:fs/promises';
import { existsSync, lstatSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import {
  executePlan,
  flattenLayers,
  openerProvider,
  planApply,
  SnapshotSource,
  type ContentSource,
  type ExistingEntry,
  type SnapshotFile,
  type TreeEntry,
} from '../../src/deploy/apply/index.ts';
import { takeFromSnapshot } from '../../src/deploy/apply/from-snapshot.ts';
import { SafeRoot } from '../../src/deploy/apply/fsops.ts';
import { existingFromStats, indexOldTree } from '../../src/deploy/apply/scan.ts';
import { deriveState } from '../../src/deploy/state.ts';
import { indexesToKeep, MAX_CONTENT_SOURCES, sourceSnapshots } from '../../src/deploy/update/sources.ts';
import type { SnapperSnapshot } from '../../src/host/snapper.ts';
import { sha256 } from '../../src/oci/digest.ts';

const T = 1_700_000_000_000_000_000n;

function reg(path: string, content: string): TreeEntry {
  return {
    path,
    type: 'reg',
    mode: 0o644,
    uid: process.getuid?.() ?? 0,
    gid: process.getgid?.() ?? 0,
    mtimeNs: T,
    xattrs: {},
    size: Buffer.byteLength(content),
    digest: sha256(content),
    source: { layer: 0, offset: 0, endOffset: 1 },
  };
}

/** A source in memory that records what it was asked. */
function fakeSource(snapshot: number, files: Record<string, string>): ContentSource & { asked: string[] } {
  const asked: string[] = [];
  return {
    snapshot,
    asked,
    find(size, digest) {
      asked.push(digest);
      for (const [path, content] of Object.entries(files))
        if (Buffer.byteLength(content) === size && sha256(content) === digest) {
          const seen = { path, type: 'reg', size, ino: 1n, mtimeNs: T, ctimeNs: T } as ExistingEntry;
          return Promise.resolve({ snapshot, root: `/snap/${snapshot}`, seen, hashedHere: false });
        }
      return Promise.resolve(undefined);
    },
  };
}

function emptyOld(files: Record<string, string> = {}) {
  const entries = new Map<string, ExistingEntry>();
  const mk = (path: string, type: 'dir' | 'reg', size: number): ExistingEntry => ({
    path,
    type,
    mode: 0o755,
    uid: 0,
    gid: 0,
    size,
    mtimeNs: T,
    ctimeNs: T,
    ino: BigInt(entries.size + 1),
    dev: 1n,
    nlink: 1,
    rdev: 0n,
    xattrs: {},
  });
  entries.set('', mk('', 'dir', 0));
  for (const [p, c] of Object.entries(files)) entries.set(p, mk(p, 'reg', Buffer.byteLength(c)));
  const hasher = { digestOf: (e: ExistingEntry) => Promise.resolve(sha256(files[e.path] ?? '')) };
  return { old: indexOldTree('/old', entries), hasher };
}

describe('deploy/apply content sources: the plan', () => {
  it('takes content the old tree lacks from the first source holding it, as a reflink that downloads nothing', async () => {
    const { old, hasher } = emptyOld({ booted: 'in the booted tree' });
    const pending = fakeSource(3, { 'usr/a': 'only in the pending one', 'usr/b': 'in both sources' });
    const older = fakeSource(2, { 'usr/b': 'in both sources', 'usr/c': 'only in the older one' });
    const tree = flattenLayers([
      [
        reg('x-booted', 'in the booted tree'),
        reg('x-a', 'only in the pending one'),
        reg('x-b', 'in both sources'),
        reg('x-c', 'only in the older one'),
        reg('x-new', 'nowhere yet'),
        reg('x-new-twice', 'nowhere yet'),
      ],
    ]);
    const plan = await planApply(tree, old, hasher, { sources: [pending, older] });
    const by = (p: string) => [...plan.actions].find((a) => a.entry.path === p)!;
    assert.equal(by('x-booted').kind, 'reflink');
    assert.equal(by('x-booted').fromSnapshot, undefined);
    assert.equal(by('x-a').fromSnapshot?.snapshot, 3);
    assert.equal(by('x-a').from, 'usr/a');
    assert.equal(by('x-b').fromSnapshot?.snapshot, 3, 'the pending default is asked first');
    assert.equal(by('x-c').fromSnapshot?.snapshot, 2);
    assert.equal(by('x-new').kind, 'write');
    assert.equal(by('x-new-twice').fromNew, true);
    assert.deepEqual(
      plan.fetch.map((e) => e.path),
      ['x-new'],
    );
    assert.equal(plan.summary.reflink.count, 5);
    assert.equal(plan.summary.fromSnapshots.count, 3);
    assert.equal(plan.summary.fromSnapshots.bytes, 23 + 15 + 21);
    assert.equal(plan.summary.write.count, 1);
    // Content the old tree has, or a file written before, is never asked of a source.
    assert.ok(!pending.asked.includes(sha256('in the booted tree')));
    assert.equal(pending.asked.filter((d) => d === sha256('nowhere yet')).length, 1);
  });
});

describe('deploy/update content sources: which snapshots', () => {
  const row = (number: number, userdata: Record<string, string> = {}): SnapperSnapshot => ({
    number,
    type: 'single',
    default: false,
    active: false,
    date: '',
    description: '',
    cleanup: '',
    userdata,
  });
  const tiu = (d: string) => ({ 'tiu-digest': `sha256:${d}`, 'tiu-image': 'oci:x' });

  it('the pending default first, then other tiu snapshots newest first; not the booted one, unfinished or foreign ones', () => {
    const s = deriveState(
      '/sys',
      [
        row(1),
        row(2, tiu('2')),
        row(3, tiu('3')),
        row(4, tiu('4')),
        row(5, { ...tiu('5'), 'tiu-in-progress': 'yes' }),
        row(6),
      ],
      3,
      2,
    );
    assert.deepEqual(sourceSnapshots(s, 3), [2, 4]);
    assert.deepEqual(indexesToKeep(s, 3, 7), [2, 3, 4, 7]);
  });

  it(`asks at most ${MAX_CONTENT_SOURCES} snapshots`, () => {
    const rows = [row(1), ...Array.from({ length: 8 }, (_, i) => row(i + 2, tiu(String(i))))];
    const s = deriveState('/sys', rows, 1, 3);
    assert.deepEqual(sourceSnapshots(s, 1), [3, 9, 8, 7]);
    assert.deepEqual(indexesToKeep(s, 1, 10), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  });
});

describe('deploy/apply content sources: on disk', () => {
  let dir: string;
  let snap: string;
  let out: string;
  const content = 'the content of a file in another snapshot\n';
  const seenOf = (rel: string): ExistingEntry => existingFromStats(rel, lstatSync(join(snap, rel), { bigint: true }));
  const fileOf = (rel: string, hashedHere = false): SnapshotFile => ({
    snapshot: 7,
    root: snap,
    seen: seenOf(rel),
    hashedHere,
  });

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tiu-sources-'));
    snap = join(dir, 'snap');
    out = join(dir, 'out');
    await mkdir(join(snap, 'usr/lib'), { recursive: true });
    await mkdir(out);
    await writeFile(join(snap, 'usr/lib/file'), content);
    await writeFile(join(snap, 'usr/lib/same-size'), 'x'.repeat(content.length));
    await writeFile(join(snap, 'usr/lib/other-size'), 'short');
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('SnapshotSource finds a file by size and sha256, hashing only same-size files; a missing snapshot has nothing', async () => {
    const s = await SnapshotSource.open({ snapshot: 7, root: snap }, []);
    const f = await s.find(content.length, sha256(content));
    assert.equal(f?.seen.path, 'usr/lib/file');
    assert.equal(f?.hashedHere, true);
    assert.equal(await s.find(content.length, sha256('y'.repeat(content.length))), undefined);
    assert.equal(s.index.hashedFiles, 2, 'file and same-size, each once, not other-size');
    const gone = await SnapshotSource.open({ snapshot: 8, root: join(dir, 'nope') }, []);
    assert.equal(await gone.find(5, sha256('short')), undefined);
  });

  it('takes an unchanged file, verifying it when the digest came from a saved index', async () => {
    const src = await SafeRoot.open(snap, 'binary');
    const to = Buffer.from(join(out, 'a'));
    const got = await takeFromSnapshot(src, fileOf('usr/lib/file'), reg('x', content), to, true);
    assert.equal(got.ok, true);
    assert.equal(await readFile(join(out, 'a'), 'utf8'), content);
  });

  it('refuses a file whose saved digest lies, and leaves nothing behind', async () => {
    const src = await SafeRoot.open(snap, 'binary');
    const liar = fileOf('usr/lib/same-size');
    const got = await takeFromSnapshot(src, liar, reg('x', content), Buffer.from(join(out, 'b')), true);
    assert.equal(got.ok, false);
    assert.match(!got.ok ? got.why : '', /content is not sha256:/);
    assert.equal(existsSync(join(out, 'b')), false);
  });

  it('refuses a file that changed, vanished, became a symlink or lies behind a symlinked directory', async () => {
    const src = () => SafeRoot.open(snap, 'binary');
    const entry = reg('x', content);
    // Changed in place with the same size: ctime (and content) differ from what was matched.
    const changed = fileOf('usr/lib/file', true);
    await new Promise((r) => setTimeout(r, 20));
    await writeFile(join(snap, 'usr/lib/file'), content.toUpperCase());
    let got = await takeFromSnapshot(await src(), changed, entry, Buffer.from(join(out, 'c')), true);
    assert.deepEqual(got, { ok: false, why: 'it changed since it was matched' });
    // Replaced by a symlink to a file with the right content elsewhere: not followed.
    await writeFile(join(dir, 'outside'), content);
    const before = fileOf('usr/lib/same-size');
    await unlink(join(snap, 'usr/lib/same-size'));
    await symlink(join(dir, 'outside'), join(snap, 'usr/lib/same-size'));
    got = await takeFromSnapshot(await src(), before, entry, Buffer.from(join(out, 'd')), true);
    assert.equal(got.ok, false);
    // A parent directory turned into a symlink pointing outside the snapshot.
    await mkdir(join(dir, 'elsewhere/lib'), { recursive: true });
    await writeFile(join(dir, 'elsewhere/lib/file'), content);
    const seen = fileOf('usr/lib/file');
    await rm(join(snap, 'usr'), { recursive: true });
    await symlink(join(dir, 'elsewhere'), join(snap, 'usr'));
    got = await takeFromSnapshot(await src(), seen, entry, Buffer.from(join(out, 'e')), true);
    assert.equal(got.ok, false);
    assert.match(!got.ok ? got.why : '', /symlink/);
    // Vanished.
    await unlink(join(snap, 'usr'));
    got = await takeFromSnapshot(await src(), seen, entry, Buffer.from(join(out, 'f')), true);
    assert.equal(got.ok, false);
    for (const n of ['c', 'd', 'e', 'f']) assert.equal(existsSync(join(out, n)), false, n);
  });

  it('the executor fetches from the provider what a source no longer holds, and says so', async () => {
    const target = join(dir, 'target');
    await mkdir(target);
    const good = reg('good', content);
    const bad = reg('bad', 'x'.repeat(content.length));
    const s = await SnapshotSource.open({ snapshot: 7, root: snap }, []);
    const old = emptyOld();
    const plan = await planApply(flattenLayers([[good, bad]]), old.old, old.hasher, { sources: [s] });
    assert.equal(plan.summary.fromSnapshots.count, 2);
    assert.equal(plan.fetch.length, 0);
    // same-size changes behind the plan's back (a new ctime): the executor must not take it.
    await new Promise((r) => setTimeout(r, 20));
    await writeFile(join(snap, 'usr/lib/same-size'), 'z'.repeat(content.length));
    const fetched: string[] = [];
    const provider = openerProvider((e) => {
      fetched.push(e.path);
      return Readable.from([Buffer.from(e.path === 'bad' ? 'x'.repeat(content.length) : content)]);
    });
    const report = await executePlan(target, plan, provider, { allowCopyFallback: true });
    assert.deepEqual(fetched, ['bad']);
    assert.equal(report.reflinkedFromSnapshots.count, 1);
    assert.equal(report.snapshotFallbacks.count, 1);
    assert.equal(report.written.count, 1);
    assert.match(report.warnings.join('\n'), /\/bad: not taken from snapshot 7 \(\/usr\/lib\/same-size\)/);
    assert.equal(await readFile(join(target, 'good'), 'utf8'), content);
    assert.equal(await readFile(join(target, 'bad'), 'utf8'), 'x'.repeat(content.length));
  });
});
