import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  describeSkipped,
  dropReserved,
  flattenLayers,
  fstabMountPoints,
  parseFstab,
  planApply,
  reservedRoot,
  reservedSet,
  SkipTally,
  unescapeFstab,
  type ExistingEntry,
  type TreeEntry,
} from '../../src/deploy/apply/index.ts';
import { indexOldTree } from '../../src/deploy/apply/scan.ts';
import { mountPointsToKeep } from '../../src/deploy/mount-points.ts';
import { PRESERVE } from '../../src/deploy/update.ts';
import { isTiuError } from '../../src/errors.ts';

const sha = (s: string) => `sha256:${createHash('sha256').update(s).digest('hex')}`;
const T = 1_700_000_000_000_000_000n;
const e = (path: string, type: TreeEntry['type'] = 'dir', extra: Partial<TreeEntry> = {}): TreeEntry => ({
  path,
  type,
  mode: 0o755,
  uid: 0,
  gid: 0,
  mtimeNs: T,
  xattrs: {},
  size: 0,
  ...(type === 'reg' ? { digest: sha(''), source: { layer: 0, offset: 0, endOffset: 1 } } : {}),
  ...(type === 'symlink' ? { linkname: 'x' } : {}),
  ...extra,
});

const MICROOS_FSTAB = `UUID=1234 / btrfs ro 0 0
UUID=1234 /var btrfs subvol=/@/var,x-initrd.mount 0 0
UUID=1234 /usr/local btrfs subvol=/@/usr/local 0 0
UUID=1234 /srv btrfs subvol=/@/srv 0 0
UUID=1234 /root btrfs subvol=/@/root 0 0
UUID=1234 /opt btrfs subvol=/@/opt 0 0
UUID=1234 /home btrfs subvol=/@/home 0 0
UUID=1234 /boot/writable btrfs subvol=/@/boot/writable 0 0
UUID=1234 /boot/grub2/x86_64-efi btrfs subvol=/@/boot/grub2/x86_64-efi 0 0
UUID=1234 /.snapshots btrfs subvol=/@/.snapshots 0 0
UUID=ABCD /boot/efi vfat utf8 0 2
# a comment
UUID=5678 swap swap defaults 0 0
/dev/sdb1	/srv/my\\040data	ext4	defaults	0 2
tmpfs /tmp tmpfs defaults 0 0
/dev/sdc1 none swap sw 0 0
overlay /etc overlay defaults 0 0
`;

