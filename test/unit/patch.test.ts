/**
 * The delta artifact format (src/patch): the patch-from codec and the index. Everything a
 * delta artifact says is untrusted: each malformed field and broken bound is refused by code.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { constants, zstdCompressSync } from 'node:zlib';
import { isTiuError } from '../../src/errors.ts';
import { bstr } from '../../src/layer/entry.ts';
import { skippableFrame } from '../../src/layer/toc.ts';
import { encodeTocJson } from '../../src/layer/toc-json.ts';
import { sha256 } from '../../src/oci/digest.ts';
import type { Digest } from '../../src/oci/types.ts';
import { canPatch, decodePatch, decodePatchFreeingOld, encodePatch, patchWindowLog } from '../../src/patch/codec.ts';
import {
  encodeDeltaIndex,
  parseDeltaFiles,
  parseDeltaHeader,
  tocDictionary,
  type DeltaFilePatch,
  type DeltaHeader,
} from '../../src/patch/delta-index.ts';
import {
  MAX_DELTA_HEADER_BYTES,
  MAX_DELTA_INDEX_BYTES,
  MAX_PATCH_INPUT,
  PATCH_WINDOW_LOG_MAX,
} from '../../src/patch/media.ts';

const code = (c: string) => (e: unknown) => isTiuError(e) && e.code === c;
const withMessage = (c: string, re: RegExp) => (e: unknown) => isTiuError(e) && e.code === c && re.test(e.message);

/** A text-like old file and a new version with a few edits (what an OS update looks like). */
function pair(size = 200_000): { old: Buffer; neu: Buffer } {
  const words = Array.from({ length: 500 }, (_, i) => `word${i * 7919}`);
  const lines: string[] = [];
  for (let i = 0, length = 0; length < size; i++) {
    const line = `${i} ${words[(i * 31) % 500]} ${words[(i * 17) % 500]}`;
    lines.push(line);
    length += line.length + 1;
  }
  const old = Buffer.from(lines.join('\n'));
  lines[10] = 'changed line';
  lines.splice(500, 3, 'inserted', 'lines');
  return { old, neu: Buffer.from(lines.join('\n')) };
}

const target = (b: Buffer, name = 'usr/bin/x') => ({ size: b.length, digest: sha256(b), name });

