import assert from 'node:assert/strict';
import { TextPieces } from '../../src/util/text-pieces.ts';

describe('TextPieces', function () {
  it('hands on the bytes of what is written, in pieces from one buffer, a larger text whole', function () {
    const pieces: Buffer[] = [];
    const buffers = new Set<ArrayBufferLike>();
    const out = new TextPieces({
      size: 1024,
      handAt: 512,
      encoding: 'utf8',
      sink: (b) => (buffers.add(b.buffer), pieces.push(Buffer.from(b))),
    });
    const texts = Array.from({ length: 300 }, (_, i) => `line ${i} café ☃\n`);
    texts.splice(150, 0, 'x'.repeat(5000) + '\n');
    for (const t of texts) out.write(t);
    out.end();
    const all = Buffer.from(texts.join(''), 'utf8');
    assert.ok(Buffer.concat(pieces).equals(all));
    assert.equal(out.handed, all.length);
    // Each piece holds handAt bytes at least, but for the last and the one the large text cut short.
    const short = pieces.slice(0, -1).filter((p) => p.length < 512);
    assert.ok(short.length <= 1, `short pieces: ${short.map((p) => p.length).join(', ')}`);
    assert.equal(buffers.size, 2, 'one buffer, and the one it grew to for the large text');
  });

  it('writes binary strings byte for byte in latin1', function () {
    const pieces: Buffer[] = [];
    const out = new TextPieces({ size: 64, encoding: 'latin1', sink: (b) => pieces.push(Buffer.from(b)) });
    const text = Array.from({ length: 256 }, (_, i) => String.fromCharCode(i)).join('');
    out.write(text);
    out.write(text);
    out.end();
    const bytes = Buffer.concat(pieces);
    assert.equal(bytes.length, 512);
    for (let i = 0; i < 512; i++) assert.equal(bytes[i], i % 256);
  });
});
