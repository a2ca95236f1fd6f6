/**
 * `tiu build`: a directory, a tar archive or an image -> tree -> tree rules -> N layers -> config
 * and manifest -> pushed to a Target and tagged. Blobs are written to temp files first (their
 * digests must be known before a push), then moved into a target that takes files (an OCI
 * layout) or streamed to it; nothing the size of the tree is ever held in memory.
 */
import { mkdtemp, open, rm, stat } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import { once } from 'node:events';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline, Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import type { Target } from '../content/interfaces.ts';
import { Semaphore } from '../util/semaphore.ts';
import { VerifyingStream, sha256, verifyBuffer } from '../oci/digest.ts';
import { isIndexType, isManifestType, MediaType } from '../oci/mediatypes.ts';
import { Annotation, type Descriptor, type ImageConfig, type ImageIndex, type ImageManifest } from '../oci/types.ts';
import { hostArchitecture } from '../oci/platform.ts';
import { decompressStream } from '../layer/decompress.ts';
import { BuildError, treePath } from './errors.ts';
import { contentFile, mtimeParts, type TreeEntry } from '../layer/entry.ts';
import { parentOf } from '../layer/paths.ts';
import { DEFAULT_LAYERS, findSorted, largestFirst, MAX_LAYERS, planLayers } from './layers.ts';
import { collectNow } from '../util/collect.ts';
import { writeLayerContent, type LayerCompression, type LayerResult } from './layer-writer.ts';
import { checkOsReleaseSize, OS_RELEASE_KEYS, parseOsRelease } from './os-release.ts';
import { applyTreeRules, contentsExcluded, normalizeExcludes } from './rules.ts';
import { scanDirectory } from './source-dir.ts';
import { formatModtime } from '../layer/toc.ts';
import { TreeBuilder } from './source-tar.ts';

/** Version of the bundle format (manifest annotation org.opensuse.tiu.bundle.version). */
export const BUNDLE_FORMAT_VERSION = '1';
/** The oldest agent that applies this format. */
export const MIN_AGENT_VERSION = '0.1.0';

export const TiuAnnotation = {
  BundleVersion: 'org.opensuse.tiu.bundle.version',
  MinAgentVersion: 'org.opensuse.tiu.min-agent-version',
  OsReleasePrefix: 'org.opensuse.tiu.os-release.',
} as const;

export type BuildSource =
  | { kind: 'directory'; path: string }
  | { kind: 'archive'; path: string }
  | { kind: 'image'; target: Target; reference: string };

export interface BuildOptions {
  compression?: LayerCompression;
  layers?: number;
  exclude?: string[];
  annotations?: Record<string, string>;
  /** OCI architecture; default: the host's. */
  architecture?: string;
  /** Seconds; default SOURCE_DATE_EPOCH from the environment, else the newest mtime in the tree. */
  sourceDateEpoch?: number;
  level?: number;
  tmpDir?: string;
  signal?: AbortSignal;
  onProgress?: (line: string) => void;
}

export interface BuildResult {
  descriptor: Descriptor;
  manifest: ImageManifest;
  config: ImageConfig;
  layers: LayerResult[];
  entries: number;
}

export function sourceDateEpochFromEnv(env: NodeJS.ProcessEnv = process.env): number | undefined {
  const v = env.SOURCE_DATE_EPOCH;
  if (v === undefined || v === '') return undefined;
  if (!/^\d+$/.test(v))
    throw new BuildError('BUILD_OPTION_INVALID', `SOURCE_DATE_EPOCH=${JSON.stringify(v)} is not a number of seconds`);
  return Number(v);
}

/** Decide what SOURCE is: an existing directory, an existing file (a tar), else an image reference. */
export async function classifySource(source: string): Promise<'directory' | 'archive' | 'image'> {
  try {
    const st = await stat(source);
    if (st.isDirectory()) return 'directory';
    if (st.isFile()) return 'archive';
    throw new BuildError('BUILD_SOURCE_UNSUPPORTED', `${source} is neither a directory nor a file`, { source });
  } catch (e) {
    if (e instanceof BuildError) throw e;
    // Something spelled as a path is a missing path, not an image name.
    if (/^(?:\/|\.\.?(?:\/|$)|~)/.test(source))
      throw new BuildError('BUILD_SOURCE_NOT_FOUND', `source ${source} does not exist`, { source });
    return 'image';
  }
}

