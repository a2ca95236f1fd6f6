/**
 * Images for the update tests: OsFile[] -> an OCI layout with one gzip or zstd tar layer,
 * signed with a test key that a policy installed into the system requires.
 */
import { createHash, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { gzipSync, zstdCompressSync } from 'node:zlib';
import tar from 'tar-stream';
import type { Target } from '../../src/content/interfaces.ts';
import type { Descriptor, Digest } from '../../src/oci/types.ts';
import { MediaType } from '../../src/oci/mediatypes.ts';
import { OciLayoutTarget } from '../../src/content/oci-layout.ts';
import { signImage } from '../../src/trust/sign.ts';
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
export async function buildImage(
  layout: string,
  tag: string,
  files: OsFile[],
  compression: 'gzip' | 'zstd' = 'gzip',
): Promise<BuiltImage> {
  const target = await OciLayoutTarget.open(layout, { create: true });
  const pack = tar.pack();
  const mtime = new Date('2026-01-01T00:00:00Z');
  const dirs = new Set<string>(MOUNT_POINT_DIRS);
  for (const f of files) for (let d = dirname(f.path); d !== '.'; d = dirname(d)) dirs.add(d);
  for (const d of [...MOUNT_POINT_DIRS]) for (let p = dirname(d); p !== '.'; p = dirname(p)) dirs.add(p);
  const fileDirs = new Set(files.map((f) => f.path));
  for (const d of [...dirs].filter((x) => !fileDirs.has(x)).sort())
    pack.entry({ name: d + '/', type: 'directory', mode: 0o755, mtime });
  for (const f of [...files].sort((a, b) => a.path.localeCompare(b.path))) {
    if (f.symlink !== undefined) pack.entry({ name: f.path, type: 'symlink', linkname: f.symlink, mode: 0o777, mtime });
    else pack.entry({ name: f.path, type: 'file', mode: f.mode ?? 0o644, mtime }, Buffer.from(f.content ?? ''));
  }
  pack.finalize();
  const tarBytes = await buffer(pack);
  const layerBytes = compression === 'gzip' ? gzipSync(tarBytes) : zstdCompressSync(tarBytes);
  const layer = await put(target, compression === 'gzip' ? MediaType.OciLayerGzip : MediaType.OciLayerZstd, layerBytes);
  const config = await put(
    target,
    MediaType.OciConfig,
    Buffer.from(
      JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [sha(tarBytes)] } }),
    ),
  );
  const manifest = await put(
    target,
    MediaType.OciManifest,
    Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciManifest, config, layers: [layer] })),
  );
  await target.tag(manifest, tag);
  return { manifest, layers: [layer] };
}

export const TEST_IDENTITY = 'registry.example/fake/microos';

/** A P-256 signing key, its public half written into the system with a policy that requires it for oci: and docker:. */
export async function installPolicy(sysroot: string): Promise<KeyObject> {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  await mkdir(join(sysroot, 'etc/tiu'), { recursive: true });
  await writeFile(join(sysroot, 'etc/tiu/cosign.pub'), publicKey.export({ format: 'pem', type: 'spki' }));
  const req = [
    {
      type: 'sigstoreSigned',
      keyPath: join(sysroot, 'etc/tiu/cosign.pub'),
      signedIdentity: { type: 'exactRepository', dockerRepository: TEST_IDENTITY },
    },
  ];
  await writeFile(
    join(sysroot, 'etc/tiu/policy.json'),
    JSON.stringify({ default: [{ type: 'reject' }], transports: { oci: { '': req }, docker: { '': req } } }),
  );
  return privateKey;
}

/** Sign the image tagged `tag` in the layout the way `tiu sign` does. */
export async function signInLayout(layout: string, tag: string, key: KeyObject): Promise<void> {
  const t = await OciLayoutTarget.open(layout);
  await signImage(t, await t.resolve(tag), key, { dockerReference: `${TEST_IDENTITY}:${tag}` });
}
