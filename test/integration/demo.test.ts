/**
 * The README's first command, end to end: build, sign, push to a local registry, update a
 * loop-mounted MicroOS-layout btrfs. Runs examples/demo.ts exactly as `npm run demo` does.
 */
import assert from 'node:assert/strict';
import { execa } from 'execa';
import { requireRoot } from '../helpers/env.ts';

describe('npm run demo (examples/demo.ts)', function () {
  this.timeout(300_000);
  before(function () {
    requireRoot(this);
  });

  it('builds, refuses the unsigned bundle, signs, updates into snapshot 2, and is a no-op the second time', async () => {
    const node = new URL('../../node_modules/.bin/node', import.meta.url).pathname;
    const r = await execa(node, [new URL('../../examples/demo.ts', import.meta.url).pathname], {
      reject: false,
      all: true,
    });
    assert.equal(r.exitCode, 0, r.all);
    assert.match(r.all, /\[SIGNATURE_MISSING\]/);
    assert.match(
      r.all,
      /next boot: snapshot 2; its os-release:\nNAME="Fake MicroOS"\nID="fake-microos"\nVERSION_ID="2"/,
    );
    assert.match(r.all, /is already deployed in snapshot 2: nothing to do/);
    assert.match(r.all, /demo: done/);
  });
});
