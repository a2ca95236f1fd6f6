/**
 * src/deploy/snapshot-intent.ts: the records that let the next run claim a snapshot directory a
 * cut-off create or delete left, and only what tiu wrote counts as a record.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  clearCreating,
  clearDeleting,
  readCreating,
  readDeleting,
  recordCreating,
  recordDeleting,
  snapshotNumbers,
} from '../../src/deploy/snapshot-intent.ts';

describe('deploy/snapshot-intent: create and delete records in .snapshots', () => {
  let root = '';
  let snaps = '';
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'tiu-intent-'));
    snaps = join(root, '.snapshots');
    await mkdir(snaps);
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('a create record holds the highest numbered entry before the create, and clearing leaves no file', async () => {
    assert.equal(await readCreating(root), undefined);
    await recordCreating(root);
    assert.equal(await readCreating(root), 0, 'no snapshot yet: everything above 0');
    for (const n of ['1', '7', '12', 'x9', '.tiu-other']) await mkdir(join(snaps, n));
    assert.deepEqual(
      (await snapshotNumbers(root)).sort((a, b) => a - b),
      [1, 7, 12],
    );
    await recordCreating(root);
    assert.equal(await readCreating(root), 12);
    await clearCreating(root);
    assert.equal(await readCreating(root), undefined);
    assert.deepEqual(
      (await readdir(snaps)).filter((n) => n.startsWith('.tiu-creating')),
      [],
    );
  });

  it('a delete record names its snapshot, independent of the create record', async () => {
    await recordDeleting(root, 41);
    await recordCreating(root);
    assert.equal(await readDeleting(root), 41);
    await clearDeleting(root);
    assert.equal(await readDeleting(root), undefined);
    assert.equal(await readCreating(root), 0);
  });

  it('what tiu did not write is no record: a symlink, a directory, other text, a large file', async () => {
    await writeFile(join(root, 'elsewhere'), '3\n');
    await symlink(join(root, 'elsewhere'), join(snaps, '.tiu-creating'));
    assert.equal(await readCreating(root), undefined, 'a symlink is not followed');
    await mkdir(join(snaps, '.tiu-deleting'));
    assert.equal(await readDeleting(root), undefined, 'a directory');
    await rm(join(snaps, '.tiu-creating'));
    for (const text of ['3', '3\n4\n', '-3\n', 'three\n', '1'.repeat(70) + '\n']) {
      await writeFile(join(snaps, '.tiu-creating'), text);
      assert.equal(await readCreating(root), undefined, JSON.stringify(text));
    }
  });

  it('writing replaces a symlink planted in its place instead of writing through it', async () => {
    await writeFile(join(root, 'target'), 'keep\n');
    await symlink(join(root, 'target'), join(snaps, '.tiu-creating'));
    await symlink(join(root, 'target'), join(snaps, '.tiu-creating.tmp'));
    await recordCreating(root);
    assert.equal(await readCreating(root), 0);
    assert.equal(await readFile(join(root, 'target'), 'utf8'), 'keep\n');
  });
});