describe('patch codec (zstd patch-from)', function () {
  it('round-trips, and the patch is much smaller than the new file compressed alone', async function () {
    const { old, neu } = pair();
    const patch = await encodePatch(old, neu);
    assert.ok(patch);
    assert.ok(decodePatch(patch, old, target(neu)).equals(neu));
    const alone = zstdCompressSync(neu, { params: { [constants.ZSTD_c_compressionLevel]: 19 } });
    assert.ok(patch.length * 10 < alone.length, `patch ${patch.length} vs alone ${alone.length}`);
  });

  it('is deterministic: the same inputs give the same bytes', async function () {
    const { old, neu } = pair();
    assert.deepEqual(await encodePatch(old, neu), await encodePatch(old, neu));
  });

  it('round-trips random (incompressible) content and an empty old file', async function () {
    const old = randomBytes(70_000);
    const neu = Buffer.concat([old.subarray(0, 30_000), randomBytes(100), old.subarray(30_000)]);
    const patch = await encodePatch(old, neu);
    assert.ok(patch && patch.length < 1000, `patch of ${patch?.length} bytes`);
    assert.ok(decodePatch(patch, old, target(neu)).equals(neu));
    const fromNothing = await encodePatch(Buffer.alloc(0), neu);
    assert.ok(fromNothing && decodePatch(fromNothing, Buffer.alloc(0), target(neu)).equals(neu));
  });

  it('refuses a patch with a flipped byte (PATCH_INVALID)', async function () {
    const { old, neu } = pair();
    const patch = (await encodePatch(old, neu))!;
    let refused = 0;
    // Every position: a flip in the frame header, a block header or the compressed data.
    for (let i = 0; i < patch.length; i += Math.max(1, Math.floor(patch.length / 40))) {
      const bad = Buffer.from(patch);
      bad[i] = bad[i]! ^ 0xff;
      assert.throws(() => decodePatch(bad, old, target(neu)), code('PATCH_INVALID'), `flip at ${i}`);
      refused++;
    }
    assert.ok(refused >= 20);
  });

  it('refuses a patch applied to another old file: it would decode, only the digest tells (PATCH_INVALID)', async function () {
    const { old, neu } = pair();
    const patch = (await encodePatch(old, neu))!;
    const other = Buffer.from(old);
    other.write('something else entirely', 100);
    assert.throws(() => decodePatch(patch, other, target(neu)), withMessage('PATCH_INVALID', /decodes to sha256:/));
  });

  it('refuses output larger or smaller than the signed size, producing no more than it', async function () {
    const { old, neu } = pair();
    const patch = (await encodePatch(old, neu))!;
    assert.throws(
      () => decodePatch(patch, old, { ...target(neu), size: neu.length - 1 }),
      withMessage('PATCH_INVALID', /more than \d+ bytes/),
    );
    assert.throws(
      () => decodePatch(patch, old, { ...target(neu), size: neu.length + 1 }),
      withMessage('PATCH_INVALID', /expected \d+/),
    );
  });

  it('decodes into one Buffer of the file size: no 16 KiB pieces copied into a second (issue 19)', async function () {
    const { old, neu } = pair(1_000_000);
    const patch = (await encodePatch(old, neu))!;
    // Node's zlib takes its output chunks from Buffer.allocUnsafe: the content must be the one
    // chunk it wrote into, not a concatenation of many (a second copy of the file).
    const original = Object.getOwnPropertyDescriptor(Buffer, 'allocUnsafe')!;
    const allocUnsafe = Buffer.allocUnsafe.bind(Buffer);
    const chunks: ArrayBufferLike[] = [];
    let allocated = 0;
    Buffer.allocUnsafe = (n: number) => {
      const b = allocUnsafe(n);
      chunks.push(b.buffer);
      allocated += n;
      return b;
    };
    let out: Buffer;
    try {
      out = decodePatch(patch, old, target(neu));
    } finally {
      Object.defineProperty(Buffer, 'allocUnsafe', original);
    }
    assert.ok(out.equals(neu));
    assert.ok(chunks.includes(out.buffer), `the content is not a decoder chunk (${chunks.length} chunks)`);
    assert.ok(
      out.byteOffset === 0 && out.buffer.byteLength <= neu.length + 1,
      'a Buffer of its own (freeNow frees it)',
    );
    assert.ok(allocated < neu.length * 1.1, `${allocated} bytes of chunks for ${neu.length}`);
  });

  it('decodePatchFreeingOld: frees the old file once the decoder holds its copy, and decodes and verifies as decodePatch', async function () {
    const { old, neu } = pair(300_000);
    const patch = (await encodePatch(old, neu))!;
    const own = (b: Buffer) => Buffer.from(b); // an ArrayBuffer of its own, as readOld's
    const mine = own(old);
    const out = await decodePatchFreeingOld(patch, mine, target(neu));
    // Freed before the decoding ran: the decoder used its own copy of the dictionary.
    assert.equal(mine.length, 0);
    assert.ok(out.equals(neu));
    const bad = Buffer.from(patch);
    bad[bad.length - 5] = bad[bad.length - 5]! ^ 0xff;
    for (const [p, t, re] of [
      [bad, target(neu), /PATCH_INVALID|does not decode|decodes to/],
      [patch, { ...target(neu), size: neu.length - 1 }, /more than \d+ bytes/],
      [patch.subarray(1), target(neu), /not one zstd frame/],
    ] as const) {
      const o = own(old);
      await assert.rejects(
        decodePatchFreeingOld(p, o, t),
        (e) => isTiuError(e) && e.code === 'PATCH_INVALID' && re.test(e.message),
      );
      assert.equal(o.length, 0, 'freed when the patch fails too');
    }
  });

  it('refuses trailing bytes, a second frame, a skippable frame and a truncated patch', async function () {
    const { old, neu } = pair();
    const patch = (await encodePatch(old, neu))!;
    for (const bad of [
      Buffer.concat([patch, Buffer.from([0])]),
      Buffer.concat([patch, zstdCompressSync(Buffer.from('x'))]),
      Buffer.concat([skippableFrame(Buffer.from('hidden')), patch]),
      patch.subarray(0, patch.length - 3),
      Buffer.alloc(0),
    ])
      assert.throws(() => decodePatch(bad, old, target(neu)), withMessage('PATCH_INVALID', /not one zstd frame/));
  });

  it('window: covers old + new, at least 2^10, at most 2^26', function () {
    assert.equal(patchWindowLog(0, 0), 10);
    assert.equal(patchWindowLog(1000, 24), 11);
    assert.equal(patchWindowLog(1 << 20, 1 << 20), 22);
    assert.equal(patchWindowLog(MAX_PATCH_INPUT, MAX_PATCH_INPUT), PATCH_WINDOW_LOG_MAX);
    assert.equal(patchWindowLog(1 << 30, 1), PATCH_WINDOW_LOG_MAX);
  });

  it('makes no patch for inputs over MAX_PATCH_INPUT or an old file zstd would read as a formatted dictionary', async function () {
    const big = Buffer.alloc(MAX_PATCH_INPUT + 1);
    const small = Buffer.from('small');
    assert.equal(canPatch(big, small), false);
    assert.equal(canPatch(small, big), false);
    assert.equal(await encodePatch(big, small), undefined);
    const dictLike = Buffer.concat([Buffer.from([0x37, 0xa4, 0x30, 0xec]), Buffer.from('rest of it')]);
    assert.equal(await encodePatch(dictLike, small), undefined);
    assert.equal(canPatch(Buffer.alloc(MAX_PATCH_INPUT), small), true);
  });
});

