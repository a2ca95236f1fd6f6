/**
 * Image references as containers-transports(5) spells them:
 *   docker://host[:port]/repo[:tag][@digest]   (a bare `name[:tag][@digest]` means docker://)
 *   oci:/path/to/layout[:name-or-digest] or oci:/path/to/layout@digest
 *   oci-archive:/path/to/file.tar[:name-or-digest] or oci-archive:/path/to/file.tar@digest
 *   dir:/path/to/dir                           (containers' directory transport: one image, no name)
 *   docker-archive:/path/to/file.tar[:name[:tag]]  (`docker save` format, a source)
 *   containers-storage:[[driver@]root[+runroot][:options]]image   (a source, read through podman)
 * A layout's name is any org.opencontainers.image.ref.name containers/image accepts there
 * (`oci-archive:saved.tar:localhost/on-top:latest`); the path ends at the first ':'.
 * Docker names are normalised like the containers tools do: no registry means docker.io, and a
 * single-component docker.io repository gets `library/`.
 */
import { TiuError } from '../errors.ts';
import { isDigest } from './digest.ts';
import type { Digest } from './types.ts';

export class InvalidReferenceError extends TiuError {
  constructor(ref: string, why: string) {
    super('REFERENCE_INVALID', `invalid image reference ${JSON.stringify(ref)}: ${why}`, { reference: ref });
  }
}

export const DOCKER_HUB = 'docker.io';

export interface DockerReference {
  transport: 'docker';
  /** host[:port], normalised (docker.io for none). */
  registry: string;
  /** path inside the registry, e.g. library/debian */
  repository: string;
  tag?: string;
  digest?: Digest;
}

export interface LayoutReference {
  transport: 'oci' | 'oci-archive';
  path: string;
  /** a tag (org.opencontainers.image.ref.name) or a digest; absent means the only image */
  tag?: string;
  digest?: Digest;
}

/** Where containers-storage(5) keeps images, as the `[...]` of a containers-storage: reference. */
export interface StorageSpecifier {
  driver?: string;
  root: string;
  runRoot?: string;
  options?: string;
}

export interface StorageReference {
  transport: 'containers-storage';
  storage?: StorageSpecifier;
  /** An image ID (or its prefix) or a name as podman takes it: `localhost/x:v1`, `x@sha256:...`. */
  image: string;
  tag?: never;
  digest?: never;
}

/** containers' dir: transport: one image in a flat directory; the whole rest is the path. */
export interface DirReference {
  transport: 'dir';
  path: string;
  tag?: undefined;
  digest?: undefined;
}

/** `docker save` archives: `tag` is the image's docker name (`name:tag`, normalised) among its RepoTags. */
export interface DockerArchiveReference {
  transport: 'docker-archive';
  path: string;
  tag?: string;
  digest?: undefined;
}

export type ImageReference =
  DockerReference | LayoutReference | DirReference | DockerArchiveReference | StorageReference;

const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const HOST =
  /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$/;

export function parseReference(input: string): ImageReference {
  if (input.startsWith('docker://')) return parseDockerName(input.slice('docker://'.length), input);
  if (input.startsWith('oci-archive:')) return parseLayout('oci-archive', input.slice('oci-archive:'.length), input);
  if (input.startsWith('oci:')) return parseLayout('oci', input.slice('oci:'.length), input);
  if (input.startsWith('containers-storage:')) return parseStorage(input.slice('containers-storage:'.length), input);
  if (input.startsWith('docker-archive:')) return parseDockerArchive(input.slice('docker-archive:'.length), input);
  if (input.startsWith('dir:')) {
    const path = input.slice('dir:'.length);
    if (path === '') throw new InvalidReferenceError(input, 'empty path');
    return { transport: 'dir', path };
  }
  const scheme = /^([a-z][a-z0-9+-]*):(?!\d)/.exec(input);
  if (scheme && !input.slice(0, input.indexOf('/') >>> 0).includes('.') && !['localhost'].includes(scheme[1]!)) {
    // `dir:`, `docker-daemon:` ... are transports tiu does not speak (a host:port has a digit after ':').
    if (!input.includes('/') || input.indexOf(':') < input.indexOf('/')) {
      throw new InvalidReferenceError(
        input,
        `transport '${scheme[1]}' is not supported (use docker://, oci:, oci-archive:, dir:, docker-archive: or containers-storage:)`,
      );
    }
  }
  return parseDockerName(input, input);
}

