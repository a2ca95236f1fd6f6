/**
 * Images for the update tests (OsFile[] -> an OCI layout with one gzip or zstd tar layer), and
 * the update dependencies: the real transports, copy and cache (src/deploy/wiring.ts), plus
 * TEMPORARY scaffolding for what is not in main yet: a naive layer extractor, a naive /etc
 * merge and a digest-list policy. When apply (applyLayers, mergeEtc, mergeUsers) and trust
 * (the policy check) are merged, the tests switch to them and the scaffolding goes away. It is
 * never used by product code.
 */
import { createHash } from 'node:crypto';
import { lstat, mkdir, readdir, readFile, rm, symlink, writeFile, chmod, link, copyFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { gzipSync, zstdCompressSync } from 'node:zlib';
import tar from 'tar-stream';
import type { Target } from '../../src/content/interfaces.ts';
import type { Descriptor, Digest } from '../../src/oci/types.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import { OciLayoutTarget } from '../../src/content/oci-layout.ts';
import { transportDeps } from '../../src/deploy/wiring.ts';
import { TiuError } from '../../src/errors.ts';
import type { EtcMergeArgs, LayerStream, UpdateDeps } from '../../src/deploy/update.ts';
import { MICROOS_SUBVOLUMES, type OsFile } from './microos.ts';

const sha = (b: Uint8Array): Digest => `sha256:${createHash('sha256').update(b).digest('hex')}`;

export interface BuiltImage {
  manifest: Descriptor;
  layers: Descriptor[];
}

/** Directories every OS image carries as mount points. */
export const MOUNT_POINT_DIRS = [...MICROOS_SUBVOLUMES, 'boot/efi', 'dev', 'proc', 'sys', 'run', 'tmp', 'mnt'];

async function put(target: Target, mediaType: string, data: Buffer): Promise<Descriptor> {
  const desc: Descriptor = { mediaType, digest: sha(data), size: data.length };
  await target.push(desc, Readable.from([data]));
  return desc;
}

/** OsFile[] -> one tar layer (parents first, fixed mtimes) in the layout at `layout`, tagged `tag`. */
export async function buildImage(layout: string, tag: string, files: OsFile[], compression: 'gzip' | 'zstd' = 'gzip'): Promise<BuiltImage> {
  const target = await OciLayoutTarget.open(layout, { create: true });
  const pack = tar.pack();
  const mtime = new Date('2026-01-01T00:00:00Z');
  const dirs = new Set<string>(MOUNT_POINT_DIRS);
  for (const f of files) for (let d = dirname(f.path); d !== '.'; d = dirname(d)) dirs.add(d);
  for (const d of [...MOUNT_POINT_DIRS]) for (let p = dirname(d); p !== '.'; p = dirname(p)) dirs.add(p);
  const fileDirs = new Set(files.map((f) => f.path));
  for (const d of [...dirs].filter((x) => !fileDirs.has(x)).sort()) pack.entry({ name: d + '/', type: 'directory', mode: 0o755, mtime });
  for (const f of [...files].sort((a, b) => a.path.localeCompare(b.path))) {
    if (f.symlink !== undefined) pack.entry({ name: f.path, type: 'symlink', linkname: f.symlink, mode: 0o777, mtime });
    else pack.entry({ name: f.path, type: 'file', mode: f.mode ?? 0o644, mtime }, Buffer.from(f.content ?? ''));
  }
  pack.finalize();
  const tarBytes = await buffer(pack);
  const layerBytes = compression === 'gzip' ? gzipSync(tarBytes) : zstdCompressSync(tarBytes);
  const layer = await put(target, compression === 'gzip' ? MediaType.OciLayerGzip : MediaType.OciLayerZstd, layerBytes);
  const config = await put(target, MediaType.OciConfig, Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [sha(tarBytes)] } })));
  const manifest = await put(target, MediaType.OciManifest, Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciManifest, config, layers: [layer] })));
  await target.tag(manifest, tag);
  return { manifest, layers: [layer] };
}

