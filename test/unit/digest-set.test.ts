import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { DigestSet, isSha256 } from '../../src/deploy/apply/digest-set.ts';

const sha = (i: number) => `sha256:${createHash('sha256').update(String(i)).digest('hex')}`;
/** Digests that share their first four bytes: the same hash position until the table is larger than 2^32. */
const sameStart = (i: number) => `sha256:00000000${i.toString(16).padStart(56, '0')}`;

describe('DigestSet (issue 19: a digest per file as bytes)', function () {
  it('numbers members in the order they came, finds each again, and grows past its first table', function () {
    const s = new DigestSet();
    const n = 5000;
    for (let i = 0; i < n; i++) assert.equal(s.add(sha(i)), i);
    assert.equal(s.size, n);
    for (let i = 0; i < n; i++) {
      assert.equal(s.indexOf(sha(i)), i);
      assert.equal(s.add(sha(i)), i, 'adding again gives the same number');
      assert.equal(s.digestAt(i), sha(i));
    }
    assert.equal(s.size, n);
    assert.equal(s.has(sha(n)), false);
    assert.equal(s.indexOf(sha(n)), -1);
  });

  it('gives back what it outgrows at once: 65,537 digests hold ArrayBuffers of their final size, not every size they passed', function () {
    const s = new DigestSet();
    const digests = Array.from({ length: 65_537 }, (_, i) => sha(i));
    // Other tests' garbage goes first: its ArrayBuffers freed during the adds would count against them.
    setFlagsFromString('--expose-gc');
    (runInNewContext('gc') as () => void)();
    const before = process.memoryUsage().arrayBuffers;
    for (const d of digests) s.add(d);
    const added = process.memoryUsage().arrayBuffers - before;
    // Bytes for 131,072 digests (4 MiB) and a table of 262,144 slots (1 MiB); the buffers and
    // tables it passed through (as much again) were garbage until a full collection.
    assert.ok(added > 4 << 20 && added < 6 << 20, `${added} bytes of ArrayBuffers`);
    assert.equal(s.indexOf(sha(65_536)), 65_536);
    assert.equal(s.indexOf(sha(3)), 3);
  });

  it('tells digests apart that share their first bytes (one hash position)', function () {
    const s = new DigestSet();
    for (let i = 0; i < 300; i++) s.add(sameStart(i));
    for (let i = 0; i < 300; i++) assert.equal(s.indexOf(sameStart(i)), i);
    assert.equal(s.has(sameStart(300)), false);
  });

  it('refuses text that is not a lowercase sha256 digest', function () {
    const s = new DigestSet();
    const upper = sha(1).toUpperCase().replace('SHA256', 'sha256');
    for (const bad of ['', 'sha256:', sha(1).slice(0, -1), upper, sha(1).replace('sha256', 'sha512'), `${sha(1)}0`]) {
      assert.equal(isSha256(bad), false, bad);
      assert.equal(s.has(bad), false, bad);
      assert.throws(() => s.add(bad), TypeError, bad);
    }
    assert.equal(s.size, 0);
    assert.throws(() => s.digestAt(0), RangeError);
  });

  it('holds 50,000 digests in under 64 bytes each with its table (a Set of fresh digest strings took ~114)', function () {
    const n = 50_000;
    const texts = Array.from({ length: n }, (_, i) => sha(i));
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    // Twice: the second collection also finds the buffers the first one's finalizers gave back.
    gc();
    gc();
    const before = process.memoryUsage();
    const s = new DigestSet();
    for (const t of texts) s.add(t);
    gc();
    gc();
    const after = process.memoryUsage();
    const held = after.heapUsed - before.heapUsed + (after.arrayBuffers - before.arrayBuffers);
    // The texts are used after the measurement: once dead, their ~94 bytes apiece would count against the set.
    assert.equal(s.indexOf(texts[n - 1]!), n - 1);
    assert.ok(held / n < 64, `${(held / n).toFixed(1)} bytes per digest`);
  });
});
