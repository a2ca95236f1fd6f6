/**
 * `tiu inspect --json` in the shape of `skopeo inspect`'s output (containers/image's
 * ImageInspectInfo plus skopeo's Name, Digest and RepoTags), so scripts written for skopeo read
 * tiu's. Pure: the caller fetches; this only arranges.
 */
import type { Descriptor, ImageConfig, ImageIndex, ImageManifest } from '../oci/types.ts';

export interface SkopeoInspect {
  /** The repository (host/path) of a docker:// reference; absent for other transports, as in skopeo. */
  Name?: string;
  /** The digest of what the reference names (an index's own digest when it is one). */
  Digest: string;
  RepoTags: string[];
  Created?: string;
  DockerVersion: string;
  Labels: Record<string, string> | null;
  Architecture: string;
  Variant?: string;
  Os: string;
  Layers: string[];
  LayersData: { MIMEType: string; Digest: string; Size: number; Annotations: Record<string, string> | null }[];
  Env: string[] | null;
}

export interface InspectFacts {
  name?: string;
  digest: string;
  repoTags: string[];
  manifest: ImageManifest;
  /** Undefined when the manifest's config is not an image config (an artifact). */
  config: ImageConfig | undefined;
}

export function skopeoInspect(f: InspectFacts): SkopeoInspect {
  const c = f.config;
  const dockerVersion = (c as { docker_version?: unknown } | undefined)?.docker_version;
  return {
    ...(f.name !== undefined ? { Name: f.name } : {}),
    Digest: f.digest,
    RepoTags: f.repoTags,
    ...(c?.created !== undefined ? { Created: c.created } : {}),
    DockerVersion: typeof dockerVersion === 'string' ? dockerVersion : '',
    Labels: c?.config?.Labels ?? null,
    Architecture: c?.architecture ?? '',
    ...(c?.variant ? { Variant: c.variant } : {}),
    Os: c?.os ?? '',
    Layers: f.manifest.layers.map((l) => l.digest),
    LayersData: f.manifest.layers.map((l) => ({
      MIMEType: l.mediaType,
      Digest: l.digest,
      Size: l.size,
      Annotations: l.annotations ?? null,
    })),
    Env: c?.config?.Env ?? null,
  };
}

/**
 * The manifest skopeo inspects in an index: the one for this machine (linux and `architecture`),
 * else undefined (skopeo then fails too: no image for this platform).
 */
export function platformEntry(index: ImageIndex, architecture: string): Descriptor | undefined {
  return index.manifests.find((m) => m.platform?.os === 'linux' && m.platform.architecture === architecture);
}
