import assert from 'node:assert/strict';
import { chmod, chown, lstat, mkdir, mkdtemp, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../../src/host/exec.ts';
import { mergeEtc } from '../../src/deploy/etc-merge.ts';
import { mergeUserDb } from '../../src/deploy/users-merge.ts';
import { requireRoot } from '../helpers/env.ts';

async function put(root: string, rel: string, content: string, mode = 0o644, uid = 0, gid = 0): Promise<void> {
  const p = join(root, rel);
  await mkdir(join(p, '..'), { recursive: true });
  await writeFile(p, content);
  await chmod(p, mode);
  await chown(p, uid, gid);
}

describe('deploy/etc-merge and users-merge on disk (integration)', function () {
  let dir: string;
  let base: string;
  let ours: string;
  let theirs: string;
  before(function () {
    requireRoot(this, 'needs root (owners of merged files)');
  });
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tiu-etc-'));
    base = join(dir, 'base');
    ours = join(dir, 'ours');
    theirs = join(dir, 'theirs');
    for (const d of [base, ours, theirs]) await mkdir(d);
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('three-way merges /etc: updates untouched files, keeps admin changes, writes .tiunew on conflict', async () => {
    for (const d of [base, ours, theirs]) {
      await put(d, 'keep-admin.conf', d === ours ? 'admin setting\n' : 'default\n');
    }
    await put(base, 'untouched.conf', 'v1\n');
    await put(ours, 'untouched.conf', 'v1\n');
    await put(theirs, 'untouched.conf', 'v2 default\n', 0o640, 0, 5);
    await put(base, 'sshd_config', 'Port 22\n');
    await put(ours, 'sshd_config', 'Port 2222\n');
    await put(theirs, 'sshd_config', 'Port 22\nUsePAM yes\n', 0o600);
    await put(base, 'deleted-by-admin', 'x\n');
    await put(theirs, 'deleted-by-admin', 'x\n');
    await put(base, 'dropped-upstream', 'old\n');
    await put(ours, 'dropped-upstream', 'old\n');
    await put(theirs, 'new.d/added.conf', 'brand new\n', 0o600, 7, 8);
    await run('setfattr', [
      '-h',
      '-n',
      'security.selinux',
      '-v',
      'system_u:object_r:etc_t:s0',
      join(theirs, 'new.d/added.conf'),
    ]);
    for (const d of [base, ours]) await symlink('/usr/share/zoneinfo/UTC', join(d, 'localtime'));
    await symlink('/usr/share/zoneinfo/Europe/Berlin', join(theirs, 'localtime'));
    await put(ours, 'admin-only.conf', 'mine\n');

    const r = await mergeEtc(base, ours, theirs);

    assert.equal(await readFile(join(ours, 'keep-admin.conf'), 'utf8'), 'admin setting\n');
    assert.equal(await readFile(join(ours, 'untouched.conf'), 'utf8'), 'v2 default\n');
    const st = await lstat(join(ours, 'untouched.conf'));
    assert.equal(st.mode & 0o777, 0o640);
    assert.equal(st.gid, 5);
    assert.equal(await readFile(join(ours, 'sshd_config'), 'utf8'), 'Port 2222\n');
    assert.equal(await readFile(join(ours, 'sshd_config.tiunew'), 'utf8'), 'Port 22\nUsePAM yes\n');
    assert.equal((await lstat(join(ours, 'sshd_config.tiunew'))).mode & 0o777, 0o600);
    await assert.rejects(lstat(join(ours, 'deleted-by-admin')));
    await assert.rejects(lstat(join(ours, 'dropped-upstream')));
    assert.equal(await readFile(join(ours, 'new.d/added.conf'), 'utf8'), 'brand new\n');
    const added = await lstat(join(ours, 'new.d/added.conf'));
    assert.deepEqual([added.uid, added.gid, added.mode & 0o777], [7, 8, 0o600]);
    assert.match(
      (await run('getfattr', ['-h', '-n', 'security.selinux', '--only-values', join(ours, 'new.d/added.conf')])).stdout,
      /etc_t/,
    );
    assert.equal(await readlink(join(ours, 'localtime')), '/usr/share/zoneinfo/Europe/Berlin');
    assert.equal(await readFile(join(ours, 'admin-only.conf'), 'utf8'), 'mine\n');
    assert.deepEqual(r.conflicts, [{ path: 'sshd_config', kind: 'both-changed', tiunew: 'sshd_config.tiunew' }]);
    assert.equal(r.tiunew, 1);
    assert.equal(r.deleted, 1);
  });

  it('refuses to write through a symlink the admin put where the image has a directory', async () => {
    const outside = join(dir, 'outside');
    await mkdir(outside);
    await put(base, 'd/a.conf', '1\n');
    await symlink(outside, join(ours, 'd'));
    await put(theirs, 'd/a.conf', '2\n');
    await put(theirs, 'd/b.conf', 'new\n');
    const r = await mergeEtc(base, ours, theirs);
    assert.deepEqual(
      r.conflicts.map((c) => c.kind),
      ['parent-not-directory', 'parent-not-directory'],
    );
    assert.deepEqual((await run('ls', ['-A', outside])).stdout, '');
  });

  it('merges passwd/group/shadow/gshadow: the new system user appears, existing users and passwords stay, clashes are reported', async () => {
    const bp = 'root:x:0:0:root:/root:/bin/bash\n';
    const bg = 'root:x:0:\nshadow:x:42:\n';
    await put(base, 'passwd', bp);
    await put(base, 'group', bg);
    await put(ours, 'passwd', bp + 'alice:x:1000:100::/home/alice:/bin/bash\nbob:x:470:100::/home/bob:/bin/bash\n');
    await put(ours, 'group', bg + 'users:x:100:\n');
    await put(
      ours,
      'shadow',
      'root:$6$secretroot:19000::::::\nalice:$6$secretalice:19000::::::\nbob:!:1::::::\n',
      0o640,
      0,
      42,
    );
    await put(ours, 'gshadow', 'root:::\nshadow:::\nusers:::\n', 0o640, 0, 42);
    await put(
      theirs,
      'passwd',
      bp + 'chrony:x:480:480::/var/lib/chrony:/sbin/nologin\npolkitd:x:470:470::/:/sbin/nologin\n',
    );
    await put(theirs, 'group', bg + 'chrony:x:480:\npolkitd:x:470:\n');
    await put(theirs, 'shadow', 'root:*:19500::::::\nchrony:!:19500::::::\npolkitd:!:19500::::::\n', 0o640, 0, 42);
    await put(theirs, 'gshadow', 'root:::\nshadow:::\nchrony:!::\npolkitd:!::\n', 0o640, 0, 42);

    const r = await mergeUserDb(base, ours, theirs);
    const passwd = await readFile(join(ours, 'passwd'), 'utf8');
    const shadow = await readFile(join(ours, 'shadow'), 'utf8');
    assert.match(passwd, /^chrony:x:480:480:/m);
    assert.match(passwd, /^alice:x:1000:/m);
    assert.doesNotMatch(passwd, /^polkitd:/m);
    assert.match(shadow, /^root:\$6\$secretroot:/m);
    assert.match(shadow, /^alice:\$6\$secretalice:/m);
    assert.match(shadow, /^chrony:!:/m);
    assert.match(await readFile(join(ours, 'group'), 'utf8'), /^chrony:x:480:$/m);
    assert.deepEqual(r.clashes, [
      { kind: 'uid', name: 'polkitd', id: 470, existing: 'bob', existingId: 470, why: 'id-taken' },
    ]);
    const st = await lstat(join(ours, 'shadow'));
    assert.deepEqual([st.mode & 0o777, st.gid], [0o640, 42]);
  });
});
