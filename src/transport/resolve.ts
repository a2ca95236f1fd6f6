/**
 * A reference string (containers-transports(5)) to an open Target:
 *   oci:/path[:tag|@digest]           an OCI layout directory
 *   oci-archive:/file.tar[:tag|@digest] a tar of a layout
 *   dir:/path                         containers' directory transport (src/content/dir.ts)
 *   docker-archive:/file.tar[:name:tag] a `docker save` archive (src/content/docker-archive*.ts)
 *   docker://host/repo:tag, host/repo  a registry (src/transport/registry)
 *   containers-storage:[SPEC]IMAGE     podman's storage, a source only (./containers-storage.ts)
 * `name` is what to pass to resolve()/tag() on the Target: a tag, a digest, or undefined for
 * a layout's only image.
 */
import type { Target } from '../content/interfaces.ts';
import { TiuError } from '../errors.ts';
import type { Descriptor } from '../oci/types.ts';
import { OciLayoutTarget } from '../content/oci-layout.ts';
import { parseReference, referenceName, type ImageReference } from '../oci/reference.ts';
import { openRegistryTarget, registriesConfOf, type RegistryClientOptions } from './registry/index.ts';
import { isShortName, shortNameCandidates } from './short-names.ts';

/**
 * Options for opening a reference. An open interface: transports add their own fields
 * (authfile, creds, tlsVerify, registriesConf, ...).
 */
export interface OpenOptions {
  /** The Target will be written to (a copy destination): create a layout/archive that is not there yet. */
  forWrite?: boolean;
  /** Where temporary files (an archive's extracted layout) go; default $TMPDIR. */
  tmpDir?: string;
  signal?: AbortSignal;
  /** docker://: credentials, TLS, certs.d, registries.conf (mirrors apply to pulls). */
  registry?: RegistryClientOptions;
}

export interface OpenedReference {
  target: Target;
  name: string | undefined;
  ref: ImageReference;
}

/*
 * oci: and docker:// are what devices and most copies use; the other transports are imported
 * when a reference names them, so a process does not load (and keep resident) code it never
 * runs: ~7 MiB of RSS for `tiu copy oci:… docker://…`.
 */
export async function openReference(input: string, opts: OpenOptions = {}): Promise<OpenedReference> {
  const ref = parseReference(input);
  const name = referenceName(ref);
  switch (ref.transport) {
    case 'oci': {
      const target = await OciLayoutTarget.open(ref.path, { create: opts.forWrite === true, name: `oci:${ref.path}` });
      return { target, name, ref };
    }
    case 'oci-archive': {
      const { OciArchiveTarget } = await import('../content/oci-archive.ts');
      const target = await OciArchiveTarget.open(ref.path, {
        create: opts.forWrite === true,
        name: `oci-archive:${ref.path}`,
        ...(opts.tmpDir ? { tmpDir: opts.tmpDir } : {}),
      });
      return { target, name, ref };
    }
    case 'dir': {
      const { DirTarget } = await import('../content/dir.ts');
      const target = await DirTarget.open(ref.path, { create: opts.forWrite === true, name: `dir:${ref.path}` });
      return { target, name, ref };
    }
    case 'docker-archive': {
      const common = { name: `docker-archive:${ref.path}`, ...(opts.tmpDir ? { tmpDir: opts.tmpDir } : {}) };
      if (opts.forWrite) {
        const { DockerArchiveWriter } = await import('../content/docker-archive-writer.ts');
        const repoTag = ref.tag ? { repoTag: ref.tag } : {};
        return { target: await DockerArchiveWriter.open(ref.path, { ...common, ...repoTag }), name, ref };
      }
      const { DockerArchiveTarget } = await import('../content/docker-archive.ts');
      return { target: await DockerArchiveTarget.open(ref.path, common), name, ref };
    }
    case 'docker':
      if (isShortName(input)) return openShortName(input, name, opts);
      return { target: openRegistryTarget(ref, opts.registry ?? {}), name, ref };
    case 'containers-storage': {
      if (opts.forWrite) {
        throw new TiuError(
          'CONTAINERS_STORAGE_UNSUPPORTED',
          `${input}: tiu reads containers-storage:, it does not write it`,
          {
            reference: input,
          },
        );
      }
      const { openStorageSource } = await import('./containers-storage.ts');
      const { target, digest } = await openStorageSource(ref, {
        ...(opts.tmpDir ? { tmpDir: opts.tmpDir } : {}),
        ...(opts.signal ? { signal: opts.signal } : {}),
      });
      return { target, name: digest, ref };
    }
  }
}

