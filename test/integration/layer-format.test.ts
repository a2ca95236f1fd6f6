/**
 * Every layer tiu writes, checked the way containers/storage checks a zstd:chunked layer it
 * pulls (test/helpers/storage-check.ts: TOC against tar-split, entry by entry) and for what tiu
 * promises beyond that (TOC digests are the content frames, the tar-split rebuilds the tar
 * byte for byte, each layer carries its parent directories). A normal tree through
 * buildBundle, an awkward one through the `tiu build` CLI; and the checker refuses layers made
 * inconsistent on purpose, so its passes mean something.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { zstdCompressSync, zstdDecompressSync } from 'node:zlib';
import { buildBundle } from '../../src/bundle/build.ts';
import type { TreeEntry } from '../../src/layer/entry.ts';
import { writeLayer } from '../../src/bundle/layer-writer.ts';
import { OciLayoutTarget } from '../../src/content/oci-layout.ts';
import type { Descriptor, ImageConfig, ImageManifest } from '../../src/oci/types.ts';
import { makeAwkwardTree } from '../helpers/awkward-tree.ts';
import { requireRoot } from '../helpers/env.ts';
import { checkLayer, StorageCheckError } from '../helpers/storage-check.ts';
import { makeNastyTree } from '../helpers/tree.ts';

const TIU = new URL('../../bin/tiu', import.meta.url).pathname;
const POSITION = 'io.github.containers.zstd-chunked.manifest-position';
const CHECKSUM = 'io.github.containers.zstd-chunked.manifest-checksum';
const SPLIT = 'io.github.containers.zstd-chunked.tarsplit-position';

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

interface Layers {
  manifest: ImageManifest;
  config: ImageConfig;
  blobs: Buffer[];
}

async function readImage(layout: string, tag: string): Promise<Layers> {
  const t = await OciLayoutTarget.open(layout);
  const blob = (d: Descriptor) => readFile(join(layout, 'blobs/sha256', d.digest.slice('sha256:'.length)));
  const manifest = JSON.parse((await blob(await t.resolve(tag))).toString('utf8')) as ImageManifest;
  const config = JSON.parse((await blob(manifest.config)).toString('utf8')) as ImageConfig;
  return { manifest, config, blobs: await Promise.all(manifest.layers.map(blob)) };
}

function checkAll(img: Layers): void {
  for (const [i, d] of img.manifest.layers.entries()) {
    const r = checkLayer(img.blobs[i]!, d.annotations);
    assert.equal(r.diffId, img.config.rootfs.diff_ids[i], `layer ${i + 1}: diff_id`);
  }
}

/** A skippable zstd frame. */
function skippable(data: Buffer): Buffer {
  const h = Buffer.alloc(8);
  h.writeUInt32LE(0x184d2a50, 0);
  h.writeUInt32LE(data.length, 4);
  return Buffer.concat([h, data]);
}

/** The layer with its TOC replaced by `edit(toc)`, annotations and footer to match (so only the edit is wrong). */
function withToc(
  blob: Buffer,
  ann: Record<string, string>,
  edit: (toc: { entries: Record<string, unknown>[] }) => void,
): { blob: Buffer; ann: Record<string, string> } {
  const [tocOff, tocLen] = ann[POSITION]!.split(':').map(Number) as [number, number];
  const [splitOff, splitLen, splitUlen] = ann[SPLIT]!.split(':').map(Number) as [number, number, number];
  const toc = JSON.parse(zstdDecompressSync(blob.subarray(tocOff, tocOff + tocLen)).toString('utf8')) as {
    entries: Record<string, unknown>[];
  };
  edit(toc);
  const json = Buffer.from(JSON.stringify(toc), 'utf8');
  const compressed = zstdCompressSync(json);
  const head = blob.subarray(0, tocOff - 8);
  const newTocOff = head.length + 8;
  const newSplitOff = newTocOff + compressed.length + 8;
  const footer = Buffer.alloc(64);
  [newTocOff, compressed.length, json.length, 1, newSplitOff, splitLen, splitUlen].forEach((v, k) =>
    footer.writeBigUInt64LE(BigInt(v), k * 8),
  );
  footer.write('GNUlInUx', 56, 'latin1');
  return {
    blob: Buffer.concat([
      head,
      skippable(compressed),
      skippable(blob.subarray(splitOff, splitOff + splitLen)),
      skippable(footer),
    ]),
    ann: {
      ...ann,
      [POSITION]: `${newTocOff}:${compressed.length}:${json.length}:1`,
      [CHECKSUM]: `sha256:${createHash('sha256').update(compressed).digest('hex')}`,
      [SPLIT]: `${newSplitOff}:${splitLen}:${splitUlen}`,
    },
  };
}

