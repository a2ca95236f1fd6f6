/**
 * End to end with everything awkward a tree can hold (test/helpers/awkward-tree.ts: a name that
 * is not UTF-8, a newline in a name, a 255-byte name, a binary security.capability, hardlinks
 * across layers, a char device, a fifo, symlinks, setuid/setgid/sticky, owners nobody has,
 * nanosecond mtimes): the `tiu build` CLI pushes it to a real registry, `tiu update` writes it
 * into a MicroOS-layout btrfs by the file delta and by whole layers, and the new snapshot holds
 * the awkward subtrees exactly as the source has them.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import type { KeyObject } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig } from '../../src/deploy/config.ts';
import { rollback } from '../../src/deploy/rollback.ts';
import { openContext, readState } from '../../src/deploy/state.ts';
import { update } from '../../src/deploy/update/index.ts';
import type { UpdateDeps } from '../../src/deploy/update/deps.ts';
import { productionDeps } from '../../src/deploy/wiring.ts';
import { parseReference, referenceName, type DockerReference } from '../../src/oci/reference.ts';
import { openRegistryTarget } from '../../src/transport/registry/index.ts';
import { signImage } from '../../src/trust/sign.ts';
import { AWKWARD_DIRS, makeAwkwardTree } from '../helpers/awkward-tree.ts';
import { requireRoot } from '../helpers/env.ts';
import { createMicroOS, type MicroOS } from '../helpers/microos.ts';
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts';
import { diffTrees, linkGroups, snapshotTree, type NodeInfo } from '../helpers/tree.ts';
import { installPolicy, TEST_IDENTITY } from '../helpers/update-deps.ts';

const TIU = new URL('../../bin/tiu', import.meta.url).pathname;

function tiu(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(TIU, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (out += d.toString()));
    p.on('error', reject);
    p.on('exit', (code) => resolve({ code, out }));
  });
}

/** The awkward subtrees of a tree (paths relative to the root), with hardlink groups. */
async function awkwardPart(root: string): Promise<{ tree: Map<string, NodeInfo>; links: Map<string, string> }> {
  const all = await snapshotTree(root);
  const tree = new Map([...all].filter(([p]) => AWKWARD_DIRS.some((d) => p === d || p.startsWith(d + '/'))));
  return { tree, links: linkGroups(tree) };
}

describe('awkward names and metadata, end to end (tiu build -> registry -> tiu update on MicroOS btrfs)', function () {
  this.timeout(300_000);
  let os: MicroOS;
  let work = '';
  let reg: RunningRegistry;
  let key: KeyObject;
  let source: Awaited<ReturnType<typeof awkwardPart>>;
  const noHooks = parseConfig('default-hooks = false');
  let image = '';
  const deps: UpdateDeps = {
    ...productionDeps,
    async openSource(reference, o) {
      const r = parseReference(reference);
      if (r.transport !== 'docker') return productionDeps.openSource(reference, o);
      return { target: openRegistryTarget(r, { registriesConf: false }), reference: referenceName(r) };
    },
  };

  before(async function () {
    requireRoot(this);
    work = await mkdtemp(join(tmpdir(), 'tiu-awkward-'));
    const tree = join(work, 'tree');
    await makeAwkwardTree(tree);
    source = await awkwardPart(tree);
    assert.ok(source.links.size === 3, 'the source has its hardlink group');
    reg = await startRegistry();
    image = `docker://${reg.host}/tiu/awkward:v1`;
    const built = await tiu(['build', tree, '--tag', image, '--tls-verify=false', '--layers', '8'], {
      SOURCE_DATE_EPOCH: '1767225600',
    });
    assert.equal(built.code, 0, built.out);
    os = await createMicroOS();
    key = await installPolicy(os.sysroot);
    const dst = openRegistryTarget(parseReference(`docker://${reg.host}/tiu/awkward`) as DockerReference, {
      registriesConf: false,
    });
    try {
      await signImage(dst, await dst.resolve('v1'), key, { dockerReference: `${TEST_IDENTITY}:v1` });
    } finally {
      await dst.close();
    }
  });
  after(async () => {
    await reg?.stop();
    await os?.teardown();
    if (work) await rm(work, { recursive: true, force: true });
  });

  for (const transfer of ['delta', 'whole-layer'] as const) {
    it(`--transfer ${transfer}: the new snapshot has every awkward entry byte-exact`, async () => {
      const state = await readState(await openContext(os.sysroot));
      if (state.default !== 1) await rollback({ sysroot: os.sysroot, snapshot: 1 });
      const r = await update(deps, { sysroot: os.sysroot, reference: image, config: noHooks, transfer });
      assert.equal(r.status, 'updated');
      assert.ok(r.status === 'updated' && r.transfer?.path === transfer, JSON.stringify(r));
      const got = await awkwardPart(os.snapshotPath(r.snapshot));
      // Everything byte-exact; an mtime with a fraction of a second within 1 µs (Node's utimes
      // takes a double: docs/bundle-format.md, "Times").
      assert.deepEqual(diffTrees(source.tree, got.tree, { subsecondToleranceNs: 1000n }), []);
      assert.deepEqual(got.links, source.links);
    });
  }
});