/**
 * An image name inside `oci:`/`oci-archive:` (matched against org.opencontainers.image.ref.name):
 * containers/image's rule, components of letters and digits joined by `-._:@+` or `--`, separated
 * by `/`, so `localhost/on-top:latest` (what `podman save --format oci-archive` writes) is one.
 */
const LAYOUT_COMPONENT = '[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*';
const LAYOUT_NAME = new RegExp(`^${LAYOUT_COMPONENT}(?:/${LAYOUT_COMPONENT})*$`);
/** `PATH@DIGEST`, the form tiu's REFERENCE_AMBIGUOUS hint offers besides `PATH:DIGEST`. */
const PATH_AT_DIGEST = /^([^:]+)@(sha256:[a-f0-9]{64})$/;

function parseLayout(transport: 'oci' | 'oci-archive', rest: string, input: string): LayoutReference {
  const atDigest = PATH_AT_DIGEST.exec(rest);
  if (atDigest) return { transport, path: atDigest[1]!, digest: atDigest[2] as Digest };
  // The path ends at the first ':' (as in containers/image); what follows names the image.
  const colon = rest.indexOf(':');
  const path = colon === -1 ? rest : rest.slice(0, colon);
  const name = colon === -1 ? undefined : rest.slice(colon + 1);
  if (path === '') throw new InvalidReferenceError(input, 'empty path');
  if (name === undefined || name === '') return { transport, path };
  if (isDigest(name)) return { transport, path, digest: name };
  if (name.startsWith('sha256:')) throw new InvalidReferenceError(input, 'malformed digest');
  if (!LAYOUT_NAME.test(name) || name.length > 255)
    throw new InvalidReferenceError(
      input,
      `invalid image name ${JSON.stringify(name)} (letters and digits joined by - . _ : @ + or /, at most 255)`,
    );
  return { transport, path, tag: name };
}

function parseStorage(rest: string, input: string): StorageReference {
  let storage: StorageSpecifier | undefined;
  if (rest.startsWith('[')) {
    const end = rest.indexOf(']');
    if (end === -1) throw new InvalidReferenceError(input, "storage specifier without ']'");
    storage = parseStorageSpecifier(rest.slice(1, end), input);
    rest = rest.slice(end + 1);
  }
  // The name goes to podman as one argument: it must not read as an option or carry odd bytes.
  if (rest === '') throw new InvalidReferenceError(input, 'no image name or ID');
  if (rest.startsWith('-') || /\s/.test(rest) || hasControl(rest) || rest.length > 512) {
    throw new InvalidReferenceError(input, `invalid image name ${JSON.stringify(rest)}`);
  }
  return storage
    ? { transport: 'containers-storage', storage, image: rest }
    : { transport: 'containers-storage', image: rest };
}

const hasControl = (s: string): boolean => [...s].some((c) => c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f);

/** `[driver@]root[+runroot][:options]`, the paths absolute (containers-transports(5)). */
function parseStorageSpecifier(text: string, input: string): StorageSpecifier {
  let rest = text;
  const spec: StorageSpecifier = { root: '' };
  const colon = rest.indexOf(':');
  if (colon !== -1) {
    spec.options = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
  }
  const at = rest.indexOf('@');
  if (at !== -1) {
    spec.driver = rest.slice(0, at);
    rest = rest.slice(at + 1);
  }
  const plus = rest.indexOf('+');
  if (plus !== -1) {
    spec.runRoot = rest.slice(plus + 1);
    rest = rest.slice(0, plus);
  }
  spec.root = rest;
  for (const p of [spec.root, spec.runRoot]) {
    if (p !== undefined && !p.startsWith('/'))
      throw new InvalidReferenceError(input, `storage path ${JSON.stringify(p)} is not absolute`);
  }
  if (spec.driver !== undefined && !/^[a-z0-9_]+$/.test(spec.driver)) {
    throw new InvalidReferenceError(input, `invalid storage driver ${JSON.stringify(spec.driver)}`);
  }
  if (spec.options === '') delete spec.options;
  return spec;
}

