/**
 * Programs take text arguments, file names are bytes: removeXattr (setfattr -x) and mknod reach
 * a file whose own name is not UTF-8 by a stand-in name, and leave it under its own name.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readTreeXattrs, removeXattr, setXattrs } from '../../src/host/xattr.ts';

describe('host: programs on names that are not UTF-8', () => {
  let dir = '';
  const name = Buffer.from('caf\xe9', 'latin1');
  let path: Buffer;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tiu-progpath-'));
    path = Buffer.concat([Buffer.from(dir + '/'), name]);
    await writeFile(path, 'x');
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  it('removeXattr takes one attribute off the file and keeps its name', async () => {
    await setXattrs([{ path, set: { 'user.a': Buffer.from([0, 1, 2]), 'user.b': Buffer.from('kept') } }]);
    await removeXattr(path, 'user.a');
    const names = await readdir(dir, { encoding: 'buffer' });
    assert.deepEqual(names, [name]);
    const x = await readTreeXattrs(dir);
    assert.deepEqual(
      (x.get(name.toString('latin1')) ?? []).map(([k]) => k),
      ['user.b'],
    );
  });

  it('a failing program still leaves the file under its own name', async () => {
    await assert.rejects(removeXattr(path, 'user.absent'));
    assert.deepEqual(await readdir(dir, { encoding: 'buffer' }), [name]);
  });
});