async function fetchJson<T>(target: Target, desc: Descriptor, limit: number): Promise<T> {
  if (desc.size > limit)
    throw new BuildError(
      'BUILD_SOURCE_UNSUPPORTED',
      `${desc.mediaType} ${desc.digest} of ${desc.size} bytes is too large`,
    );
  const data = await buffer(await target.fetch(desc));
  verifyBuffer(desc, data, desc.mediaType);
  return JSON.parse(data.toString('utf8')) as T;
}

/** Apply an image's layers, in order, with whiteouts, into a tree. */
async function loadImage(
  tb: TreeBuilder,
  target: Target,
  reference: string,
  arch: string,
  opts: BuildOptions,
): Promise<TreeEntry[]> {
  let desc = await target.resolve(reference, { signal: opts.signal });
  if (isIndexType(desc.mediaType)) {
    const index = await fetchJson<ImageIndex>(target, desc, 4 << 20);
    const pick = index.manifests.find(
      (m) =>
        isManifestType(m.mediaType) && (!m.platform || (m.platform.os === 'linux' && m.platform.architecture === arch)),
    );
    if (!pick)
      throw new BuildError('BUILD_SOURCE_UNSUPPORTED', `${target.name} ${reference} has no linux/${arch} image`);
    desc = pick;
  }
  if (!isManifestType(desc.mediaType))
    throw new BuildError(
      'BUILD_SOURCE_UNSUPPORTED',
      `${target.name} ${reference} is a ${desc.mediaType}, not an image`,
    );
  const manifest = await fetchJson<ImageManifest>(target, desc, 4 << 20);
  for (const [i, layer] of manifest.layers.entries()) {
    opts.onProgress?.(`reading layer ${i + 1}/${manifest.layers.length} ${layer.digest}`);
    const verify = new VerifyingStream(layer, `layer ${layer.digest}`);
    const raw = await target.fetch(layer, { signal: opts.signal });
    // pipeline, not pipe: a reader that gives up (a bad tar) also closes the blob
    pipeline(raw, verify, () => undefined);
    const { stream, done } = await decompressStream(verify, { signal: opts.signal });
    await tb.addTar(stream, `layer ${layer.digest}`, { whiteouts: true, signal: opts.signal });
    await done;
  }
  return [...tb.entries.values()];
}

/** Resolve a symlink inside the tree (relative to the tree root, never leaving it). */
function resolveInTree(sorted: readonly TreeEntry[], path: string): TreeEntry | undefined {
  let p = path;
  for (let hops = 0; hops < 40; hops++) {
    const k = findSorted(sorted, p);
    const e = k >= 0 ? sorted[k] : undefined;
    if (!e || e.type !== 'symlink') return e;
    const link = e.linkname ?? '';
    let next: string;
    try {
      next = link.startsWith('/') ? treePath(link, 'symlink', true) : treePath(`${parentOf(p)}/${link}`, 'symlink');
    } catch {
      return undefined;
    }
    p = next;
  }
  return undefined;
}