/**
 * A short name's registry Target (./short-names.ts): its one candidate, or for a pull among
 * several (short-name-mode permissive or disabled) the first that has the image; when none has
 * it, the first failure that is not "not found" (a network error says more), else the first.
 */
async function openShortName(input: string, name: string | undefined, opts: OpenOptions): Promise<OpenedReference> {
  const conf = registriesConfOf(opts.registry ?? {});
  const { candidates, origin } = shortNameCandidates(input, conf);
  const registry: RegistryClientOptions = { ...opts.registry, registriesConf: conf };
  if (candidates.length > 1 && opts.forWrite) {
    throw new TiuError(
      'SHORT_NAME_AMBIGUOUS',
      `short name ${JSON.stringify(input)} as a destination could be any of ${origin}; name the registry`,
      {
        name: input,
      },
    );
  }
  const failures: unknown[] = [];
  for (const ref of candidates) {
    const target = openRegistryTarget(ref, registry);
    if (candidates.length === 1) return { target, name, ref };
    try {
      await target.resolve(name ?? 'latest', opts.signal ? { signal: opts.signal } : {});
      return { target, name, ref };
    } catch (e) {
      failures.push(e);
      await target.close();
    }
  }
  throw failures.find((e) => !(e instanceof TiuError && e.code === 'CONTENT_NOT_FOUND')) ?? failures[0];
}

/** The root descriptor `opened` names: its tag or digest, else a layout's only image. REFERENCE_MISSING without either. */
export async function resolveRoot(opened: OpenedReference, opts: { signal?: AbortSignal } = {}): Promise<Descriptor> {
  const { target, name } = opened;
  if (name !== undefined) return target.resolve(name, opts);
  if (target.resolveDefault) return target.resolveDefault(opts);
  throw new TiuError('REFERENCE_MISSING', `${target.name} needs a tag or digest to name the image`);
}

/** The OCI empty blob (`{}`): what a probe asks a registry for; any answer but "no such host" will do. */
const PROBE_BLOB: Descriptor = {
  mediaType: 'application/vnd.oci.empty.v1+json',
  digest: 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a',
  size: 2,
};

/**
 * Check a destination before expensive work (a build compresses every layer before it pushes):
 * a registry must answer (connection, TLS, credentials), so `--tag localhost/x:v3`, read as the
 * registry at localhost:80, fails at once and says how it was read. Layouts and archives were
 * already checked when opened for writing.
 */
export async function probeDestination(opened: OpenedReference, opts: { signal?: AbortSignal } = {}): Promise<void> {
  const { ref, target } = opened;
  if (ref.transport !== 'docker') return;
  try {
    await target.exists(PROBE_BLOB, opts);
  } catch (e) {
    if (!(e instanceof TiuError)) throw e;
    throw new UnusableDestinationError(target.name, ref.registry, e);
  }
}

/** A destination registry that does not answer; keeps the cause's code (REGISTRY_UNREACHABLE, REGISTRY_AUTH_FAILED, …). */
export class UnusableDestinationError extends TiuError {
  constructor(name: string, registry: string, cause: TiuError) {
    super(
      cause.code,
      `destination ${name} (read as the registry at ${registry}) cannot be used: ${cause.message}; ` +
        'a local image needs its transport: oci:DIR:TAG or oci-archive:FILE:TAG',
      { ...cause.details, destination: name },
    );
  }
}