describe('layer format: every layer tiu writes passes a containers/storage-faithful check', function () {
  this.timeout(300_000);
  let work = '';
  let normal: Layers;
  let awkward: Layers;
  let awkwardBuild: { code: number | null; out: string };

  before(async function () {
    requireRoot(this, 'needs root (devices, owners, security xattrs)');
    work = await mkdtemp(join(tmpdir(), 'tiu-layer-format-'));
    // The nasty tree without its one name that is not UTF-8 (the awkward tree has one).
    const src = join(work, 'normal');
    await makeNastyTree(src);
    await unlink(Buffer.from(`${src}/usr/share/odd/latin1-\xe9\xff-name`, 'latin1'));
    const layout = join(work, 'layout');
    await buildBundle({ kind: 'directory', path: src }, await OciLayoutTarget.open(layout, { create: true }), 'v1', {
      sourceDateEpoch: 1_767_225_600,
    });
    normal = await readImage(layout, 'v1');
    const awk = join(work, 'awkward');
    await makeAwkwardTree(awk);
    awkwardBuild = await tiu(['build', awk, '--tag', `oci:${layout}:awkward`, '--layers', '8'], {
      SOURCE_DATE_EPOCH: '1767225600',
    });
    assert.equal(awkwardBuild.code, 0, awkwardBuild.out);
    awkward = await readImage(layout, 'awkward');
  });
  after(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('a normal tree: several layers, each consistent on its own', function () {
    assert.ok(normal.manifest.layers.length >= 4, `${normal.manifest.layers.length} layers`);
    checkAll(normal);
  });

  it('the awkward tree (tiu build CLI): several layers, each consistent on its own', function () {
    assert.ok(awkward.manifest.layers.length >= 2, `${awkward.manifest.layers.length} layers`);
    checkAll(awkward);
  });

  describe('the checker refuses inconsistent layers', function () {
    /** The normal image's layer holding the most entries, with its annotations. */
    const sample = () => {
      let best = 0;
      for (let i = 1; i < normal.blobs.length; i++) if (normal.blobs[i]!.length > normal.blobs[best]!.length) best = i;
      return { blob: normal.blobs[best]!, ann: normal.manifest.layers[best]!.annotations ?? {} };
    };
    const refuses = (l: { blob: Buffer; ann: Record<string, string> }, why: RegExp) =>
      assert.throws(
        () => checkLayer(l.blob, l.ann),
        (e) => e instanceof StorageCheckError && why.test(e.message),
      );
    const firstFile = (toc: { entries: Record<string, unknown>[] }) =>
      toc.entries.find((e) => e.type === 'reg' && typeof e.size === 'number' && e.size > 0)!;

    it('the unedited layer passes (the edits below are the only fault)', function () {
      const s = sample();
      checkLayer(s.blob, s.ann);
      const same = withToc(s.blob, s.ann, () => undefined);
      checkLayer(same.blob, same.ann);
    });

    it('a TOC entry missing', function () {
      const s = sample();
      refuses(
        withToc(s.blob, s.ann, (t) => t.entries.splice(t.entries.indexOf(firstFile(t)), 1)),
        /tar-split contains an entry for .* missing in TOC/,
      );
    });

    it('a mode changed', function () {
      const s = sample();
      refuses(
        withToc(s.blob, s.ann, (t) => (firstFile(t).mode = 0o4777)),
        /mismatch of mode/,
      );
    });

    it('a name changed', function () {
      const s = sample();
      refuses(
        withToc(s.blob, s.ann, (t) => (firstFile(t).name = `${String(firstFile(t).name)}.renamed`)),
        /missing in TOC/,
      );
    });

    it('an mtime, an owner, an xattr changed; an entry twice', function () {
      const s = sample();
      refuses(
        withToc(s.blob, s.ann, (t) => (firstFile(t).modtime = '2001-02-03T04:05:06.7Z')),
        /mismatch of modTime/,
      );
      refuses(
        withToc(s.blob, s.ann, (t) => (firstFile(t).uid = 4242)),
        /mismatch of uid/,
      );
      refuses(
        withToc(s.blob, s.ann, (t) => (firstFile(t).xattrs = { 'user.x': 'eA==' })),
        /mismatch of xattrs/,
      );
      refuses(
        withToc(s.blob, s.ann, (t) => t.entries.push({ ...firstFile(t) })),
        /TOC contains duplicate entries/,
      );
    });

    it('a digest that is not the content frame', function () {
      const s = sample();
      refuses(
        withToc(s.blob, s.ann, (t) => (firstFile(t).digest = `sha256:${'0'.repeat(64)}`)),
        /TOC digest is not the sha256 of its content frame/,
      );
    });

    it('a layer without the parent directories of its entries', async function () {
      const e: TreeEntry = {
        path: 'usr/lib/orphan',
        type: 'reg',
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtimeNs: 1_700_000_000n * 1_000_000_000n,
        size: 3,
        xattrs: {},
        content: { data: Buffer.from('abc') },
      };
      const file = join(work, 'orphan.layer');
      const r = await writeLayer([e], file, { compression: 'zstd' });
      refuses({ blob: await readFile(file), ann: r.descriptor.annotations ?? {} }, /parent directory "usr" is not in/);
    });
  });
});
