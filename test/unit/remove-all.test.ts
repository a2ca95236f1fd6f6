/**
 * Issue 19: removeAll (the delta content store, old stores, the replaced /etc) holds a batch of
 * names at a time. Guarded without timing or RSS: the file-system requests in flight at once
 * are counted through async_hooks (fs.promises.rm had one per entry: ~8,500 for this tree).
 */
import assert from 'node:assert/strict';
import { createHook } from 'node:async_hooks';
import { existsSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { removeAll } from '../../src/util/remove-all.ts';

/** The most file-system requests (promise or callback) in flight at once while `f` runs. */
async function mostFsRequestsInFlight(f: () => Promise<void>): Promise<number> {
  const live = new Set<number>();
  let most = 0;
  const hook = createHook({
    init(id, type) {
      if (type !== 'FSREQPROMISE' && type !== 'FSREQCALLBACK') return;
      live.add(id);
      most = Math.max(most, live.size);
    },
    destroy(id) {
      live.delete(id);
    },
  });
  hook.enable();
  try {
    await f();
  } finally {
    hook.disable();
  }
  return most;
}

describe('removeAll', function () {
  this.timeout(60_000);
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tiu-remove-all-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('removes a wide tree a batch at a time, never one request per entry', async () => {
    const store = join(dir, 'store');
    mkdirSync(join(store, 'sub', 'deeper'), { recursive: true });
    for (let i = 0; i < 3000; i++) writeFileSync(join(store, i.toString(16).padStart(64, '0')), 'x');
    for (let i = 0; i < 300; i++) writeFileSync(join(store, 'sub', 'deeper', String(i)), 'y');
    const most = await mostFsRequestsInFlight(() => removeAll(store));
    assert.equal(existsSync(store), false);
    assert.ok(most > 0, 'the hook saw the requests');
    assert.ok(most <= 100, `${most} file-system requests in flight at once`);
  });

  it('removes a symlink, never what it points to', async () => {
    const outside = join(dir, 'outside');
    mkdirSync(outside);
    writeFileSync(join(outside, 'keep'), 'kept');
    const tree = join(dir, 'tree');
    mkdirSync(join(tree, 'a'), { recursive: true });
    symlinkSync(outside, join(tree, 'a', 'link'));
    symlinkSync(join(outside, 'keep'), join(tree, 'file-link'));
    await removeAll(tree);
    assert.equal(existsSync(tree), false);
    assert.equal(await readFile(join(outside, 'keep'), 'utf8'), 'kept');
    const alone = join(dir, 'alone-link');
    symlinkSync(outside, alone);
    await removeAll(alone);
    assert.equal(existsSync(alone), false);
    assert.equal(await readFile(join(outside, 'keep'), 'utf8'), 'kept');
  });

  it('removes a single file; a missing path is not an error', async () => {
    const f = join(dir, 'f');
    writeFileSync(f, 'z');
    await removeAll(f);
    assert.equal(existsSync(f), false);
    await removeAll(join(dir, 'never-there'));
    await removeAll(join(dir, 'never', 'there'));
  });
});
