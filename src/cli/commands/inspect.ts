import type { Command } from '../command.ts';
import { optBool } from '../command.ts';
import { fetchManifest, fetchVerified } from '../../content/graph.ts';
import { TiuError } from '../../errors.ts';
import type { Descriptor, ImageConfig } from '../../oci/types.ts';
import { MAX_CONFIG_BYTES, isImageConfigType, parseConfigBytes } from '../../oci/validate.ts';
import { openReference } from '../../transport/resolve.ts';
import { humanSize } from '../../format.ts';
import { registryOptions } from '../registry-options.ts';
import { platformEntry, skopeoInspect } from '../inspect-skopeo.ts';
import { hostArchitecture } from '../../oci/platform.ts';
import type { Target } from '../../content/interfaces.ts';
import type { ParsedManifest } from '../../oci/validate.ts';
import { OS_RELEASE_KEYS as BUNDLE_OS_RELEASE_KEYS } from '../../bundle/os-release.ts';

/** os-release keys tiu shows when an image carries them (as labels or annotations): those tiu build records. */
const OS_RELEASE_KEYS: ReadonlySet<string> = new Set(BUNDLE_OS_RELEASE_KEYS);

/** Labels/annotations named like os-release keys: `ID`, `org.opensuse.tiu.os-release.VERSION_ID`, ... */
export function osReleaseFrom(...maps: (Record<string, string> | undefined)[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of maps) {
    for (const [k, v] of Object.entries(m ?? {})) {
      const key = /(?:^|[./])([A-Za-z][A-Za-z0-9_]*)$/.exec(k)?.[1];
      if (key === undefined) continue;
      const upper = key.toUpperCase();
      if (OS_RELEASE_KEYS.has(upper) && (key === upper || /os[-_]?release/i.test(k))) out[upper] ??= v;
    }
  }
  return out;
}

/** The image skopeo would inspect: the manifest itself, or an index's entry for this machine. */
async function imageOf(
  target: Target,
  root: Descriptor,
  parsed: ParsedManifest,
): Promise<{ desc: Descriptor; parsed: ParsedManifest & { kind: 'manifest' } }> {
  if (parsed.kind === 'manifest') return { desc: root, parsed };
  const arch = hostArchitecture();
  const entry = platformEntry(parsed.index, arch);
  if (!entry) {
    throw new TiuError('IMAGE_PLATFORM_MISSING', `index ${root.digest} has no image for linux/${arch}`, {
      digest: root.digest,
      architecture: arch,
    });
  }
  const { parsed: inner } = await fetchManifest(target, entry);
  if (inner.kind !== 'manifest') {
    throw new TiuError('IMAGE_PLATFORM_MISSING', `index ${root.digest}: the linux/${arch} entry is not an image`, {
      digest: root.digest,
    });
  }
  return { desc: entry, parsed: inner };
}

