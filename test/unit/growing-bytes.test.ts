import assert from 'node:assert/strict';
import { GrowingBytes } from '../../src/util/growing-bytes.ts';

describe('GrowingBytes', function () {
  it('keeps what was appended as it grows, in one buffer of its own, and frees it', function () {
    const g = new GrowingBytes(64 * 1024);
    const want: Buffer[] = [];
    for (let i = 0; i < 300; i++) {
      const piece = Buffer.alloc(1 + ((i * 977) % 6000), i % 251);
      want.push(piece);
      g.append(piece);
    }
    const all = Buffer.concat(want);
    assert.equal(g.length, all.length);
    assert.ok(g.bytes.equals(all));
    // Not a slice of Node's shared pool: its buffer holds these bytes and room for more only.
    const own = g.bytes.buffer;
    assert.ok(own.byteLength >= all.length && own.byteLength < 2 * all.length + 64 * 1024);
    g.clear();
    g.append(Buffer.from('x'));
    assert.equal(g.bytes.toString(), 'x');
    assert.equal(g.bytes.buffer, own, 'clear keeps the buffer');
    g.free();
    assert.equal(own.byteLength, 0, 'freed now, not at a collection');
    assert.equal(g.length, 0);
  });
});
