/**
 * The delta artifact's TOC dictionary built in place: the same bytes the builder's
 * `tocDictionary` concatenates (else no patch decodes), TO's patched JSONs handed out as views
 * of it (one copy, not two), and a JSON of another size than the signed manifest declares refused.
 */
import assert from 'node:assert/strict';
import { zstdCompressSync } from 'node:zlib';
import { MAX_DICTIONARY_BYTES, TocDictionary } from '../../src/deploy/delta/toc-dictionary.ts';
import type { TocBytes } from '../../src/deploy/delta/tocs.ts';
import { ZstdChunkedAnnotation } from '../../src/layer/toc.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import type { Descriptor } from '../../src/oci/types.ts';
import { tocDictionary } from '../../src/patch/delta-index.ts';

const json = (name: string) => Buffer.from(JSON.stringify({ version: 1, entries: [{ type: 'reg', name }] }));

function layer(j: Buffer, n: number): Descriptor {
  return {
    mediaType: MediaType.OciLayerZstd,
    digest: `sha256:${n.toString(16).padStart(64, '0')}`,
    size: 1000,
    annotations: { [ZstdChunkedAnnotation.ManifestPosition]: `10:20:${j.length}:1` },
  };
}

describe('delta: the TOC dictionary built in place', () => {
  const from = [json('usr/a'), json('usr/bb')];
  const to = [json('usr/ccc'), json('usr/dddd'), json('usr/eeeee')];
  const fromLayers = from.map(layer);
  const toLayers = to.map((j, i) => layer(j, 10 + i));
  // FROM's first TOC kept compressed, its second as a JSON (it came from a patch once).
  const fromTocs: TocBytes[] = [{ compressed: zstdCompressSync(from[0]!) }, { json: from[1]! }];

  it('holds the bytes tocDictionary concatenates: FROM first, then TO, wherever each came from', () => {
    const d = new TocDictionary(fromTocs, fromLayers, toLayers);
    assert.deepEqual(d.from, tocDictionary(from, []));
    const placed = d.placeTo(1, to[1]!);
    const whole = d.whole([{ compressed: zstdCompressSync(to[0]!) }, { json: placed }, { json: to[2]! }]);
    assert.deepEqual(whole, tocDictionary(from, to));
  });

  it('a placed TO JSON is a view of the dictionary, not a second copy', () => {
    const d = new TocDictionary(fromTocs, fromLayers, toLayers);
    const placed = d.placeTo(2, to[2]!);
    assert.deepEqual(placed, to[2]);
    const whole = d.whole(to.map((j) => ({ json: j })));
    assert.equal(placed.buffer, whole.buffer);
    assert.equal(placed.byteOffset - whole.byteOffset, whole.length - to[2]!.length);
  });

  it('release frees the dictionary at once (its views read empty) and refuses to be used again', () => {
    // Over Buffer.poolSize (64 KiB here): a buffer of its own, which freeNow frees (a slab slice it leaves alone).
    const big = (n: string) =>
      Buffer.from(
        JSON.stringify({ version: 1, entries: Array.from({ length: 5000 }, (_, i) => ({ name: `${n}/${i}` })) }),
      );
    const f = big('usr/from');
    const t = big('usr/to');
    const d = new TocDictionary([{ json: f }], [layer(f, 1)], [layer(t, 2)]);
    const placed = d.placeTo(0, t);
    const whole = d.whole([{ json: placed }]);
    assert.equal(whole.length, f.length + t.length);
    d.release();
    assert.equal(whole.length, 0);
    assert.equal(placed.length, 0);
    assert.deepEqual(f, big('usr/from'), 'what it was built from is untouched');
    assert.throws(() => d.from, /released/);
  });

  it('refuses a JSON of another size than its layer declares', () => {
    const d = new TocDictionary(fromTocs, fromLayers, toLayers);
    assert.throws(() => d.placeTo(0, json('usr/other')), /declares/);
    const short = new TocDictionary([{ json: from[0]! }], [layer(json('usr/a-longer-name'), 1)], []);
    // A FROM JSON kept by the store is its own size: the dictionary takes it as it is.
    assert.deepEqual(short.from, from[0]);
    const lying = new TocDictionary([{ compressed: zstdCompressSync(from[0]!) }], [layer(json('usr/ab'), 1)], []);
    assert.throws(() => lying.from, /declares/);
  });

  it('decompresses nothing until a part is asked for', () => {
    const d = new TocDictionary([{ compressed: Buffer.from('not zstd') }], [layer(from[0]!, 1)], toLayers);
    assert.throws(() => d.from);
  });

  it('refuses to reserve more than MAX_DICTIONARY_BYTES, whatever the manifests declare', () => {
    // Every TO layer declares a TOC just under the per-TOC limit: together far over the total.
    const huge = (n: number): Descriptor => ({
      ...layer(json('x'), n),
      annotations: { [ZstdChunkedAnnotation.ManifestPosition]: `10:20:${MAX_DICTIONARY_BYTES - 1}:1` },
    });
    const d = new TocDictionary(fromTocs, fromLayers, [huge(20), huge(21), huge(22)]);
    assert.throws(() => d.from, /TOC dictionary would be \d+ bytes, over the limit/);
  });
});
