/**
 * The TOC's JSON carries names as bytes, read and written as containers/storage does: raw bytes
 * inside strings stay bytes, `\uXXXX` escapes become the code point's UTF-8 bytes.
 */
import assert from 'node:assert/strict';
import { bstr } from '../../src/layer/entry.ts';
import { encodeTocJson, MAX_JSON_DEPTH, parseTocJson, TocJsonStream } from '../../src/layer/toc-json.ts';
import { parseToc } from '../../src/layer/toc.ts';
import { isTiuError } from '../../src/errors.ts';

const bytes = (...b: number[]) => bstr(Buffer.from(b));
const nameOf = (json: Buffer): string => (parseTocJson(json) as { name: string }).name;

describe('layer TOC JSON encoding', function () {
  it('writes a name that is not UTF-8 as its raw bytes, escaping only quote, backslash and controls', function () {
    const name = bytes(0x63, 0x61, 0x66, 0xe9, 0x22, 0x5c, 0x0a, 0x01, 0x7f, 0xff);
    const json = encodeTocJson({ name });
    assert.deepEqual(
      json,
      Buffer.concat([
        Buffer.from('{"name":"caf'),
        Buffer.from([0xe9]),
        Buffer.from('\\"\\\\\\n\\u0001'),
        Buffer.from([0x7f, 0xff]),
        Buffer.from('"}'),
      ]),
    );
    assert.equal(nameOf(json), name);
  });

  it('writes a UTF-8 name as plain UTF-8 JSON, which any JSON reader reads as that text', function () {
    const text = 'usr/share/café/日本/🙂';
    const json = encodeTocJson({ name: bstr(Buffer.from(text, 'utf8')) });
    assert.deepEqual(json, Buffer.from(JSON.stringify({ name: text }), 'utf8'));
    assert.equal((JSON.parse(json.toString('utf8')) as { name: string }).name, text);
  });

  it('reads raw bytes as bytes and \\u escapes as the UTF-8 bytes of the code point', function () {
    assert.equal(
      nameOf(Buffer.concat([Buffer.from('{"name":"a'), Buffer.from([0xe9, 0xff]), Buffer.from('"}')])),
      bytes(0x61, 0xe9, 0xff),
    );
    // `\u00e9` is é, whose UTF-8 is C3 A9: the same name as the raw bytes C3 A9.
    assert.equal(nameOf(Buffer.from('{"name":"\\u00e9"}')), bytes(0xc3, 0xa9));
    assert.equal(
      nameOf(Buffer.from('{"name":"\\u00E9"}')),
      nameOf(Buffer.from([...Buffer.from('{"name":"'), 0xc3, 0xa9, ...Buffer.from('"}')])),
    );
    assert.equal(nameOf(Buffer.from('{"name":"\\u65e5"}')), bstr(Buffer.from('日', 'utf8')));
    assert.equal(nameOf(Buffer.from('{"name":"\\u0000\\n\\t\\"\\/"}')), '\0\n\t"/');
  });

  it('joins surrogate pairs and reads a lone surrogate as U+FFFD', function () {
    assert.equal(nameOf(Buffer.from('{"name":"\\ud83d\\ude42"}')), bytes(0xf0, 0x9f, 0x99, 0x82));
    assert.equal(nameOf(Buffer.from('{"name":"\\uD83D\\uDE42x"}')), bytes(0xf0, 0x9f, 0x99, 0x82, 0x78));
    const fffd = [0xef, 0xbf, 0xbd];
    assert.equal(nameOf(Buffer.from('{"name":"\\ud83dx"}')), bytes(...fffd, 0x78));
    assert.equal(nameOf(Buffer.from('{"name":"\\ude42\\ud83d"}')), bytes(...fffd, ...fffd));
    // A high surrogate followed by another high one, then its pair: one U+FFFD, then the pair.
    assert.equal(nameOf(Buffer.from('{"name":"\\ud83d\\ud83d\\ude42"}')), bytes(...fffd, 0xf0, 0x9f, 0x99, 0x82));
  });

  it('treats an escaped backslash before "u" as a backslash, not an escape', function () {
    assert.equal(nameOf(Buffer.from('{"name":"\\\\u00e9"}')), '\\u00e9');
    assert.equal(nameOf(Buffer.from('{"name":"\\\\\\u00e9"}')), '\\' + bytes(0xc3, 0xa9));
  });

  it('round-trips every byte value in names, link names and xattr keys', function () {
    const all = bstr(Buffer.from(Array.from({ length: 256 }, (_, i) => i)));
    const toc = {
      version: 1,
      entries: [
        { type: 'symlink', name: all, linkName: all.split('').reverse().join(''), xattrs: { 'user.k': 'AA==' } },
      ],
    };
    assert.deepEqual(parseTocJson(encodeTocJson(toc)), toc);
  });

  it('reads numbers and keys as JSON.parse does, the common ones without making strings', function () {
    for (const n of [
      '0',
      '7',
      '10',
      '123456789012345',
      '1234567890123456',
      '9007199254740993',
      '-1',
      '-0',
      '1.5',
      '1e3',
      '2E-2',
      '0.0',
    ])
      assert.equal(Object.is(parseTocJson(Buffer.from(n)), JSON.parse(n)), true, n);
    for (const bad of ['05', '00', '1.', '.5', '+1', '-', '1e', '0x1'])
      assert.throws(() => parseTocJson(Buffer.from(bad)), SyntaxError, bad);
    // Known keys, with escapes, cut short or run on, unknown ones: all the keys JSON.parse reads.
    const doc = '{"name":1,"n\\u0061me":2,"nam":3,"names":4,"endOffset":5,"endOffsets":6,"chunkType":7,"x":8,"":9}';
    assert.deepEqual(parseTocJson(Buffer.from(doc)), JSON.parse(doc));
    assert.deepEqual(Object.keys(parseTocJson(Buffer.from(doc)) as object), Object.keys(JSON.parse(doc) as object));
    // Streamed in pieces cut anywhere, even inside a key or a number.
    for (let cut = 1; cut < doc.length; cut++) {
      const got: unknown[] = [];
      const stream = new TocJsonStream((e) => got.push(e));
      const whole = Buffer.from(`{"entries":[${doc},${doc}]}`);
      stream.push(whole.subarray(0, cut));
      stream.push(whole.subarray(cut));
      stream.end();
      assert.deepEqual(got, [JSON.parse(doc), JSON.parse(doc)], `cut at ${cut}`);
    }
  });

  it('refuses what is not JSON', function () {
    assert.throws(() => parseTocJson(Buffer.from('{"name":"\\u00"}')), SyntaxError);
    assert.throws(() => parseTocJson(Buffer.from([0x7b, 0xff, 0x7d])), SyntaxError);
  });

  it('refuses nesting deeper than MAX_JSON_DEPTH with TOC_INVALID, whole or in pieces, where a full stack would throw a RangeError', function () {
    const deep = (n: number) =>
      Buffer.from(`{"version":1,"entries":[{"type":"reg","name":"a","x":${'['.repeat(n)}${']'.repeat(n)}}]}`);
    assert.throws(
      () => parseToc(deep(200_000)),
      (e: unknown) => isTiuError(e, 'TOC_INVALID') && /nested deeper than 64 levels/.test((e as Error).message),
    );
    // Nesting up to the limit still reads (the document and its entries array count as two levels).
    assert.doesNotThrow(() => parseTocJson(Buffer.from(`${'['.repeat(MAX_JSON_DEPTH)}${']'.repeat(MAX_JSON_DEPTH)}`)));
    assert.throws(
      () => parseTocJson(Buffer.from(`${'['.repeat(MAX_JSON_DEPTH + 1)}${']'.repeat(MAX_JSON_DEPTH + 1)}`)),
      SyntaxError,
    );
    const stream = new TocJsonStream(() => {});
    assert.throws(() => {
      const doc = deep(200_000);
      for (let at = 0; at < doc.length; at += 4096) stream.push(doc.subarray(at, at + 4096));
      stream.end();
    }, /nested deeper than 64 levels/);
  });
});