/** `PATH[:NAME[:TAG]]`: the path ends at the first ':', the rest is a docker name (`:latest` when untagged). */
function parseDockerArchive(rest: string, input: string): DockerArchiveReference {
  const colon = rest.indexOf(':');
  const path = colon === -1 ? rest : rest.slice(0, colon);
  const name = colon === -1 ? '' : rest.slice(colon + 1);
  if (path === '') throw new InvalidReferenceError(input, 'empty path');
  if (name === '') return { transport: 'docker-archive', path };
  const ref = parseDockerName(name, input);
  if (ref.digest) throw new InvalidReferenceError(input, 'a docker-archive: image is named by NAME:TAG, not a digest');
  return { transport: 'docker-archive', path, tag: dockerName({ ...ref, tag: ref.tag ?? 'latest' }) };
}

function parseDockerName(name: string, input: string): DockerReference {
  if (name === '') throw new InvalidReferenceError(input, 'empty name');
  let rest = name;
  let digest: Digest | undefined;
  const at = rest.indexOf('@');
  if (at !== -1) {
    const d = rest.slice(at + 1);
    if (!isDigest(d)) throw new InvalidReferenceError(input, `invalid digest ${JSON.stringify(d)}`);
    digest = d;
    rest = rest.slice(0, at);
  }
  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const lastColon = rest.lastIndexOf(':');
  if (lastColon > lastSlash) {
    tag = rest.slice(lastColon + 1);
    rest = rest.slice(0, lastColon);
    if (!TAG.test(tag)) throw new InvalidReferenceError(input, `invalid tag ${JSON.stringify(tag)}`);
  }
  const parts = rest.split('/');
  let registry = DOCKER_HUB;
  const first = parts[0]!;
  if (
    parts.length > 1 &&
    (first.includes('.') || first.includes(':') || first === 'localhost' || first.startsWith('['))
  ) {
    registry = first;
    parts.shift();
    if (!HOST.test(registry))
      throw new InvalidReferenceError(input, `invalid registry host ${JSON.stringify(registry)}`);
  }
  if (registry === 'index.docker.io' || registry === 'registry-1.docker.io') registry = DOCKER_HUB;
  if (parts.length === 0 || parts.some((p) => !COMPONENT.test(p))) {
    throw new InvalidReferenceError(input, 'repository must be lowercase letters, digits and separators');
  }
  if (registry === DOCKER_HUB && parts.length === 1) parts.unshift('library');
  const repository = parts.join('/');
  if (registry.length + 1 + repository.length > 255)
    throw new InvalidReferenceError(input, 'name longer than 255 characters');
  const ref: DockerReference = { transport: 'docker', registry, repository };
  if (tag !== undefined) ref.tag = tag;
  if (digest !== undefined) ref.digest = digest;
  return ref;
}

/** The tag or digest a Target's resolve() takes; `latest` for a docker ref with neither. */
export function referenceName(ref: ImageReference): string | undefined {
  if (ref.digest) return ref.digest;
  if (ref.tag) return ref.tag;
  return ref.transport === 'docker' ? 'latest' : undefined;
}

/** `host/repo:tag` or `host/repo@digest`, the docker-reference of cosign payloads. */
export function dockerName(ref: DockerReference, withTag = true): string {
  let s = `${ref.registry}/${ref.repository}`;
  if (withTag && ref.tag) s += `:${ref.tag}`;
  if (withTag && ref.digest) s += `@${ref.digest}`;
  return s;
}

export function formatReference(ref: ImageReference): string {
  if (ref.transport === 'docker') return `docker://${dockerName(ref)}`;
  if (ref.transport === 'containers-storage') return `containers-storage:${formatStorage(ref.storage)}${ref.image}`;
  if (ref.transport === 'dir') return `dir:${ref.path}`;
  const name = ref.digest ?? ref.tag;
  return `${ref.transport}:${ref.path}${name ? ':' + name : ''}`;
}

function formatStorage(s: StorageSpecifier | undefined): string {
  if (!s) return '';
  return `[${s.driver ? s.driver + '@' : ''}${s.root}${s.runRoot ? '+' + s.runRoot : ''}${s.options ? ':' + s.options : ''}]`;
}
