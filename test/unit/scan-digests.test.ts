/**
 * A content index loaded beside the scan of its tree (apply/scan-digests.ts): the same answers
 * as one loaded on its own, for exactly the same keys, in less memory.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { ContentIndex, releaseScan, indexOldTree } from '../../src/deploy/apply/scan.ts';
import { ScanEntries } from '../../src/deploy/apply/scan-entries.ts';
import type { ExistingEntry } from '../../src/deploy/apply/types.ts';
import { existingFile } from '../helpers/existing-entry.ts';

/** A file whose times are far from zero (a mtime past 2^53 ns, a negative ctime): exact as 64-bit words. */
function file(path: string, ino: bigint, size = 10, nlink = 1): ExistingEntry {
  return existingFile(path, size, ino, { nlink, mtimeNs: 1_700_000_000_000_000_001n, ctimeNs: -5n });
}

const digestOf = (i: number) => `sha256:${i.toString(16).padStart(64, '0')}`;

/** The saved index of `keys` (digest i for the i-th), loaded with and without `scan`. */
async function saved(dir: string, keys: readonly ExistingEntry[]): Promise<string> {
  const idx = new ContentIndex(dir);
  keys.forEach((k, i) => idx.remember(k, digestOf(i)));
  const at = join(dir, `index-${keys.length}.json`);
  await idx.save(at);
  return at;
}

describe('content index on the scan of its tree', function () {
  let dir: string;
  before(async () => (dir = await mkdtemp(join(tmpdir(), 'tiu-scan-digests-'))));
  after(async () => rm(dir, { recursive: true, force: true }));

  it('answers as an index loaded alone, for the same keys only: stale keys, other paths and other trees get no digest', async function () {
    const a = file('usr/a', 1n);
    const big = file('usr/big-inode', (1n << 64n) - 1n, 2 ** 40);
    const l1 = file('usr/link-1', 7n, 10, 2);
    const l2 = file('usr/link-2', 7n, 10, 2);
    const scan = new ScanEntries();
    for (const e of [a, big, l1, l2, file('usr/changed', 3n), file('usr/unknown', 4n)]) scan.set(e);
    scan.set({ ...file('usr', 9n), type: 'dir' });
    const at = await saved(dir, [
      a,
      big,
      l1,
      { ...file('usr/changed', 3n), size: 11 }, // the file changed since: its key is stale
      file('gone', 5n), // no such inode in the tree now
      { ...file('usr', 9n), size: 10 }, // a directory's inode: never a file's digest
    ]);
    const alone = await ContentIndex.load(dir, at);
    const onScan = await ContentIndex.load(dir, at, scan);
    assert.equal(alone.size, 6);
    assert.equal(onScan.size, 3, 'one digest per inode the scan has with that key');
    for (const e of [a, big, l1, l2]) {
      assert.equal(await onScan.digestOf(e), await alone.digestOf(e), e.path);
      assert.equal(onScan.knownMatch(e, await alone.digestOf(e)), true, e.path);
      assert.equal(onScan.knownMatch(e, digestOf(99)), false, e.path);
    }
    // Hardlinks share their inode's digest.
    assert.equal(await onScan.digestOf(l2), digestOf(2));
    const unknown = [
      file('usr/changed', 3n), // the scan's own key, which the index does not have
      file('usr/unknown', 4n),
      { ...a, mtimeNs: a.mtimeNs + 1n }, // a's path with another key
      { ...a, path: 'elsewhere/a' }, // a's key at a path the scan does not have
      { ...a, ino: a.ino + (1n << 32n) }, // equal in the low 32 bits of the inode only
    ];
    for (const e of unknown) assert.equal(onScan.knownMatch(e, digestOf(0)), undefined, JSON.stringify(e.path));
    assert.equal(onScan.hashedHere(a), false);
    assert.equal(alone.hashedFiles + onScan.hashedFiles, 0, 'nothing read');
  });

  it('takes the last digest of a key met twice, as an index loaded alone does', async function () {
    const a = file('usr/a', 1n);
    const scan = new ScanEntries();
    scan.set(a);
    const key = `${a.ino}:${a.size}:${a.mtimeNs}:${a.ctimeNs}`;
    const at = join(dir, 'twice.json');
    await writeFile(at, `{"version":1,"entries":{"${key}":"${digestOf(1)}","${key}":"${digestOf(2)}"}}`);
    for (const idx of [await ContentIndex.load(dir, at), await ContentIndex.load(dir, at, scan)])
      assert.equal(await idx.digestOf(a), digestOf(2));
  });

  it('saves what it holds, as an index loaded alone would; remember and replaceRows take its rows along', async function () {
    const rows = Array.from({ length: 50 }, (_, i) => file(`usr/f${i}`, BigInt(100 + i), i));
    const scan = new ScanEntries();
    for (const e of rows) scan.set(e);
    const at = await saved(dir, rows);
    const onScan = await ContentIndex.load(dir, at, scan);
    const again = join(dir, 'again.json');
    await onScan.save(again);
    assert.deepEqual(JSON.parse(await readFile(again, 'utf8')), JSON.parse(await readFile(at, 'utf8')));
    // A change to the whole index makes its rows a table of their own: nothing is lost.
    onScan.remember(file('usr/new', 999n), digestOf(999));
    releaseScan(indexOldTree('/x', scan));
    assert.equal(onScan.size, 51);
    assert.equal(await onScan.digestOf(rows[7]!), digestOf(7));
    assert.equal(await onScan.digestOf(file('usr/new', 999n)), digestOf(999));
  });

  it('reads the scan until forgetRows: after a release it says so; forgotten, it reads nothing', async function () {
    const scan = new ScanEntries();
    const a = file('usr/a', 1n);
    scan.set(a);
    const at = await saved(dir, [a]);
    const onScan = await ContentIndex.load(dir, at, scan);
    const other = await ContentIndex.load(dir, at, scan);
    scan.release();
    assert.throws(() => onScan.knownMatch(a, digestOf(0)), /released/);
    other.forgetRows();
    assert.equal(other.size, 0);
    assert.equal(other.knownMatch(a, digestOf(0)), undefined);
    other.replaceRows(1, [[a, digestOf(5)]]);
    assert.equal(other.knownMatch(a, digestOf(5)), true);
  });

  it('holds the digests of 20,000 files loaded beside their scan in under 45 bytes each (~39 here; alone ~79)', async function () {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const n = 20_000;
    const rows = Array.from({ length: n }, (_, i) => file(`usr/share/file-number-${i}`, BigInt(1000 + i), i));
    const scan = new ScanEntries();
    for (const e of rows) scan.set(e);
    scan.finish();
    const at = await saved(dir, rows);
    const held = () => {
      for (let i = 0; i < 3; i++) gc();
      return process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers;
    };
    // One load in a frame of its own, read after it is measured (alive while it is).
    const once = async (withScan: boolean): Promise<number> => {
      const before = held();
      const idx = await ContentIndex.load(dir, at, withScan ? scan : undefined);
      const perFile = (held() - before) / n;
      assert.equal(idx.size, n);
      return perFile;
    };
    const least = async (withScan: boolean) =>
      Math.min(await once(withScan), await once(withScan), await once(withScan));
    const onScan = await least(true);
    const alone = await least(false);
    assert.ok(onScan < 45, `${onScan.toFixed(1)} bytes a file (alone ${alone.toFixed(1)})`);
    assert.ok(alone > onScan + 25, `alone ${alone.toFixed(1)}, on the scan ${onScan.toFixed(1)} bytes a file`);
  });
});