async function readSmall(e: TreeEntry): Promise<Buffer> {
  if (!e.content || e.size === 0) return Buffer.alloc(0);
  if ('data' in e.content) return e.content.data;
  const c = contentFile(e)!;
  const fh = await open(c.file, 'r');
  try {
    const buf = Buffer.alloc(e.size);
    const { bytesRead } = await fh.read(buf, 0, e.size, c.offset);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

/**
 * The os-release of a tree sorted by path (applyTreeRules), found by binary search: a map of
 * the whole tree here would be part of the heap's peak, which V8 keeps for the rest of the build.
 */
export async function readTreeOsRelease(sorted: readonly TreeEntry[]): Promise<Record<string, string>> {
  for (const p of ['etc/os-release', 'usr/lib/os-release']) {
    const e = resolveInTree(sorted, p);
    if (e && (e.type === 'reg' || e.type === 'hardlink')) {
      checkOsReleaseSize(e.size);
      return parseOsRelease((await readSmall(e)).toString('utf8'));
    }
  }
  return {};
}

function parseAnnotations(a: Record<string, string>): Record<string, string> {
  for (const k of Object.keys(a))
    if (k === '') throw new BuildError('BUILD_OPTION_INVALID', 'an annotation needs a key');
  return a;
}

/** Build `source` into a bundle, push it to `dest` and tag it `tag`. */
export async function buildBundle(
  source: BuildSource,
  dest: Target,
  tag: string,
  opts: BuildOptions = {},
): Promise<BuildResult> {
  const compression = opts.compression ?? 'zstd';
  const nLayers = opts.layers ?? DEFAULT_LAYERS;
  if (!Number.isInteger(nLayers) || nLayers < 1 || nLayers > MAX_LAYERS)
    throw new BuildError('BUILD_OPTION_INVALID', `--layers must be between 1 and ${MAX_LAYERS}, got ${nLayers}`);
  if (compression !== 'zstd' && compression !== 'gzip')
    throw new BuildError('BUILD_OPTION_INVALID', `--compression must be zstd or gzip, got ${String(compression)}`);
  const excludes = normalizeExcludes(opts.exclude);
  const arch = opts.architecture ?? hostArchitecture();
  const userAnnotations = parseAnnotations(opts.annotations ?? {});
  const progress = opts.onProgress ?? (() => undefined);
  const tmp = await mkdtemp(join(opts.tmpDir ?? tmpdir(), 'tiu-build-'));
  try {
    // 1. The tree.
    let entries: TreeEntry[];
    if (source.kind === 'directory') {
      progress(`scanning ${source.path}`);
      entries = await scanDirectory(source.path, {
        signal: opts.signal,
        pruneContents: (p) => contentsExcluded(p, excludes),
      });
    } else {
      const spoolName = join(tmp, 'spool');
      const spool = await open(spoolName, 'w+', 0o600);
      try {
        const tb = new TreeBuilder(spool, spoolName);
        if (source.kind === 'archive') {
          progress(`reading ${source.path}`);
          const input = createReadStream(source.path);
          try {
            await once(input, 'open');
          } catch {
            throw new BuildError('BUILD_SOURCE_NOT_FOUND', `cannot read ${source.path}`, { source: source.path });
          }
          const { stream, done } = await decompressStream(input, { signal: opts.signal });
          await tb.addTar(stream, source.path, { signal: opts.signal });
          await done;
          entries = [...tb.entries.values()];
        } else {
          progress(`reading ${source.target.name} ${source.reference}`);
          entries = await loadImage(tb, source.target, source.reference, arch, opts);
        }
      } finally {
        await spool.close();
      }
    }
    progress(`${entries.length} entries read`);

    // 2. Time: SOURCE_DATE_EPOCH or the newest mtime, so a tree builds the same every time.
    // (Times beyond what a date can say, which a tar may carry, don't count.)
    const epoch =
      opts.sourceDateEpoch ??
      sourceDateEpochFromEnv() ??
      entries.reduce((m, e) => {
        const { sec } = mtimeParts(e.mtimeNs);
        return formatModtime(sec, 0) !== undefined ? Math.max(m, sec) : m;
      }, 0);
    const created = formatModtime(epoch, 0);
    if (created === undefined)
      throw new BuildError('BUILD_OPTION_INVALID', `SOURCE_DATE_EPOCH=${epoch} is not a representable date`);

    // 3. Rules and layers.
    let tree = applyTreeRules(entries, { exclude: excludes, mtime: epoch });
    entries = [];
    const osRelease = await readTreeOsRelease(tree);
    const treeSize = tree.length;
    let plan = planLayers(tree, nLayers);
    // From here on each layer's writer holds its own entries, and only until its content is
    // written: the TOCs are compressed (the build's peak) without the tree beside them.
    tree = [];
    // Layers are independent: while one layer's files are read and hashed on this thread,
    // another's compression runs in the thread pool. One layer's content per core at a time,
    // the largest first (it is the longest job; the small ones fill the other core around it).
    // A layer is finished (its TOC compressed, one at a time: writeLayerContent says why) as
    // soon as its content is written, while the content of the next runs.
    const cores = new Semaphore(Math.min(availableParallelism(), 4));
    const results: LayerResult[] = [];
    const order = largestFirst(plan);
    const contents = order.map((i) => {
      const layerEntries = plan[i]!;
      return cores.run(() =>
        writeLayerContent(layerEntries, join(tmp, `layer-${i}`), {
          compression,
          level: opts.level,
          signal: opts.signal,
        }),
      );
    });
    const layerCount = plan.length;
    plan = [];
    // Once every layer's content is written, the heap pages freed since the tree was held go
    // back to the system before the large TOCs' level-19 tables are made (util/collect.ts): V8
    // keeps them pooled, resident, until a last-resort collection (larger bench tree: ~24 MiB).
    const allWritten = Promise.allSettled(contents).then(() => collectNow());
    const settled = await Promise.allSettled(
      order.map(async (i, k) => {
        results[i] = await (await contents[k]!).finish(allWritten);
      }),
    );
    const failed = settled.find((w) => w.status === 'rejected');
    if (failed) throw failed.reason;
    const layers = Array.from({ length: layerCount }, (_, i) => results[i]!);
    for (const [i, r] of layers.entries())
      progress(
        `layer ${i + 1}/${layerCount}: ${r.entries} entries, ${r.contentBytes} content bytes -> ${r.descriptor.size} bytes ${r.descriptor.digest}`,
      );

    // 4. Config and manifest.
    const labels: Record<string, string> = {};
    for (const k of OS_RELEASE_KEYS)
      if (osRelease[k] !== undefined) labels[`${TiuAnnotation.OsReleasePrefix}${k}`] = osRelease[k];
    const config: ImageConfig = {
      created,
      architecture: arch,
      os: 'linux',
      config: { Labels: labels },
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
      history: layers.map((_, i) => ({ created, created_by: `tiu build (layer ${i + 1} of ${layers.length})` })),
    };
    const configBytes = Buffer.from(JSON.stringify(config), 'utf8');
    const configDesc: Descriptor = {
      mediaType: MediaType.OciConfig,
      digest: sha256(configBytes),
      size: configBytes.length,
    };
    const annotations: Record<string, string> = {
      [TiuAnnotation.BundleVersion]: BUNDLE_FORMAT_VERSION,
      [TiuAnnotation.MinAgentVersion]: MIN_AGENT_VERSION,
      ...labels,
      [Annotation.Created]: created,
    };
    const version = osRelease.IMAGE_VERSION ?? osRelease.VERSION_ID;
    if (version) annotations[Annotation.Version] = version;
    const title = osRelease.PRETTY_NAME ?? osRelease.NAME;
    if (title) annotations[Annotation.Title] = title;
    Object.assign(annotations, userAnnotations);
    const manifest: ImageManifest = {
      schemaVersion: 2,
      mediaType: MediaType.OciManifest,
      config: configDesc,
      layers: layers.map((l) => l.descriptor),
      annotations: Object.fromEntries(Object.entries(annotations).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))),
    };
    const manifestBytes = Buffer.from(JSON.stringify(manifest), 'utf8');
    const descriptor: Descriptor = {
      mediaType: MediaType.OciManifest,
      digest: sha256(manifestBytes),
      size: manifestBytes.length,
    };

    // 5. Push: layers, config, manifest, tag.
    for (const [i, l] of layers.entries()) {
      if (await dest.exists(l.descriptor, { signal: opts.signal })) {
        progress(`layer ${i + 1}/${layers.length} already in ${dest.name}`);
        continue;
      }
      progress(`pushing layer ${i + 1}/${layers.length} (${l.descriptor.size} bytes)`);
      const file = join(tmp, `layer-${i}`);
      // A local layout takes the file itself (the digest was computed as it was written);
      // reopen: a registry whose upload was cut reads the layer file again.
      if (dest.pushFile) await dest.pushFile(l.descriptor, file, { signal: opts.signal });
      else
        await dest.push(l.descriptor, createReadStream(file), {
          signal: opts.signal,
          reopen: () => Promise.resolve(createReadStream(file)),
        });
    }
    if (!(await dest.exists(configDesc, { signal: opts.signal })))
      await dest.push(configDesc, Readable.from([configBytes]), { signal: opts.signal });
    await dest.push(descriptor, Readable.from([manifestBytes]), { signal: opts.signal });
    await dest.tag(descriptor, tag, { signal: opts.signal });
    progress(`pushed ${dest.name} ${tag} ${descriptor.digest}`);
    return { descriptor, manifest, config, layers, entries: treeSize };
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}
