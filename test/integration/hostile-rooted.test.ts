/**
 * Hostile images against a MicroOS-layout btrfs (loop device, real snapper): writes that would
 * leave the new snapshot (rooted API), xattr names that would inject into setfattr's text
 * format, and hook mount points an image redirected. Each case checks the error code, that the
 * default snapshot and the snapshot list are unchanged, that no new snapshot is left, that the
 * marker directory outside the sysroot is untouched and that no mount is left behind.
 */
import assert from 'node:assert/strict';
import { createHash, type KeyObject } from 'node:crypto';
import { existsSync } from 'node:fs';
import { lstat, mkdir, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { requireRoot } from '../helpers/env.ts';
import { baseOs, createMicroOS, type MicroOS, type OsFile } from '../helpers/microos.ts';
import { installPolicy, MOUNT_POINT_DIRS, signInLayout } from '../helpers/update-deps.ts';
import { chunkedLayer } from '../helpers/chunked-layer.ts';
import { productionDeps } from '../../src/deploy/wiring.ts';
import { OciLayoutTarget } from '../../src/content/oci-layout.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import type { Descriptor, Digest } from '../../src/oci/types.ts';
import type { TocEntry } from '../../src/layer/toc.ts';
import { isTiuError, type ErrorCode } from '../../src/errors.ts';
import { parseConfig, type TiuConfig } from '../../src/deploy/config.ts';
import { openContext, readState, snapshotPath } from '../../src/deploy/state.ts';
import { update } from '../../src/deploy/update/index.ts';
import type { UpdateResult } from '../../src/deploy/update/run.ts';
import { cleanupInProgress, commitSnapshot, createInProgress } from '../../src/deploy/snapshot.ts';
import { withChroot } from '../../src/deploy/chroot.ts';
import { bindMount, mountInfo } from '../../src/host/mount.ts';
import { run } from '../../src/host/exec.ts';

const sha = (b: Uint8Array): Digest => `sha256:${createHash('sha256').update(b).digest('hex')}`;

async function put(target: OciLayoutTarget, mediaType: string, data: Buffer): Promise<Descriptor> {
  const desc: Descriptor = { mediaType, digest: sha(data), size: data.length };
  await target.push(desc, Readable.from([data]));
  return desc;
}

async function tagManifest(
  layout: string,
  tag: string,
  layers: { desc: Descriptor; data: Buffer }[],
  diffIds: Digest[],
): Promise<void> {
  const target = await OciLayoutTarget.open(layout, { create: true });
  for (const l of layers) await target.push(l.desc, Readable.from([l.data]));
  const config = await put(
    target,
    MediaType.OciConfig,
    Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: diffIds } })),
  );
  const manifest = await put(
    target,
    MediaType.OciManifest,
    Buffer.from(
      JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciManifest, config, layers: layers.map((l) => l.desc) }),
    ),
  );
  await target.tag(manifest, tag);
}

/** A gzip tar layer of `files` (parents first), with extra pax records on some entries. */
async function tarImage(
  layout: string,
  tag: string,
  files: (OsFile & { pax?: Record<string, string> })[],
): Promise<void> {
  const pack = tar.pack();
  const mtime = new Date('2026-01-01T00:00:00Z');
  const paths = new Set(files.map((f) => f.path));
  const dirs = new Set<string>();
  const addParents = (p: string) => {
    for (let i = p.lastIndexOf('/'); i > 0; i = p.lastIndexOf('/', i - 1)) dirs.add(p.slice(0, i));
  };
  for (const d of MOUNT_POINT_DIRS) if (!paths.has(d) && ![...paths].some((p) => d.startsWith(p + '/'))) dirs.add(d);
  for (const p of [...paths, ...dirs]) addParents(p);
  for (const d of [...dirs].filter((x) => !paths.has(x)).sort())
    pack.entry({ name: d + '/', type: 'directory', mode: 0o755, mtime });
  for (const f of [...files].sort((a, b) => a.path.localeCompare(b.path))) {
    if (f.symlink !== undefined)
      pack.entry({
        name: f.path,
        type: 'symlink',
        linkname: f.symlink,
        mode: 0o777,
        mtime,
        ...(f.pax ? { pax: f.pax } : {}),
      });
    else
      pack.entry(
        { name: f.path, type: 'file', mode: f.mode ?? 0o644, mtime, ...(f.pax ? { pax: f.pax } : {}) },
        Buffer.from(f.content ?? ''),
      );
  }
  pack.finalize();
  const tarBytes = await buffer(pack);
  const data = gzipSync(tarBytes);
  await tagManifest(
    layout,
    tag,
    [{ desc: { mediaType: MediaType.OciLayerGzip, digest: sha(data), size: data.length }, data }],
    [sha(tarBytes)],
  );
}

