/**
 * Every local snapshot is a content source (issue 16): two updates before a reboot, with the
 * real CLI on a MicroOS-layout btrfs with snapper, zstd:chunked images in a registry behind a
 * byte-counting proxy.
 *
 *   v1 booted, v2 pending, then v3: only the files neither v1 nor v2 holds are downloaded, and
 *     the snapshot equals v3's tree byte for byte.
 *   v1 booted, v2 pending, then v2' (the same tree, another manifest): no file content is
 *     downloaded (manifests and TOCs only), and the new snapshot costs under 1 MiB of disk.
 *   A source snapshot changed behind tiu's back (made writable, a file rewritten with the same
 *     size, read-only again) is not used blindly, also when its content index in the cache
 *     vouches for the changed file: the result is still v3's tree.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes, type KeyObject } from 'node:crypto';
import { lstat, mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildBundle } from '../../src/bundle/build.ts';
import { OciLayoutTarget } from '../../src/content/oci-layout.ts';
import { copy } from '../../src/copy/copy.ts';
import { contentIndexFile } from '../../src/deploy/delta/index.ts';
import { run } from '../../src/host/exec.ts';
import { parseReference, type DockerReference } from '../../src/oci/reference.ts';
import type { Descriptor } from '../../src/oci/types.ts';
import { openRegistryTarget } from '../../src/transport/registry/index.ts';
import { exclusiveBytes } from '../helpers/btrfs.ts';
import { startCountingProxy, type CountingProxy } from '../helpers/counting-proxy.ts';
import { requireRoot } from '../helpers/env.ts';
import { baseOs, createMicroOS, writeTree, type MicroOS, type OsFile } from '../helpers/microos.ts';
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts';
import { diffTrees } from '../helpers/treecmp.ts';
import { installPolicy, signInLayout } from '../helpers/update-deps.ts';
import { tiuJson } from '../helpers/tiu-cli.ts';

const sha = (b: Uint8Array) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const KiB = 1024;

const tiu = tiuJson;

interface Counter {
  count: number;
  bytes: number;
}
interface Transfer {
  path: string;
  downloadBytes: number;
  tocBytes: number;
  contentBytes: number;
  downloaded?: number;
  files: { write: Counter; reflink: Counter; fromSnapshots: Counter };
}
interface Updated {
  status: string;
  snapshot: number;
  from: number;
  transfer: Transfer;
  apply: {
    written: Counter;
    reflinked: Counter;
    reflinkedFromSnapshots: Counter;
    snapshotFallbacks: Counter;
    warnings: string[];
  };
}

/** Content that does not compress, so a downloaded file shows in the byte count. */
const noise = (n: number): Buffer => randomBytes(n);

function osRelease(v: string): OsFile {
  return { path: 'usr/lib/os-release', content: `NAME="Fake MicroOS"\nID="fake-microos"\nVERSION_ID="${v}"\n` };
}

