import assert from 'node:assert/strict';
import { planUsersMerge } from '../../src/deploy/users-merge.ts';
import { isTiuError } from '../../src/errors.ts';

const basePasswd = 'root:x:0:0:root:/root:/bin/bash\nmessagebus:x:499:499::/run/dbus:/usr/sbin/nologin\n';
const baseGroup = 'root:x:0:\nwheel:x:10:\nmessagebus:x:499:\naudio:x:63:pulse\n';

describe('deploy/users-merge planning', () => {
  it("adds the image's new system accounts and keeps existing accounts and their passwords", () => {
    const ours = {
      passwd: basePasswd + 'alice:x:1000:100:Alice:/home/alice:/bin/bash\n',
      group: baseGroup + 'users:x:100:\n',
      shadow: 'root:$6$rootHASH:19000::::::\nmessagebus:!:19000::::::\nalice:$6$aliceHASH:19000:0:99999:7:::\n',
      gshadow: 'root:::\nwheel:::\n',
    };
    const theirs = {
      passwd:
        basePasswd.replace('/bin/bash', '/bin/sh') + 'chrony:x:498:498:chrony:/var/lib/chrony:/usr/sbin/nologin\n',
      group: baseGroup + 'chrony:x:498:\n',
      shadow: 'root:*:19500::::::\nmessagebus:!:19500::::::\nchrony:!:19500::::::\n',
      gshadow: 'root:::\nwheel:::\nchrony:!::\n',
    };
    const r = planUsersMerge({ passwd: basePasswd, group: baseGroup }, ours, theirs);
    assert.deepEqual(r.addedUsers, ['chrony']);
    assert.deepEqual(r.addedGroups, ['chrony']);
    assert.deepEqual(r.clashes, []);
    assert.equal(r.files.passwd, ours.passwd + 'chrony:x:498:498:chrony:/var/lib/chrony:/usr/sbin/nologin\n');
    assert.match(r.files.passwd, /^root:x:0:0:root:\/root:\/bin\/bash$/m, "the admin's root shell stays");
    assert.equal(r.files.shadow, ours.shadow + 'chrony:!:19500::::::\n');
    assert.match(r.files.shadow, /root:\$6\$rootHASH:/);
    assert.equal(r.files.group, ours.group + 'chrony:x:498:\n');
    assert.equal(r.files.gshadow, ours.gshadow + 'chrony:!::\n');
  });

  it('reports a UID clash and does not add or overwrite', () => {
    const ours = {
      passwd: basePasswd + 'bob:x:497:100::/home/bob:/bin/bash\n',
      group: baseGroup,
      shadow: 'bob:$6$bob:1::::::\n',
    };
    const theirs = {
      passwd: basePasswd + 'polkitd:x:497:497::/var/lib/polkit:/sbin/nologin\n',
      group: baseGroup + 'polkitd:x:497:\n',
      shadow: 'polkitd:!:1::::::\n',
    };
    const r = planUsersMerge({ passwd: basePasswd, group: baseGroup }, ours, theirs);
    assert.deepEqual(r.addedUsers, []);
    assert.deepEqual(r.clashes, [
      { kind: 'uid', name: 'polkitd', id: 497, existing: 'bob', existingId: 497, why: 'id-taken' },
    ]);
    assert.equal(r.files.passwd, ours.passwd);
    assert.equal(r.files.shadow, ours.shadow);
    assert.deepEqual(r.addedGroups, ['polkitd']);
  });

  it('reports a GID clash and a changed id of an existing account', () => {
    const ours = {
      passwd: basePasswd.replace('messagebus:x:499', 'messagebus:x:480'),
      group: baseGroup + 'mine:x:498:\n',
    };
    const theirs = { passwd: basePasswd, group: baseGroup + 'chrony:x:498:\n' };
    const r = planUsersMerge({ passwd: basePasswd, group: baseGroup }, ours, theirs);
    assert.deepEqual(r.clashes.map((c) => `${c.kind}:${c.name}:${c.why}:${c.existing}`).sort(), [
      'gid:chrony:id-taken:mine',
      'uid:messagebus:id-differs:messagebus',
    ]);
    assert.equal(r.files.group, ours.group);
    assert.equal(r.files.passwd, ours.passwd);
  });

  it('accounts the admin deleted stay deleted', () => {
    const ours = { passwd: 'root:x:0:0:root:/root:/bin/bash\n', group: 'root:x:0:\n' };
    const r = planUsersMerge({ passwd: basePasswd, group: baseGroup }, ours, { passwd: basePasswd, group: baseGroup });
    assert.deepEqual(r.addedUsers, []);
    assert.equal(r.files.passwd, ours.passwd);
    assert.equal(r.files.group, ours.group);
  });

  it('without a base (first update), every missing account is added', () => {
    const r = planUsersMerge(
      {},
      { passwd: 'root:x:0:0::/root:/bin/sh\n', group: 'root:x:0:\n' },
      { passwd: basePasswd, group: baseGroup },
    );
    assert.deepEqual(r.addedUsers, ['messagebus']);
    assert.deepEqual(r.addedGroups, ['wheel', 'messagebus', 'audio']);
  });

  it('merges group member lists: image additions join, admin removals stay removed, admin additions stay', () => {
    const base = { group: 'audio:x:63:pulse,old\nvideo:x:44:\n' };
    const ours = { group: 'audio:x:63:pulse,alice\nvideo:x:44:alice\n', gshadow: 'audio:!::pulse,alice\n' };
    const theirs = { group: 'audio:x:63:pulse,old,pipewire\nvideo:x:44:\n', gshadow: 'audio:!::pulse,pipewire\n' };
    const r = planUsersMerge(base, ours, theirs);
    assert.equal(r.files.group, 'audio:x:63:pulse,alice,pipewire\nvideo:x:44:alice\n');
    assert.deepEqual(r.addedMembers, { audio: ['pipewire'] });
    assert.equal(r.files.gshadow, 'audio:!::pulse,alice,pipewire\n');
  });

  it('keeps comments and NIS compat lines last', () => {
    const ours = { passwd: '# local\nroot:x:0:0::/root:/bin/sh\n+::::::\n' };
    const r = planUsersMerge({}, ours, {
      passwd: 'root:x:0:0::/root:/bin/sh\nsshd:x:71:65::/var/lib/sshd:/bin/false\n',
    });
    assert.equal(
      r.files.passwd,
      '# local\nroot:x:0:0::/root:/bin/sh\nsshd:x:71:65::/var/lib/sshd:/bin/false\n+::::::\n',
    );
    assert.match(r.files.shadow, /^sshd:!\*:/m);
  });

  it('refuses malformed lines with USER_DB_INVALID', () => {
    assert.throws(
      () => planUsersMerge({}, { passwd: 'root:x:0\n' }, {}),
      (e: unknown) => isTiuError(e, 'USER_DB_INVALID') && e.message.includes('line 1'),
    );
    assert.throws(
      () => planUsersMerge({}, {}, { passwd: 'svc:x:abc:1::/:/bin/false\n' }),
      (e: unknown) => isTiuError(e, 'USER_DB_INVALID'),
    );
  });
});