const command: Command = {
  name: 'inspect',
  summary: 'Show an image: manifest, config summary, layers, annotations, os-release',
  usage: 'tiu inspect REF [--raw] [--config] [--no-tags] [--json]',
  help:
    'REF: docker://HOST/REPO:TAG, oci:/PATH[:TAG], oci-archive:/FILE.tar[:TAG], dir:/PATH,\n' +
    '  docker-archive:/FILE.tar[:NAME:TAG], containers-storage:IMAGE.\n' +
    "--json prints skopeo inspect's keys (Name, Digest, RepoTags, Created, DockerVersion, Labels, Architecture,\n" +
    "  Os, Layers, LayersData, Env); an index is inspected as its image for this machine, Digest stays the index's.\n" +
    '  --raw          print the manifest (or index) exactly as stored\n' +
    "  --config       print the image's config (with --raw: exactly as stored)\n" +
    "  --no-tags, -n  leave RepoTags empty instead of listing the repository's tags (docker://)\n",
  registry: 'one',
  options: { raw: { type: 'boolean' }, config: { type: 'boolean' }, 'no-tags': { type: 'boolean', short: 'n' } },
  positionals: [1, 1],
  async run([input], options, out) {
    const { target, name, ref } = await openReference(input!, { registry: registryOptions(options) });
    try {
      const root =
        name !== undefined
          ? await target.resolve(name)
          : target.resolveDefault
            ? await target.resolveDefault()
            : undefined;
      if (!root) throw new TiuError('REFERENCE_MISSING', `${input} needs a tag or digest`);
      const { bytes, parsed } = await fetchManifest(target, root);
      const raw = optBool(options, 'raw');
      if (raw && !optBool(options, 'config')) {
        process.stdout.write(bytes);
        return;
      }
      if (optBool(options, 'config') || out.json) {
        const image = await imageOf(target, root, parsed);
        const m = image.parsed.manifest;
        const configBytes = isImageConfigType(m.config.mediaType)
          ? await fetchVerified(target, m.config, MAX_CONFIG_BYTES)
          : undefined;
        const config = configBytes && parseConfigBytes(configBytes);
        if (optBool(options, 'config')) {
          if (!configBytes)
            throw new TiuError('IMAGE_CONFIG_INVALID', `${input}: ${m.config.mediaType} is not an image config`);
          if (raw) process.stdout.write(configBytes);
          else process.stdout.write(JSON.stringify(JSON.parse(configBytes.toString('utf8')), null, 4) + '\n');
          return;
        }
        const docker = ref.transport === 'docker';
        const repoTags = docker && !optBool(options, 'no-tags') && target.tags ? await target.tags() : [];
        out.result(
          '',
          skopeoInspect({
            ...(docker ? { name: `${ref.registry}/${ref.repository}` } : {}),
            digest: root.digest,
            repoTags,
            manifest: m,
            config,
          }),
        );
        return;
      }
      if (parsed.kind === 'index') {
        const idx = parsed.index;
        const lines = [
          `Reference:  ${input}`,
          `Digest:     ${root.digest}`,
          `MediaType:  ${parsed.mediaType}`,
          `Manifests:  ${idx.manifests.length}`,
        ];
        for (const m of idx.manifests) {
          const p = m.platform
            ? `${m.platform.os}/${m.platform.architecture}${m.platform.variant ? '/' + m.platform.variant : ''}`
            : '-';
          lines.push(`  ${m.digest}  ${p}  ${humanSize(m.size)}`);
        }
        for (const [k, v] of Object.entries(idx.annotations ?? {})) lines.push(`Annotation: ${k}=${v}`);
        // --json took the skopeo-shaped path above: this is the text for people.
        out.result(lines.join('\n'), null);
        return;
      }
      const m = parsed.manifest;
      let config: ImageConfig | undefined;
      if (isImageConfigType(m.config.mediaType)) {
        config = parseConfigBytes(await fetchVerified(target, m.config, MAX_CONFIG_BYTES));
      }
      const labels = config?.config?.Labels ?? {};
      const osRelease = osReleaseFrom(labels, m.annotations);
      const total = m.layers.reduce((n, l) => n + l.size, 0);
      const lines = [`Reference:   ${input}`, `Digest:      ${root.digest}`, `MediaType:   ${parsed.mediaType}`];
      if (m.artifactType) lines.push(`Artifact:    ${m.artifactType}`);
      if (m.subject) lines.push(`Subject:     ${m.subject.digest}`);
      if (config) {
        lines.push(`Platform:    ${config.os}/${config.architecture}${config.variant ? '/' + config.variant : ''}`);
        if (config.created) lines.push(`Created:     ${config.created}`);
      } else {
        lines.push(`Config:      ${m.config.mediaType} (${humanSize(m.config.size)})`);
      }
      if (Object.keys(osRelease).length > 0) {
        const pretty =
          osRelease.PRETTY_NAME ??
          [osRelease.NAME ?? osRelease.ID, osRelease.VERSION ?? osRelease.VERSION_ID].filter(Boolean).join(' ');
        lines.push(`OS release:  ${pretty}`.trimEnd());
        for (const [k, v] of Object.entries(osRelease)) lines.push(`  ${k}=${v}`);
      }
      for (const [k, v] of Object.entries(labels)) lines.push(`Label:       ${k}=${v}`);
      for (const [k, v] of Object.entries(m.annotations ?? {})) lines.push(`Annotation:  ${k}=${v}`);
      lines.push(`Layers:      ${m.layers.length} (${humanSize(total)})`);
      for (const l of m.layers) lines.push(`  ${l.digest}  ${humanSize(l.size).padStart(9)}  ${l.mediaType}`);
      out.result(lines.join('\n'), null);
    } finally {
      await target.close?.();
    }
  },
};
export default command;