/** Every path below `dir` with its type, content hash or link target, mode and xattrs: what "untouched" compares. */
async function fingerprint(dir: string): Promise<string> {
  const r = await run('sh', [
    '-c',
    'cd "$1" && find . -printf "%p %y %m %s %T@ %l\\n" | sort && find . -type f -exec sha256sum {} + | sort && getfattr -R -P -h -d -m - . 2>/dev/null || true',
    'sh',
    dir,
  ]);
  return r.stdout;
}

const mountPoints = async () => (await mountInfo()).map((m) => m.mountPoint).sort();

describe('hostile images cannot reach outside the snapshot (rooted writes, xattr names, hook mounts)', function () {
  let os: MicroOS;
  let images: string;
  let outside: string;
  let key: KeyObject;
  const noHooks = parseConfig('default-hooks = false');
  const state = async () => readState(await openContext(os.sysroot));

  before(async function () {
    requireRoot(this);
    os = await createMicroOS();
    images = join(os.dir, 'images');
    outside = join(os.dir, 'outside');
    await mkdir(join(outside, 'dir'), { recursive: true });
    await writeFile(join(outside, 'file'), 'the host file\n');
    key = await installPolicy(os.sysroot);
  });
  after(async () => {
    await os?.teardown();
  });

  async function sign(tag: string): Promise<string> {
    await signInLayout(images, tag, key);
    return `oci:${images}:${tag}`;
  }

  /** The update fails with `codes[0]` (or one of `codes`), and nothing changed. */
  async function refused(reference: string, codes: ErrorCode[], config: TiuConfig = noHooks): Promise<void> {
    const before = await state();
    const outsideBefore = await fingerprint(outside);
    const mountsBefore = await mountPoints();
    let err: unknown;
    await assert.rejects(update(productionDeps, { sysroot: os.sysroot, reference, config }), (e: unknown) => {
      err = e;
      return codes.some((c) => isTiuError(e, c));
    });
    assert.ok(isTiuError(err) && err.message.length > 0);
    const after = await state();
    assert.equal(after.default, before.default);
    assert.deepEqual(
      after.snapshots.map((s) => [s.number, s.inProgress]),
      before.snapshots.map((s) => [s.number, s.inProgress]),
    );
    const next = Math.max(...before.snapshots.map((s) => s.number)) + 1;
    assert.equal(existsSync(join(os.sysroot, '.snapshots', String(next))), false, 'no new snapshot left');
    assert.equal(await fingerprint(outside), outsideBefore, 'the marker directory outside the sysroot is untouched');
    assert.deepEqual(await mountPoints(), mountsBefore, 'the mount table is as it was');
  }

  it('tar layer: a PAX SCHILY.xattr name with a newline and `# file: <host path>` is XATTR_INVALID, nothing set on the host file', async () => {
    const evil = `user.a\n# file: ${join(outside, 'file')}\nuser.evil`;
    await tarImage(images, 'xattr-tar', [
      ...(await baseOs()),
      { path: 'usr/share/fake/carrier', content: 'x\n', pax: { [`SCHILY.xattr.${evil}`]: 'owned' } },
    ]);
    await refused(await sign('xattr-tar'), ['XATTR_INVALID']);
    const r = await run('getfattr', ['-d', '-m', '-', join(outside, 'file')]);
    assert.doesNotMatch(r.stdout, /evil/);
  });

  it('tar layer: a LIBARCHIVE.xattr name outside the namespaces tiu sets is XATTR_INVALID', async () => {
    await tarImage(images, 'xattr-libarchive', [
      ...(await baseOs()),
      {
        path: 'usr/share/fake/carrier',
        content: 'x\n',
        pax: { 'LIBARCHIVE.xattr.user.a%0A%23%20file%3A%20%2Fx': Buffer.from('v').toString('base64') },
      },
    ]);
    await refused(await sign('xattr-libarchive'), ['XATTR_INVALID']);
  });

  it('TOC layer (zstd:chunked): an xattr name with a newline in the table of contents is XATTR_INVALID before a snapshot exists', async () => {
    const evil = `user.a\n# file: ${join(outside, 'file')}\nsecurity.capability`;
    const entries: { toc: TocEntry; content?: Buffer }[] = [];
    const dirs = new Set<string>(MOUNT_POINT_DIRS);
    const files = await baseOs();
    for (const f of files)
      for (let i = f.path.lastIndexOf('/'); i > 0; i = f.path.lastIndexOf('/', i - 1)) dirs.add(f.path.slice(0, i));
    for (const d of MOUNT_POINT_DIRS)
      for (let i = d.lastIndexOf('/'); i > 0; i = d.lastIndexOf('/', i - 1)) dirs.add(d.slice(0, i));
    for (const d of [...dirs].sort())
      entries.push({ toc: { type: 'dir', name: d, mode: 0o755, modtime: '2026-01-01T00:00:00Z' } });
    for (const f of files) {
      if (dirs.has(f.path)) continue;
      if (f.symlink !== undefined)
        entries.push({
          toc: { type: 'symlink', name: f.path, linkName: f.symlink, mode: 0o777, modtime: '2026-01-01T00:00:00Z' },
        });
      else
        entries.push({
          toc: { type: 'reg', name: f.path, mode: f.mode ?? 0o644, modtime: '2026-01-01T00:00:00Z' },
          content: Buffer.from(f.content ?? ''),
        });
    }
    entries.push({
      toc: {
        type: 'reg',
        name: 'usr/share/fake/carrier',
        mode: 0o644,
        modtime: '2026-01-01T00:00:00Z',
        xattrs: { [evil]: Buffer.from([1, 0, 0, 2]).toString('base64') },
      },
      content: Buffer.from('carrier\n'),
    });
    const layer = chunkedLayer(entries);
    await tagManifest(images, 'xattr-toc', [layer], [sha(layer.data)]);
    await refused(await sign('xattr-toc'), ['XATTR_INVALID']);
    const r = await run('getfattr', ['-d', '-m', '-', join(outside, 'file')]);
    assert.doesNotMatch(r.stdout, /capability/);
  });

  it('`usr/lib/tiu -> <outside dir>`: the copy of the new /etc is PATH_UNSAFE, nothing lands outside', async () => {
    const files = (await baseOs()).filter((f) => !f.path.startsWith('usr/lib/tiu/'));
    await tarImage(images, 'tiu-link', [...files, { path: 'usr/lib/tiu', symlink: join(outside, 'dir') }]);
    await refused(await sign('tiu-link'), ['PATH_UNSAFE']);
    assert.deepEqual(await run('ls', ['-A', join(outside, 'dir')]).then((r) => r.stdout), '');
  });

  it('`usr -> <outside>`: refused before anything is committed, the outside directory untouched', async () => {
    const files = (await baseOs()).filter(
      (f) => !f.path.startsWith('usr/') && !['bin', 'sbin', 'lib', 'lib64'].includes(f.path),
    );
    await tarImage(images, 'usr-link', [...files, { path: 'usr', symlink: join(outside, 'dir') }]);
    const reference = await sign('usr-link');
    const outsideBefore = await fingerprint(outside);
    const mountsBefore = await mountPoints();
    const before = await state();
    let r: UpdateResult | undefined;
    try {
      r = await update(productionDeps, { sysroot: os.sysroot, reference, config: noHooks });
    } catch (e) {
      // PATH_UNSAFE from the rooted API (or IMAGE_NOT_OS where the image is checked for a usr directory first)
      assert.ok(isTiuError(e, 'PATH_UNSAFE') || isTiuError(e, 'IMAGE_NOT_OS'), String(e));
      const after = await state();
      assert.equal(after.default, before.default);
      assert.deepEqual(
        after.snapshots.map((s) => s.number),
        before.snapshots.map((s) => s.number),
      );
    }
    if (r) {
      // Where the apply keeps usr (it holds the preserved usr/local), the image's symlink never lands.
      assert.equal(r.status, 'updated');
      assert.ok(
        r.status === 'updated' && (await lstat(join(snapshotPath(os.sysroot, r.snapshot), 'usr'))).isDirectory(),
        'usr is a real directory in the new snapshot',
      );
    }
    assert.equal(await fingerprint(outside), outsideBefore);
    assert.deepEqual(await mountPoints(), mountsBefore);
  });

  it('commit: a snapshot whose usr is a symlink is PATH_UNSAFE before anything is committed (no utimes through it)', async () => {
    const ctx = await openContext(os.sysroot);
    const before = await state();
    const n = await createInProgress(ctx, { from: before.booted!, description: 'hostile usr', image: 'test' });
    const root = snapshotPath(os.sysroot, n);
    await rm(join(root, 'usr'), { recursive: true });
    await symlink(join(outside, 'dir'), join(root, 'usr'));
    const outsideBefore = await fingerprint(outside);
    const mtime = (await lstat(join(outside, 'dir'))).mtimeMs;
    await assert.rejects(
      commitSnapshot(ctx, n, { image: 'test', digest: 'sha256:00', etcConflicts: 0 }),
      (e: unknown) => isTiuError(e, 'PATH_UNSAFE') && String(e.details.path) === 'usr',
    );
    assert.equal((await lstat(join(outside, 'dir'))).mtimeMs, mtime);
    assert.equal(await fingerprint(outside), outsideBefore);
    const mid = await state();
    assert.equal(mid.default, before.default);
    assert.equal(mid.snapshots.find((s) => s.number === n)?.inProgress, true);
    // the next run's cleanup removes it
    const c = await cleanupInProgress(ctx);
    assert.deepEqual(c.deleted, [n]);
    assert.equal(existsSync(root), false);
  });

  it('`proc -> <outside dir>` with a hook: nothing is mounted outside the snapshot', async () => {
    const files = await baseOs();
    await tarImage(images, 'proc-link', [
      ...files,
      { path: 'proc', symlink: join(outside, 'dir') },
      { path: 'usr/share/fake/proc-link', content: 'v\n' },
    ]);
    const config = parseConfig(
      'default-hooks = false\n[[hook]]\nname = "probe"\ncommand = ["/bin/sh", "-c", "test -d /proc/self"]\n',
    );
    const reference = await sign('proc-link');
    const mountsBefore = await mountPoints();
    const outsideBefore = await fingerprint(outside);
    const before = await state();
    let r: UpdateResult | undefined;
    try {
      r = await update(productionDeps, { sysroot: os.sysroot, reference, config });
    } catch (e) {
      // Refused (the mount point is a symlink) unless the update made proc a real directory first.
      assert.ok(isTiuError(e, 'PATH_UNSAFE'), String(e));
      const after = await state();
      assert.equal(after.default, before.default);
      assert.deepEqual(
        after.snapshots.map((s) => s.number),
        before.snapshots.map((s) => s.number),
      );
    }
    if (r) {
      assert.equal(r.status, 'updated');
      assert.ok(r.status === 'updated' && r.hooks.length === 1);
      assert.ok(
        (await lstat(join(snapshotPath(os.sysroot, r.snapshot), 'proc'))).isDirectory(),
        'proc is a real directory in the new snapshot',
      );
    }
    assert.equal(await fingerprint(outside), outsideBefore);
    assert.deepEqual(await mountPoints(), mountsBefore);
  });

  it('withChroot: a mount point that is a symlink or a file is PATH_UNSAFE before anything is mounted; missing ones become real directories', async () => {
    const root = join(os.dir, 'chroot-root');
    await mkdir(root, { recursive: true });
    await symlink(join(outside, 'dir'), join(root, 'proc'));
    const mountsBefore = await mountPoints();
    let called = false;
    await assert.rejects(
      withChroot(root, () => {
        called = true;
        return Promise.resolve();
      }),
      (e: unknown) => isTiuError(e, 'PATH_UNSAFE') && String(e.details.path) === 'proc',
    );
    assert.equal(called, false);
    assert.deepEqual(await mountPoints(), mountsBefore);
    assert.equal(await readlink(join(root, 'proc')), join(outside, 'dir'));
    // dev was created as a real directory, then nothing mounted on it once proc was refused
    assert.ok((await lstat(join(root, 'dev'))).isDirectory());
    await rm(join(root, 'proc'));
    await writeFile(join(root, 'sys'), 'not a directory');
    await assert.rejects(
      withChroot(root, () => Promise.resolve()),
      (e: unknown) => isTiuError(e, 'PATH_UNSAFE') && String(e.details.path) === 'sys',
    );
    assert.deepEqual(await mountPoints(), mountsBefore);
    await rm(join(root, 'sys'));
    const seen = await withChroot(root, async () => (await mountPoints()).filter((p) => p.startsWith(root + '/')));
    assert.ok(
      seen.includes(join(root, 'proc')) && seen.includes(join(root, 'dev')) && seen.includes(join(root, 'sys')),
    );
    assert.deepEqual(await mountPoints(), mountsBefore);
  });

  it('mounts a killed hook left below an unfinished snapshot are unmounted by the next run before it is deleted', async () => {
    const ctx = await openContext(os.sysroot);
    const before = await state();
    const n = await createInProgress(ctx, { from: before.booted!, description: 'killed hook', image: 'test' });
    const root = snapshotPath(os.sysroot, n);
    // What withChroot leaves when SIGKILLed in the middle of a hook: recursive binds (dev has submounts).
    for (const [src, dst] of [
      ['/dev', 'dev'],
      ['/proc', 'proc'],
      ['/sys', 'sys'],
    ] as const) {
      await mkdir(join(root, dst), { recursive: true });
      await bindMount(src, join(root, dst), { recursive: true });
    }
    assert.ok((await mountPoints()).filter((p) => p.startsWith(root + '/')).length >= 3);
    const c = await cleanupInProgress(ctx);
    assert.deepEqual(c.deleted, [n]);
    assert.deepEqual(
      (await mountPoints()).filter((p) => p.startsWith(root)),
      [],
    );
    assert.equal(existsSync(root), false);
    assert.equal((await state()).default, before.default);
  });

  it('`.autorelabel -> <host file>` with SELinux enforcing in the image: the host file is untouched (the marker is a new file in the snapshot)', async () => {
    const files = [
      ...(await baseOs()),
      { path: 'etc/selinux/config', content: 'SELINUX=enforcing\nSELINUXTYPE=targeted\n' },
      { path: 'usr/lib/tiu/etc/selinux/config', content: 'SELINUX=enforcing\nSELINUXTYPE=targeted\n' },
    ];
    await tarImage(images, 'relabel', [...files, { path: '.autorelabel', symlink: join(outside, 'file') }]);
    const reference = await sign('relabel');
    const outsideBefore = await fingerprint(outside);
    const mountsBefore = await mountPoints();
    const r = await update(productionDeps, { sysroot: os.sysroot, reference, config: noHooks });
    assert.equal(r.status, 'updated');
    assert.ok(r.status === 'updated' && r.relabel);
    const marker = join(snapshotPath(os.sysroot, r.snapshot), '.autorelabel');
    const st = await lstat(marker);
    assert.ok(st.isFile() && st.size === 0, 'the marker is an empty regular file, the image symlink replaced');
    assert.equal(await readFile(join(outside, 'file'), 'utf8'), 'the host file\n');
    assert.equal(await fingerprint(outside), outsideBefore);
    assert.deepEqual(await mountPoints(), mountsBefore);
  });
});
