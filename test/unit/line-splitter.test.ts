import assert from 'node:assert/strict';
import { LineSplitter } from '../../src/util/line-splitter.ts';

class TooLong extends Error {}

function split(input: Buffer, piece: number, maxLine = 1024): { lines: string[]; held: number } {
  const lines: string[] = [];
  const s = new LineSplitter({
    maxLine,
    onLine: (l) => lines.push(l.toString('latin1')),
    tooLong: (n) => {
      throw new TooLong(String(n));
    },
  });
  for (let at = 0; at < input.length; at += piece) s.push(input.subarray(at, at + piece));
  s.end();
  return { lines, held: s.maxHeld };
}

describe('util/line-splitter', () => {
  const text = 'one\n\ntwo three\n# file: /a\\012b\nlast without newline';
  const expected = text.split('\n');

  it('gives the same lines whatever the pieces are cut like', () => {
    for (const piece of [1, 2, 3, 5, 7, 16, 1000]) {
      assert.deepEqual(split(Buffer.from(text, 'latin1'), piece).lines, expected, `pieces of ${piece}`);
    }
    assert.deepEqual(split(Buffer.from('a\nb\n'), 3).lines, ['a', 'b']);
  });

  it('keeps only the unfinished line between pieces, whatever the size of the stream', () => {
    const line = 'x'.repeat(99) + '\n';
    const big = Buffer.from(line.repeat(100_000)); // ~10 MB
    const { lines, held } = split(big, 64 * 1024, 200);
    assert.equal(lines.length, 100_000);
    assert.ok(held < 100, `held ${held} bytes`);
  });

  it('refuses a line longer than maxLine, within a piece or across pieces', () => {
    assert.throws(() => split(Buffer.from('ok\n' + 'y'.repeat(50) + '\n'), 1000, 20), TooLong);
    assert.throws(() => split(Buffer.from('ok\n' + 'y'.repeat(50)), 4, 20), TooLong);
    assert.doesNotThrow(() => split(Buffer.from('y'.repeat(20) + '\n'), 4, 20));
  });
});
