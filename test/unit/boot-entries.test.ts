import assert from 'node:assert/strict';
import { isTiuError } from '../../src/errors.ts';
import {
  entryName,
  loaderConfWith,
  markedName,
  parseEntryName,
  planReconcile,
  sanitizeCmdline,
  selectedEntry,
  verscmp,
  type EspEntry,
} from '../../src/deploy/boot/entries.ts';
import { snapshotFromCmdline } from '../../src/deploy/boot/index.ts';

describe('deploy/boot entries (pure)', () => {
  it('parses and builds entry names with boot counters', () => {
    assert.deepEqual(parseEntryName('tiu-12+2-1.conf'), { snapshot: 12, parked: false, triesLeft: 2, triesDone: 1 });
    assert.deepEqual(parseEntryName('tiuparked-3+3.conf'), { snapshot: 3, parked: true, triesLeft: 3 });
    assert.deepEqual(parseEntryName('tiu-4.conf'), { snapshot: 4, parked: false });
    assert.equal(parseEntryName('other-4.conf'), undefined);
    assert.equal(entryName({ snapshot: 5, parked: false, triesLeft: 0, triesDone: 3 }), 'tiu-5+0-3.conf');
    assert.equal(markedName({ snapshot: 5, parked: false, triesLeft: 1, triesDone: 2 }, 'good'), 'tiu-5.conf');
    assert.equal(markedName({ snapshot: 5, parked: false, triesLeft: 1, triesDone: 2 }, 'bad'), 'tiu-5+0-2.conf');
  });

  it("selects as systemd-boot 252 does: the glob's last match, entries without tries first", () => {
    assert.ok(verscmp('tiu-10.conf', 'tiu-9.conf') > 0);
    assert.equal(selectedEntry(['tiu-1.conf', 'tiu-9.conf', 'tiu-10+3.conf'], 'tiu-*'), 'tiu-10+3.conf');
    assert.equal(
      selectedEntry(['tiu-1.conf', 'tiu-9.conf', 'tiu-10+0-3.conf'], 'tiu-*'),
      'tiu-9.conf',
      'no tries left: the previous entry',
    );
    assert.equal(
      selectedEntry(['tiu-1.conf', 'tiuparked-2+3.conf'], 'tiu-*'),
      'tiu-1.conf',
      'parked entries are not candidates',
    );
    assert.equal(selectedEntry(['a.conf', 'b.conf'], 'tiu-*'), 'b.conf', 'no match: the last entry');
  });

  it('refuses command lines that would inject entry keys, drops root=/rootflags=', () => {
    assert.deepEqual(sanitizeCmdline('quiet root=/dev/sda rootflags=x console=ttyS0 a="b c"\n', 't'), [
      'quiet',
      'console=ttyS0',
      'a="b c"',
    ]);
    for (const bad of ['quiet\ninitrd /x', 'a\rb', 'a\u0000b', 'a\u001bb', 'unbalanced "quote']) {
      assert.throws(
        () => sanitizeCmdline(bad, 't'),
        (e: unknown) => isTiuError(e, 'CMDLINE_INVALID'),
        JSON.stringify(bad),
      );
    }
    assert.throws(
      () => sanitizeCmdline(Buffer.from([0x71, 0xff]), 't'),
      (e: unknown) => isTiuError(e, 'CMDLINE_INVALID'),
    );
  });

  it('loader.conf keeps other settings and gets `default tiu-*`', () => {
    assert.equal(loaderConfWith('timeout 3\ndefault foo.conf\n'), 'default tiu-*\ntimeout 3\n');
  });

  it('reconcile: gone snapshots lose entries and files; newer than the default parked; the default unparked and bootable', () => {
    const e = (name: string, files: string[] = []): EspEntry => ({ ...parseEntryName(name)!, name, files });
    const plan = planReconcile({
      snapshots: [
        { number: 1, inProgress: false, health: 'good' },
        { number: 3, inProgress: false },
        { number: 4, inProgress: false, health: 'bad' },
        { number: 5, inProgress: false },
      ],
      default: 3,
      entries: [
        e('tiu-1.conf', ['tiu/a/linux-1']),
        e('tiu-2.conf', ['tiu/b/linux-2']),
        e('tiuparked-3+0-3.conf', ['tiu/a/linux-1']),
        e('tiu-4+2-1.conf'),
        e('tiu-5+3.conf'),
      ],
      files: ['tiu/a/linux-1', 'tiu/b/linux-2', 'loader/entries/.tiu-tmp-x'],
      loaderDefault: undefined,
      tries: 3,
    });
    assert.deepEqual(plan.remove, ['tiu-2.conf']);
    assert.deepEqual(
      [...plan.rename].sort((a, b) => a.to.localeCompare(b.to)),
      [
        { from: 'tiuparked-3+0-3.conf', to: 'tiu-3+3.conf' },
        { from: 'tiu-4+2-1.conf', to: 'tiuparked-4+0-1.conf' },
        { from: 'tiu-5+3.conf', to: 'tiuparked-5+3.conf' },
      ],
    );
    assert.deepEqual(plan.unusedFiles, ['tiu/b/linux-2', 'loader/entries/.tiu-tmp-x']);
    assert.deepEqual(plan.missing, []);
    assert.equal(plan.setLoaderDefault, true);
  });

  it('finds the booted snapshot in a kernel command line', () => {
    assert.equal(snapshotFromCmdline('BOOT_IMAGE=/x root=UUID=1 rootflags=subvol=@/.snapshots/7/snapshot quiet'), 7);
    assert.equal(snapshotFromCmdline('root=/dev/sda rootflags=compress=zstd,subvol=/@/.snapshots/12/snapshot'), 12);
    assert.equal(snapshotFromCmdline('root=/dev/sda'), undefined);
  });
});