describe('reserved paths and fstab', () => {
  it('parses fstab with octal escapes, skips /, swap and none', () => {
    assert.equal(unescapeFstab('a\\040b\\011c\\134d'), 'a b\tc\\d');
    const all = parseFstab(MICROOS_FSTAB);
    assert.equal(all.find((x) => x.file.startsWith('/srv/'))?.file, '/srv/my data');
    assert.equal(all.find((x) => x.file === '/home')?.options, 'subvol=/@/home');
    assert.deepEqual(fstabMountPoints(MICROOS_FSTAB), [
      '.snapshots',
      'boot/efi',
      'boot/grub2/x86_64-efi',
      'boot/writable',
      'etc',
      'home',
      'opt',
      'root',
      'srv',
      'srv/my data',
      'tmp',
      'usr/local',
      'var',
    ]);
    assert.deepEqual(fstabMountPoints('LABEL=x relative ext4 defaults 0 0\n/dev/x /a/../b ext4 defaults\n\n   \n'), []);
  });

  it('the reserved set: PRESERVE and fstab mount points, never etc or usr', () => {
    const r = reservedSet(PRESERVE, fstabMountPoints(MICROOS_FSTAB));
    assert.ok(r.paths.includes('tmp') && r.paths.includes('srv/my data') && r.paths.includes('home'));
    assert.ok(!r.paths.includes('etc') && !r.paths.includes('usr') && !r.paths.includes(''));
    assert.deepEqual(reservedSet(['/var/', 'boot//efi']).paths, ['boot/efi', 'var']);
  });

  it('decides per entry: at or below a reserved path, tiu working names, non-directories holding reserved paths', () => {
    const r = reservedSet(PRESERVE);
    assert.equal(reservedRoot('home', 'symlink', r), 'home');
    assert.equal(reservedRoot('var/lib/x', 'reg', r), 'var');
    assert.equal(reservedRoot('usr/local', 'symlink', r), 'usr/local');
    assert.equal(reservedRoot('usr/local2', 'reg', r), null);
    assert.equal(reservedRoot('usr/bin/sh', 'reg', r), null);
    assert.equal(reservedRoot('boot/grub2/x86_64-efi/core.efi', 'reg', r), 'boot/grub2/x86_64-efi');
    assert.equal(reservedRoot('boot/grub2/grub.cfg', 'reg', r), null);
    // a symlink or file where a directory holding reserved paths must stay
    assert.equal(reservedRoot('boot', 'symlink', r), 'boot');
    assert.equal(reservedRoot('boot/grub2', 'reg', r), 'boot/grub2');
    assert.equal(reservedRoot('boot/grub2', 'dir', r), null);
    assert.equal(reservedRoot('usr', 'symlink', r), 'usr');
    for (const w of ['.tiu-etc-merge/etc/passwd', '.tiu-staging-abc/1', '.tiu-tmp-1-2', '.autorelabel'])
      assert.equal(reservedRoot(w, 'reg', r), w.split('/')[0]);
    assert.equal(reservedRoot('usr/.tiu-tmp-1-2', 'reg', r), null);
    assert.equal(reservedRoot('', 'dir', r), null);
  });

  it('drops entries and whiteouts under reserved paths, counts them, lists the top-most paths', () => {
    const r = reservedSet(PRESERVE, ['data']);
    const tally = new SkipTally();
    const layers = dropReserved(
      [
        [
          e(''),
          e('home'),
          e('usr'),
          e('usr/bin'),
          e('usr/bin/sh', 'reg', { size: 5 }),
          e('var'),
          e('var/lib'),
          e('var/lib/x', 'reg', { size: 7 }),
          e('opt', 'symlink'),
          e('.tiu-etc-merge/etc/passwd', 'reg', { size: 3 }),
        ],
        [
          e('.wh.home', 'reg'),
          e('var/.wh..wh..opq', 'reg'),
          e('.wh.usr', 'reg'),
          e('usr/.wh..wh..opq', 'reg'),
          e('data/f', 'reg'),
          e('boot', 'symlink'),
        ],
      ],
      r,
      tally,
    );
    assert.deepEqual(
      layers.map((l) => l.map((x) => x.path)),
      [
        ['', 'usr', 'usr/bin', 'usr/bin/sh'],
        ['.wh.usr', 'usr/.wh..wh..opq'],
      ],
    );
    const rep = tally.report();
    // home and var as plain directories are the mount points both sides have: dropped, not counted
    assert.equal(rep.skipped.count, 8);
    assert.equal(rep.skipped.bytes, 10);
    assert.deepEqual(rep.skippedPaths, ['.tiu-etc-merge', 'boot', 'data', 'home', 'opt', 'var']);
    assert.equal(
      describeSkipped(rep),
      'skipped 8 entries under reserved paths: .tiu-etc-merge, boot, data, home, opt, var',
    );
    const many = new SkipTally();
    for (let i = 0; i < 30; i++)
      many.add(`m${String(i).padStart(2, '0')}`, { path: `m${String(i).padStart(2, '0')}/f`, type: 'reg' });
    assert.equal(many.report().skippedPaths.length, 20);
    assert.match(describeSkipped(many.report()), /^skipped 30 entries under reserved paths: m00, .*, …$/);
  });

  it('a directory under a reserved path that several layers carry (each with its parents) is counted once', () => {
    const r = reservedSet(PRESERVE, []);
    const tally = new SkipTally();
    const layers = dropReserved(
      [
        [e('usr'), e('usr/bin'), e('usr/bin/sh', 'reg', { size: 5 }), e('var'), e('var/lib'), e('var/lib/a', 'reg')],
        [e('var'), e('var/lib'), e('var/lib/b', 'reg', { size: 2 }), e('var/cache')],
        [e('var'), e('var/lib'), e('var/cache'), e('var/cache/c', 'reg')],
      ],
      r,
      tally,
    );
    assert.deepEqual(
      layers.map((l) => l.map((x) => x.path)),
      [['usr', 'usr/bin', 'usr/bin/sh'], [], []],
    );
    // var/lib and var/cache once each, three files
    assert.deepEqual(tally.report().skipped, { count: 5, bytes: 2 });
  });

  it('mount points to keep: top-most only (one inside @/var lives in @/var)', () => {
    assert.deepEqual(mountPointsToKeep(['var', 'var/lib/docker', 'boot/efi', 'proc', '', 'proc']), [
      'boot/efi',
      'proc',
      'var',
    ]);
  });
});

