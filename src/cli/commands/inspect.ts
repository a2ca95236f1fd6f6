import type { Command } from '../command.ts';
import { optBool } from '../command.ts';
import { fetchManifest, fetchVerified } from '../../content/graph.ts';
import { TiuError } from '../../errors.ts';
import type { Descriptor, ImageConfig } from '../../oci/types.ts';
import { MAX_CONFIG_BYTES, isImageConfigType, parseConfigBytes } from '../../oci/validate.ts';
import { openReference } from '../../transport/resolve.ts';
import { humanSize } from '../../format.ts';
import { registryOptions } from '../registry-options.ts';
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

const layerInfo = (l: Descriptor) => ({
  digest: l.digest,
  size: l.size,
  mediaType: l.mediaType,
  ...(l.annotations ? { annotations: l.annotations } : {}),
});

const command: Command = {
  name: 'inspect',
  summary: 'Show an image: manifest, config summary, layers, annotations, os-release',
  usage: 'tiu inspect REF [--raw] [--json]',
  help: 'REF: docker://HOST/REPO:TAG, oci:/PATH[:TAG], oci-archive:/FILE.tar[:TAG].\n  --raw  print the manifest (or index) exactly as stored\n',
  registry: 'one',
  options: { raw: { type: 'boolean' } },
  positionals: [1, 1],
  async run([input], options, out) {
    const { target, name } = await openReference(input!, { registry: registryOptions(options) });
    try {
      const root =
        name !== undefined
          ? await target.resolve(name)
          : target.resolveDefault
            ? await target.resolveDefault()
            : undefined;
      if (!root) throw new TiuError('REFERENCE_MISSING', `${input} needs a tag or digest`);
      const { bytes, parsed } = await fetchManifest(target, root);
      if (optBool(options, 'raw')) {
        process.stdout.write(bytes);
        return;
      }
      if (parsed.kind === 'index') {
        const idx = parsed.index;
        const value = {
          reference: input,
          digest: root.digest,
          mediaType: parsed.mediaType,
          size: root.size,
          kind: 'index',
          manifests: idx.manifests.map((m) => ({
            digest: m.digest,
            mediaType: m.mediaType,
            size: m.size,
            ...(m.platform ? { platform: m.platform } : {}),
          })),
          annotations: idx.annotations ?? {},
        };
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
        out.result(lines.join('\n'), value);
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
      const value = {
        reference: input,
        digest: root.digest,
        mediaType: parsed.mediaType,
        size: root.size,
        kind: 'manifest',
        ...(m.artifactType ? { artifactType: m.artifactType } : {}),
        ...(m.subject ? { subject: m.subject } : {}),
        config: {
          digest: m.config.digest,
          mediaType: m.config.mediaType,
          size: m.config.size,
          ...(config
            ? {
                architecture: config.architecture,
                os: config.os,
                ...(config.variant ? { variant: config.variant } : {}),
                created: config.created ?? null,
                labels,
              }
            : {}),
        },
        layers: m.layers.map(layerInfo),
        annotations: m.annotations ?? {},
        osRelease,
      };
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
      out.result(lines.join('\n'), value);
    } finally {
      await target.close?.();
    }
  },
};
export default command;