describe('every local snapshot is a content source (two updates before a reboot, the CLI)', function () {
  this.timeout(300_000);
  let os: MicroOS;
  let reg: RunningRegistry;
  let proxy: CountingProxy;
  let work: string;
  let key: KeyObject;
  const layout = () => join(work, 'layout');
  const ref = (tag: string) => `docker://${proxy.host}/tiu/os:${tag}`;
  const trees = new Set<string>();
  const manifests = new Map<string, Descriptor[]>();

  const common = Array.from({ length: 4 }, (_, i) => ({ path: `usr/lib/pkg/common-${i}`, content: noise(256 * KiB) }));
  const inV2 = Array.from({ length: 8 }, (_, i) => ({ path: `usr/lib/pkg/v2-${i}`, content: noise(512 * KiB) }));
  const newInV3 = Array.from({ length: 3 }, (_, i) => ({ path: `usr/lib/pkg/v3-${i}`, content: noise(128 * KiB) }));

  async function v1(): Promise<OsFile[]> {
    return [...(await baseOs()).filter((f) => f.path !== 'usr/lib/os-release'), osRelease('1'), ...common];
  }
  async function v2(): Promise<OsFile[]> {
    return [...(await v1()).filter((f) => f.path !== 'usr/lib/os-release'), osRelease('2'), ...inV2];
  }
  /** v2 with v2-0 removed, v2-1 changed, v2-2 moved, three new files. */
  async function v3(): Promise<OsFile[]> {
    const keep = (await v2()).filter((f) => !/^usr\/lib\/os-release$|^usr\/lib\/pkg\/v2-[012]$/.test(f.path));
    return [
      ...keep,
      osRelease('3'),
      { path: 'usr/lib/pkg/v2-1', content: noise(512 * KiB) },
      { path: 'usr/lib/pkg-moved/v2-2', content: inV2[2]!.content },
      ...newInV3,
    ];
  }

  /** Build the tree `name` (written on first use) as `tag`, push it and its signature to the registry. */
  async function build(
    tag: string,
    name: string,
    files: () => Promise<OsFile[]>,
    annotations: Record<string, string> = {},
  ): Promise<void> {
    const tree = join(work, `tree-${name}`);
    if (!trees.has(name)) await writeTree(tree, await files());
    trees.add(name);
    const target = await OciLayoutTarget.open(layout(), { create: true });
    const r = await buildBundle({ kind: 'directory', path: tree }, target, tag, {
      compression: 'zstd',
      sourceDateEpoch: 1_767_225_600,
      layers: 2,
      annotations,
    });
    manifests.set(tag, r.manifest.layers);
    await signInLayout(layout(), tag, key);
    const dst = openRegistryTarget(parseReference(`docker://${reg.host}/tiu/os`) as DockerReference, {
      registriesConf: false,
    });
    try {
      await copy(target, tag, dst, tag, { referrers: true });
    } finally {
      await dst.close();
    }
  }

  const layerBytes = (tag: string) => proxy.blobBytes(manifests.get(tag)!.map((l) => l.digest));

  async function update(tag: string): Promise<Updated> {
    const r = await tiu(['update', '--sysroot', os.sysroot, ref(tag)]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json.status, 'updated');
    return r.json as unknown as Updated;
  }

  async function check(tag: string): Promise<Transfer> {
    const r = await tiu(['update', '--check', '--sysroot', os.sysroot, ref(tag)]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json.status, 'available');
    return (r.json as unknown as { transfer: Transfer }).transfer;
  }

  /** The snapshot's /usr equals the image tree's, byte for byte (content, modes, owners, mtimes, links). */
  async function usrEquals(n: number, tree: string): Promise<void> {
    const diffs = await diffTrees(join(work, `tree-${tree}`, 'usr'), join(os.snapshotPath(n), 'usr'), {
      skip: ['local'],
      ignoreRootMeta: true,
    });
    assert.deepEqual(diffs, []);
  }

  async function rollback(n: number): Promise<void> {
    const r = await tiu(['rollback', String(n), '--sysroot', os.sysroot]);
    assert.equal(r.code, 0, r.stderr);
  }

  /** Rewrite a file of a committed snapshot in place, same size (what root could do behind tiu's back). */
  async function tamper(n: number, path: string): Promise<void> {
    const snap = os.snapshotPath(n);
    await run('btrfs', ['property', 'set', '-ts', snap, 'ro', 'false']);
    const fh = await open(join(snap, path), 'r+');
    try {
      await fh.write(Buffer.from('changed behind tiu'), 0, 18, 0);
    } finally {
      await fh.close();
    }
    await run('btrfs', ['property', 'set', '-ts', snap, 'ro', 'true']);
  }

  before(async function () {
    requireRoot(this);
    work = await mkdtemp(join(tmpdir(), 'tiu-sources-'));
    os = await createMicroOS({ files: await v1() });
    key = await installPolicy(os.sysroot);
    await mkdir(join(os.sysroot, 'etc/tiu'), { recursive: true });
    await writeFile(join(os.sysroot, 'etc/tiu/tiu.conf'), 'default-hooks = false\n');
    reg = await startRegistry();
    proxy = await startCountingProxy(reg.port);
    await build('v2', 'v2', v2);
    await build('v2-again', 'v2', v2, { 'org.example.rebuilt': 'yes' });
    await build('v3', 'v3', v3);
    await build('v3-again', 'v3', v3, { 'org.example.rebuilt': 'yes' });
  });
  after(async () => {
    await proxy?.stop();
    await reg?.stop();
    await os?.teardown();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('v1 booted: v2 is downloaded as usual and becomes the pending default', async () => {
    const r = await update('v2');
    assert.equal(r.snapshot, 2);
    assert.equal(r.from, 1);
    assert.equal(r.transfer.path, 'delta');
    assert.equal(r.transfer.files.write.count, 9, 'the eight v2 files and os-release');
    assert.equal(r.transfer.files.fromSnapshots.count, 0, 'no other snapshot of tiu yet');
    await usrEquals(2, 'v2');
  });

  it('v1 booted, v2 pending, then v3: downloads only what neither holds, reflinks the rest from v2', async () => {
    // Neither v1 (booted) nor v2 (pending) holds: the changed v2-1, os-release and the three new files.
    const held = new Set([...(await v2()), ...(await v1())].map((f) => sha(Buffer.from(f.content ?? ''))));
    const lacking = new Set(
      (await v3()).filter((f) => f.content !== undefined && !held.has(sha(Buffer.from(f.content)))).map((f) => f.path),
    );
    assert.equal(lacking.size, 5);
    const predicted = await check('v3');
    assert.equal(predicted.files.write.count, lacking.size);
    // From v2: the five v2 files v3 keeps (v2-3 .. v2-7) and the moved v2-2.
    assert.equal(predicted.files.fromSnapshots.count, 6);
    proxy.reset();
    const r = await update('v3');
    assert.equal(r.snapshot, 3);
    assert.equal(r.from, 1);
    assert.equal(r.transfer.files.write.count, lacking.size);
    assert.equal(r.apply.written.count, lacking.size);
    assert.equal(r.apply.reflinkedFromSnapshots.count, 6);
    assert.equal(r.apply.snapshotFallbacks.count, 0);
    // What the proxy saw is what --check predicted: TOCs and the frames of the five files.
    assert.equal(layerBytes('v3'), predicted.downloadBytes);
    assert.equal(r.transfer.downloaded, predicted.downloadBytes);
    const frames = predicted.contentBytes;
    assert.ok(frames < 1.1 * (512 + 3 * 128) * KiB + 4 * KiB, `content ${frames} is more than the five files`);
    await usrEquals(3, 'v3');
  });

  it('v1 booted, v2 pending, then v2 rebuilt (another manifest): manifests and TOCs only, < 1 MiB of disk', async () => {
    await rollback(2);
    const predicted = await check('v2-again');
    assert.equal(predicted.contentBytes, 0);
    assert.equal(predicted.files.write.count, 0);
    proxy.reset();
    const r = await update('v2-again');
    assert.equal(r.snapshot, 4);
    assert.equal(r.from, 1);
    assert.equal(r.apply.written.count, 0);
    assert.equal(r.apply.reflinkedFromSnapshots.count, 9);
    // Only manifests, signatures and TOCs went over the wire: the layers' bytes are their TOCs.
    assert.equal(layerBytes('v2-again'), r.transfer.tocBytes);
    assert.equal(r.transfer.downloaded, r.transfer.tocBytes);
    const disk = await exclusiveBytes(os.snapshotPath(4));
    console.log(`      v2 again: ${disk} bytes exclusive to the new snapshot, ${proxy.bodyBytes} bytes of bodies`);
    assert.ok(disk < 1024 * KiB, `${disk} bytes of disk`);
    await usrEquals(4, 'v2');
  });

  it("a source snapshot changed behind tiu's back is not used blindly, even when its index vouches for it", async () => {
    await rollback(3);
    // Snapshot 3 (v3) is the only one holding v3-0 and v3-1. v3-0 changes (its ctime with it: the
    // planner hashes it again and fetches it). v3-1 changes too, and the cache's content index is
    // made to say that the changed file still has the old digest: the apply reads it, and fetches it.
    await tamper(3, 'usr/lib/pkg/v3-0');
    await tamper(3, 'usr/lib/pkg/v3-1');
    const indexFile = contentIndexFile(join(os.sysroot, 'var/cache/tiu'), 3);
    const index = JSON.parse(await readFile(indexFile, 'utf8')) as { version: 1; entries: Record<string, string> };
    const st = await lstat(join(os.snapshotPath(3), 'usr/lib/pkg/v3-1'), { bigint: true });
    index.entries[`${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`] = sha(newInV3[1]!.content);
    await writeFile(indexFile, JSON.stringify(index));

    const predicted = await check('v3-again');
    assert.equal(predicted.files.write.count, 1, 'the changed v3-0 is downloaded');
    proxy.reset();
    const r = await update('v3-again');
    assert.equal(r.snapshot, 5);
    assert.equal(r.apply.snapshotFallbacks.count, 1, 'v3-1 did not verify: fetched instead');
    assert.ok(
      r.apply.warnings.some((w) => w.includes('usr/lib/pkg/v3-1') && /not taken from snapshot 3/.test(w)),
      r.apply.warnings.join('\n'),
    );
    assert.equal(r.apply.written.count, 2);
    assert.ok(r.transfer.downloaded! > predicted.downloadBytes, 'the fallback is fetched at apply time');
    assert.equal(layerBytes('v3-again'), r.transfer.downloaded);
    await usrEquals(5, 'v3');
  });

  it('the content indexes of every snapshot tiu deployed are kept in the cache', async () => {
    const kept = await Promise.all(
      [1, 2, 3, 4, 5].map((n) =>
        lstat(contentIndexFile(join(os.sysroot, 'var/cache/tiu'), n)).then(
          () => n,
          () => undefined,
        ),
      ),
    );
    assert.deepEqual(kept, [1, 2, 3, 4, 5]);
  });
});