const D = (n: number) => `sha256:${n.toString(16).padStart(64, '0')}` as Digest;

/** An index written field by field, so tests can break any field. */
function rawIndex(header: unknown, files: unknown, dictionary: Buffer): Buffer {
  const filesJson = encodeTocJson(files);
  const h = typeof header === 'function' ? (header as (n: number) => unknown)(filesJson.length) : header;
  return Buffer.concat([
    zstdCompressSync(Buffer.from(JSON.stringify(h))),
    zstdCompressSync(filesJson, dictionary.length ? { dictionary } : {}),
  ]);
}

describe('delta index', function () {
  const fromToc = encodeTocJson({ version: 1, entries: [{ type: 'reg', name: 'usr/bin/a', digest: D(1) }] });
  const toToc = encodeTocJson({ version: 1, entries: [{ type: 'reg', name: 'usr/bin/a', digest: D(2) }] });
  const dict = tocDictionary([fromToc], [toToc]);
  const name = bstr(Buffer.from([0x75, 0x73, 0x72, 0x2f, 0x63, 0x61, 0x66, 0xe9])); // usr/caf\xe9
  const files: DeltaFilePatch[] = [
    { path: 'usr/bin/a', old: D(1), new: D(2), offset: 30, size: 100 },
    { path: name, old: D(3), new: D(4), offset: 130, size: 7 },
  ];
  const head = { from: D(10), to: D(11), fromTocs: [D(20), D(21)], tocs: [{ layer: D(30), offset: 0, size: 30 }] };
  const bounds = { patchesSize: 137, maxFiles: 2 };
  const good = {
    version: 1,
    from: D(10),
    to: D(11),
    fromTocs: [D(20)],
    tocs: [{ layer: D(30), offset: 0, size: 30 }],
  };
  const goodFiles = { files: files.map((f) => ({ ...f })) };
  const header = (over: Record<string, unknown>) => (n: number) => ({ ...good, files: { size: n }, ...over });

  it('round-trips header and files (names as raw bytes), deterministically', function () {
    const blob = encodeDeltaIndex(head, files, dict);
    assert.deepEqual(encodeDeltaIndex(head, files, dict), blob);
    const h = parseDeltaHeader(blob, bounds.patchesSize);
    assert.deepEqual({ from: h.from, to: h.to, fromTocs: h.fromTocs, tocs: h.tocs }, head);
    assert.equal(h.version, 1);
    assert.deepEqual(parseDeltaFiles(blob, h, dict, bounds), files);
  });

  it('the TOC dictionary makes the digests and paths in the files frame nearly free', function () {
    const many = Array.from({ length: 300 }, (_, i) => ({
      type: 'reg',
      name: `usr/lib/x86_64-linux-gnu/libexample-${i}.so.1`,
      digest: sha256(`old ${i}`),
    }));
    const fromJson = encodeTocJson({ version: 1, entries: many });
    const toEntries = many.map((e, i) => ({ ...e, digest: sha256(`new ${i}`) }));
    const toJson = encodeTocJson({ version: 1, entries: toEntries });
    let offset = 0;
    const list = many.map((e, i) => {
      const f = { path: e.name, old: e.digest, new: toEntries[i]!.digest, offset, size: 1000 };
      offset += 1000;
      return f;
    });
    const h = { from: D(1), to: D(2), fromTocs: [D(3)], tocs: [] };
    const withDict = encodeDeltaIndex(h, list, tocDictionary([fromJson], [toJson]));
    const without = encodeDeltaIndex(h, list, Buffer.alloc(0));
    assert.ok(
      withDict.length * 5 < without.length,
      `${withDict.length} with the dictionary, ${without.length} without`,
    );
    const parsed = parseDeltaHeader(withDict, offset);
    assert.deepEqual(
      parseDeltaFiles(withDict, parsed, tocDictionary([fromJson], [toJson]), { patchesSize: offset, maxFiles: 300 }),
      list,
    );
  });

  it('refuses the files frame decoded with another dictionary', function () {
    const blob = encodeDeltaIndex(head, files, dict);
    const h = parseDeltaHeader(blob, bounds.patchesSize);
    const other = randomBytes(dict.length);
    assert.throws(() => parseDeltaFiles(blob, h, other, bounds), code('DELTA_INDEX_INVALID'));
  });

  const badHeaders: [string, unknown, RegExp][] = [
    ['version 2', header({ version: 2 }), /version 2 is not 1/],
    ['a missing field', (n: number) => ({ ...good, files: { size: n }, to: undefined }), /has no to/],
    ['an unknown field', header({ extra: 1 }), /unknown field "extra"/],
    ['a bad from digest', header({ from: 'sha256:abc' }), /from is not a sha256 digest/],
    ['an upper-case digest', header({ to: D(11).toUpperCase() }), /to is not a sha256 digest/],
    ['fromTocs not an array', header({ fromTocs: D(1) }), /fromTocs is not an array/],
    ['a bad fromTocs digest', header({ fromTocs: [D(1), 'md5:x'] }), /fromTocs\[1\] is not a sha256 digest/],
    ['too many fromTocs', header({ fromTocs: Array.from({ length: 1025 }, (_, i) => D(i)) }), /more than 1024/],
    ['a TOC patch not an object', header({ tocs: [7] }), /tocs\[0\] is not an object/],
    ['a TOC patch with a bad layer', header({ tocs: [{ layer: 'x', offset: 0, size: 30 }] }), /tocs\[0\] layer/],
    [
      'a layer twice',
      header({
        tocs: [
          { layer: D(30), offset: 0, size: 10 },
          { layer: D(30), offset: 10, size: 20 },
        ],
      }),
      /a second time/,
    ],
    ['a negative offset', header({ tocs: [{ layer: D(30), offset: -1, size: 30 }] }), /offset is not a whole number/],
    ['a fractional size', header({ tocs: [{ layer: D(30), offset: 0, size: 1.5 }] }), /size is not a whole number/],
    ['an empty patch', header({ tocs: [{ layer: D(30), offset: 0, size: 0 }] }), /size is not a whole number/],
    ['a gap', header({ tocs: [{ layer: D(30), offset: 5, size: 25 }] }), /starts at 5, expected 0/],
    ['a patch past the blob', header({ tocs: [{ layer: D(30), offset: 0, size: 138 }] }), /past the patches blob/],
    ['files.size not a number', header({ files: { size: '12' } }), /files size/],
    ['files.size over the limit', header({ files: { size: 64 * 1024 * 1024 + 1 } }), /files size/],
    ['the header an array', [1], /the header is not an object/],
  ];
  for (const [what, h, re] of badHeaders)
    it(`refuses a header with ${what}`, function () {
      const blob = rawIndex(h, goodFiles, dict);
      assert.throws(() => parseDeltaHeader(blob, bounds.patchesSize), withMessage('DELTA_INDEX_INVALID', re));
    });

  it('refuses a header that is not JSON, one frame only, three frames, trailing or skippable bytes', function () {
    const blob = encodeDeltaIndex(head, files, dict);
    const notJson = Buffer.concat([zstdCompressSync(Buffer.from('{nope')), zstdCompressSync(Buffer.from('x'))]);
    const first = blob.subarray(0, blob.length - zstdCompressSync(Buffer.from('x')).length);
    for (const [bad, re] of [
      [notJson, /not JSON/],
      [Buffer.concat([blob, zstdCompressSync(Buffer.from('x'))]), /found 3 frames/],
      [Buffer.concat([blob, Buffer.from([1, 2])]), /not zstd frames/],
      [Buffer.concat([skippableFrame(Buffer.from('x')), blob]), /two zstd frames/],
      [zstdCompressSync(Buffer.from('{}')), /found 1 frames/],
      [first.subarray(0, 5), /not zstd frames/],
    ] as [Buffer, RegExp][])
      assert.throws(() => parseDeltaHeader(bad, bounds.patchesSize), withMessage('DELTA_INDEX_INVALID', re));
  });

  it('bounds: an index blob over 16 MiB and a header over 1 MiB are DELTA_INDEX_TOO_LARGE', function () {
    assert.throws(() => parseDeltaHeader(Buffer.alloc(MAX_DELTA_INDEX_BYTES + 1), 0), code('DELTA_INDEX_TOO_LARGE'));
    const huge = { ...good, files: { size: 1 }, pad: 'x'.repeat(MAX_DELTA_HEADER_BYTES) };
    const blob = Buffer.concat([
      zstdCompressSync(Buffer.from(JSON.stringify(huge))),
      zstdCompressSync(Buffer.from('x')),
    ]);
    assert.throws(() => parseDeltaHeader(blob, 0), code('DELTA_INDEX_TOO_LARGE'));
  });

  const badFiles: [string, unknown, RegExp, Partial<typeof bounds>?][] = [
    ['not an object', [1], /the files frame is not an object/],
    ['an unknown field', { files: [], more: 1 }, /unknown field "more"/],
    ['files not an array', { files: {} }, /files is not an array/],
    ['more files than TO has', goodFiles, /has 2 items, more than 1/, { maxFiles: 1 }],
    ['an entry without path', { files: [{ ...files[0], path: undefined }, files[1]] }, /files\[0\] has no path/],
    ['an empty path', { files: [{ ...files[0], path: '' }, files[1]] }, /files\[0\] path/],
    ['a path with NUL', { files: [{ ...files[0], path: 'a\0b' }, files[1]] }, /files\[0\] path/],
    ['a path over 4096 bytes', { files: [{ ...files[0], path: 'a'.repeat(4097) }, files[1]] }, /files\[0\] path/],
    ['a path twice', { files: [files[0], { ...files[1], path: 'usr/bin/a' }] }, /a second time/],
    ['a bad old digest', { files: [{ ...files[0], old: 'x' }, files[1]] }, /files\[0\] old/],
    ['a bad new digest', { files: [files[0], { ...files[1], new: D(4) + '0' }] }, /files\[1\] new/],
    ['old equal to new', { files: [{ ...files[0], new: D(1) }, files[1]] }, /into itself/],
    ['a patch inside the TOC patches', { files: [{ ...files[0], offset: 0 }, files[1]] }, /starts at 0, expected 30/],
    ['patches out of order', { files: [files[1], files[0]] }, /starts at 130, expected 30/],
    ['an overlap', { files: [files[0], { ...files[1], offset: 129 }] }, /starts at 129, expected 130/],
    ['a zero size', { files: [{ ...files[0], size: 0 }, files[1]] }, /size is not a whole number/],
    ['a patch past the blob', goodFiles, /past the patches blob/, { patchesSize: 136 }],
    [
      'patches that stop short of the blob end',
      goodFiles,
      /end at 137, but the patches blob has 140/,
      { patchesSize: 140 },
    ],
    ['an unsafe offset', { files: [{ ...files[0], offset: 2 ** 53 }, files[1]] }, /offset is not a whole number/],
  ];
  for (const [what, f, re, over] of badFiles)
    it(`refuses files with ${what}`, function () {
      const blob = rawIndex(header({}), f, dict);
      const b = { ...bounds, ...over };
      const h = parseDeltaHeader(blob, b.patchesSize);
      assert.throws(() => parseDeltaFiles(blob, h, dict, b), withMessage('DELTA_INDEX_INVALID', re));
    });

  it('refuses a files frame larger or smaller than the header declares', function () {
    for (const delta of [-1, 1]) {
      const blob = rawIndex((n: number) => ({ ...good, files: { size: n + delta } }), goodFiles, dict);
      const h = parseDeltaHeader(blob, bounds.patchesSize);
      assert.throws(() => parseDeltaFiles(blob, h, dict, bounds), withMessage('DELTA_INDEX_INVALID', /declare/));
    }
  });

  it('refuses files JSON that does not parse', function () {
    const junk = Buffer.from('{"files":[');
    const blob = Buffer.concat([
      zstdCompressSync(Buffer.from(JSON.stringify({ ...good, files: { size: junk.length } }))),
      zstdCompressSync(junk),
    ]);
    const h = parseDeltaHeader(blob, bounds.patchesSize);
    assert.throws(
      () => parseDeltaFiles(blob, h, Buffer.alloc(0), bounds),
      withMessage('DELTA_INDEX_INVALID', /not JSON/),
    );
  });

  it('accepts an index with no patches at all (an empty patches blob)', function () {
    const blob = encodeDeltaIndex({ from: D(1), to: D(2), fromTocs: [], tocs: [] }, [], Buffer.alloc(0));
    const h: DeltaHeader = parseDeltaHeader(blob, 0);
    assert.deepEqual(parseDeltaFiles(blob, h, Buffer.alloc(0), { patchesSize: 0, maxFiles: 0 }), []);
  });
});