const PROTECTED = new Set(['.snapshots', ...MOUNT_POINT_DIRS]);

/** Naive extraction of the layers into root, then removal of what the image does not have. */
export async function testApply(o: { root: string; layers: AsyncIterable<LayerStream> }): Promise<{ written: number }> {
  const keep = new Set<string>();
  let written = 0;
  for await (const layer of o.layers) {
    const ex = tar.extract();
    layer.tar.on('error', (e) => ex.destroy(e));
    layer.tar.pipe(ex);
    for await (const entry of ex) {
      const name = entry.header.name.replace(/^\.?\/+/, '').replace(/\/+$/, '');
      if (name.split('/').includes('..')) throw new TiuError('UNSAFE_PATH', `entry ${name} leaves the tree`);
      for (let p = name; p !== '.'; p = dirname(p)) keep.add(p);
      const abs = join(o.root, name);
      const data = await buffer(entry);
      const t = entry.header.type;
      if (t === 'directory') {
        await mkdir(abs, { recursive: true });
        await chmod(abs, entry.header.mode ?? 0o755);
        continue;
      }
      await mkdir(dirname(abs), { recursive: true });
      const old = await lstat(abs).catch(() => undefined);
      if (old && !old.isDirectory()) await rm(abs);
      if (t === 'symlink') await symlink(entry.header.linkname, abs);
      else if (t === 'link') await link(join(o.root, entry.header.linkname), abs);
      else {
        const same = old?.isFile() && (await readFile(abs).catch(() => undefined))?.equals(data);
        if (!same) written += data.length;
        await writeFile(abs, data);
        await chmod(abs, entry.header.mode ?? 0o644);
      }
    }
  }
  const prune = async (rel: string): Promise<void> => {
    for (const e of await readdir(join(o.root, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (PROTECTED.has(r)) continue;
      if (!keep.has(r)) await rm(join(o.root, r), { recursive: true, force: true });
      else if (e.isDirectory()) await prune(r);
    }
  };
  await prune('');
  return { written };
}

async function listFiles(dir: string, rel = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(join(dir, rel), { withFileTypes: true }).catch(() => [])) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...(await listFiles(dir, r)));
    else out.push(r);
  }
  return out;
}

const read = (p: string) => readFile(p).catch(() => undefined);
const same = (a: Buffer | undefined, b: Buffer | undefined) => (a === undefined ? b === undefined : b !== undefined && a.equals(b));

/** Naive three-way merge of regular files (the target already holds theirs). */
export async function testMergeEtc(a: EtcMergeArgs): Promise<{ conflicts: string[] }> {
  const conflicts: string[] = [];
  for (const rel of await listFiles(a.ours)) {
    if ((await lstat(join(a.ours, rel))).isSymbolicLink()) continue;
    const [b, o, t] = await Promise.all([a.base ? read(join(a.base, rel)) : undefined, read(join(a.ours, rel)), read(join(a.theirs, rel))]);
    if (same(o, b)) continue; // the admin did not touch it: the new default stays
    if (same(t, b) || t === undefined || same(t, o)) {
      await mkdir(dirname(join(a.target, rel)), { recursive: true });
      await copyFile(join(a.ours, rel), join(a.target, rel));
    } else {
      await copyFile(join(a.ours, rel), join(a.target, rel));
      await writeFile(join(a.target, rel + '.tiunew'), t);
      conflicts.push(`/etc/${rel}`);
    }
  }
  return { conflicts };
}

/** The real transports and cache; scaffolding for policy (a list of accepted digests), apply and merges. */
export function testDeps(trusted: Set<string>): UpdateDeps {
  return {
    ...transportDeps,
    checkPolicy: ({ root, reference }) =>
      trusted.has(root.digest) ? Promise.resolve() : Promise.reject(new TiuError('SIGNATURE_REQUIRED', `no accepted signature for ${reference} (${root.digest})`)),
    applyLayers: (a) => testApply(a),
    mergeEtc: (a) => testMergeEtc(a),
    mergeUsers: () => Promise.resolve({ clashes: [] }),
  };
}