describe('planner: ancestors of preserved paths are never deleted', () => {
  let ino = 1n;
  const old = (paths: Record<string, ExistingEntry['type']>) => {
    const m = new Map<string, ExistingEntry>();
    for (const [p, type] of Object.entries({ '': 'dir', ...paths } as Record<string, ExistingEntry['type']>)) {
      m.set(p, {
        path: p,
        type,
        mode: 0o755,
        uid: 0,
        gid: 0,
        size: 0,
        mtimeNs: T,
        ctimeNs: T,
        ino: ino++,
        dev: 1n,
        nlink: 1,
        rdev: 0n,
        xattrs: {},
      });
    }
    return indexOldTree('/nowhere', m);
  };
  const hasher = { digestOf: () => Promise.resolve(sha('')) };
  const preserve = ['boot/grub2/x86_64-efi', 'boot/efi', 'var'];

  it('an image without boot/grub2 deletes its other children one by one, not boot/grub2', async () => {
    const o = old({
      boot: 'dir',
      'boot/grub2': 'dir',
      'boot/grub2/grub.cfg': 'reg',
      'boot/grub2/themes': 'dir',
      'boot/grub2/themes/a': 'reg',
      'boot/grub2/x86_64-efi': 'dir',
      'boot/efi': 'dir',
      'boot/vmlinuz': 'reg',
      usr: 'dir',
    });
    const plan = await planApply(flattenLayers([[e(''), e('usr')]]), o, hasher, { preserve });
    assert.deepEqual(plan.deletes, ['boot/grub2/grub.cfg', 'boot/grub2/themes', 'boot/vmlinuz']);
    assert.equal(plan.summary.delete.count, 4);
    // without preserve the whole of boot goes
    const all = await planApply(flattenLayers([[e(''), e('usr')]]), o, hasher, {});
    assert.deepEqual(all.deletes, ['boot']);
  });

  it('refuses a non-directory of the image at or above a preserved path', async () => {
    const o = old({ boot: 'dir', 'boot/grub2': 'dir', 'boot/grub2/x86_64-efi': 'dir', var: 'dir' });
    await assert.rejects(
      planApply(flattenLayers([[e(''), e('boot', 'symlink')]]), o, hasher, { preserve }),
      (x: unknown) => isTiuError(x, 'PATH_UNSAFE'),
    );
    await assert.rejects(
      planApply(flattenLayers([[e(''), e('var', 'symlink')]]), o, hasher, { preserve }),
      (x: unknown) => isTiuError(x, 'PATH_UNSAFE'),
    );
    const ok = await planApply(flattenLayers([[e(''), e('boot'), e('boot/grub2')]]), o, hasher, { preserve });
    assert.deepEqual(ok.deletes, []);
  });
});
