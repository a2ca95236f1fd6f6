/**
 * Docker schema 2 -> OCI, as the containers tools convert when they write an `oci:` layout or an
 * `oci-archive:` (which accept only OCI manifests and indexes): the manifest and list get OCI
 * media types, layers keep their bytes and digests under the OCI layer type of the same
 * compression, and the config is rewritten to the fields of the OCI image config (Docker's extra
 * fields such as container_config or docker_version are dropped), so its digest and the
 * manifest's change. Pure: bytes in, bytes out.
 *
 * The JSON is written as containers/image writes it (Go's encoding/json over the image-spec
 * structs: their field order, empty optional fields left out, map keys sorted, `<>&` escaped,
 * times in RFC 3339 with trailing fractional zeros dropped), so a converted image gets the same
 * digests as `skopeo copy` gives it.
 */
import { TiuError } from '../errors.ts';
import { sha256 } from '../oci/digest.ts';
import { MediaType } from '../oci/mediatypes.ts';
import type { Descriptor, ImageIndex, ImageManifest, Platform } from '../oci/types.ts';

export class ConversionError extends TiuError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super('CONVERSION_UNSUPPORTED', message, details);
  }
}

/** Docker layer media types and their OCI counterparts (same bytes, same compression). */
const LAYER_TYPES: Readonly<Record<string, string>> = {
  [MediaType.DockerLayerGzip]: MediaType.OciLayerGzip,
  [MediaType.DockerLayerTar]: MediaType.OciLayerTar,
  'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip':
    'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  'application/vnd.docker.image.rootfs.foreign.diff.tar': 'application/vnd.oci.image.layer.nondistributable.v1.tar',
};

/** Does writing `mediaType` to an OCI-only destination need a conversion? */
export function needsOciConversion(mediaType: string): boolean {
  return mediaType === MediaType.DockerManifest || mediaType === MediaType.DockerManifestList;
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type JsonObject = { [k: string]: Json };

function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Go's encoding/json output for the same value: `<>&` and U+2028/9 escaped, \b and \f as \u00XX. */
function goJson(value: unknown): Buffer {
  const text = JSON.stringify(value).replace(/\\([\s\S])|[<>&\u2028\u2029]/g, (m: string, esc: string | undefined) => {
    if (esc === undefined) return `\\u${m.charCodeAt(0).toString(16).padStart(4, '0')}`;
    if (esc === 'b') return '\\u0008';
    if (esc === 'f') return '\\u000c';
    return m;
  });
  return Buffer.from(text, 'utf8');
}

/** A time as Go re-marshals it: RFC 3339 with the fractional seconds' trailing zeros dropped. */
function goTime(v: unknown, where: string): string {
  if (typeof v !== 'string') throw new ConversionError(`config ${where} is not a time string`);
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$/i.exec(v);
  if (!m) throw new ConversionError(`config ${where} ${JSON.stringify(v)} is not an RFC 3339 time`);
  const frac = (m[2] ?? '').slice(0, 9).replace(/0+$/, '');
  return `${m[1]!.toUpperCase()}${frac ? '.' + frac : ''}${m[3]!.toUpperCase()}`;
}

/** Copy `keys` of `src` in that order, leaving out what Go's omitempty leaves out. */
function pick(src: JsonObject, keys: readonly string[]): JsonObject {
  const out: JsonObject = {};
  for (const k of keys) {
    const v = src[k];
    if (v === undefined || v === null || v === '' || v === false || v === 0) continue;
    if (Array.isArray(v) && v.length === 0) continue;
    if (isObject(v) && Object.keys(v).length === 0) continue;
    out[k] = isObject(v) ? sortKeys(v) : v;
  }
  return out;
}

/** A map as Go writes one: keys in byte order. */
function sortKeys(v: JsonObject): JsonObject {
  const out: JsonObject = {};
  for (const k of Object.keys(v).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)))) out[k] = v[k]!;
  return out;
}

const RUN_CONFIG_KEYS = [
  'User',
  'ExposedPorts',
  'Env',
  'Entrypoint',
  'Cmd',
  'Volumes',
  'WorkingDir',
  'Labels',
  'StopSignal',
  'ArgsEscaped',
] as const;

/** The OCI image config for a Docker image config (already validated by parseConfigBytes). */
export function dockerConfigToOci(bytes: Uint8Array): Buffer {
  const doc = JSON.parse(Buffer.from(bytes).toString('utf8')) as JsonObject;
  const out: JsonObject = {};
  if (doc.created !== undefined && doc.created !== null) out.created = goTime(doc.created, 'created');
  if (typeof doc.author === 'string' && doc.author !== '') out.author = doc.author;
  out.architecture = doc.architecture ?? '';
  out.os = doc.os ?? '';
  Object.assign(out, pick(doc, ['os.version', 'os.features', 'variant']));
  out.config = isObject(doc.config) ? pick(doc.config, RUN_CONFIG_KEYS) : {};
  const rootfs = isObject(doc.rootfs) ? doc.rootfs : {};
  out.rootfs = { type: rootfs.type ?? '', diff_ids: rootfs.diff_ids ?? null };
  if (Array.isArray(doc.history) && doc.history.length > 0) {
    out.history = doc.history.map((h, i) => {
      const entry = isObject(h) ? h : {};
      const item: JsonObject = {};
      if (entry.created !== undefined && entry.created !== null)
        item.created = goTime(entry.created, `history[${i}].created`);
      return { ...item, ...pick(entry, ['created_by', 'author', 'comment', 'empty_layer']) };
    });
  }
  return goJson(out);
}

/** A descriptor's fields in the image-spec's order, `mediaType` replaced. */
function descriptor(d: Descriptor, mediaType: string, platform?: Platform): JsonObject {
  const out: JsonObject = { mediaType, digest: d.digest, size: d.size };
  if (d.urls && d.urls.length > 0) out.urls = d.urls;
  if (d.annotations && Object.keys(d.annotations).length > 0) out.annotations = sortKeys(d.annotations);
  if (platform) {
    const p: JsonObject = { architecture: platform.architecture, os: platform.os };
    Object.assign(p, pick(platform as unknown as JsonObject, ['os.version', 'os.features', 'variant']));
    out.platform = p;
  }
  return out;
}

export interface Converted {
  desc: Descriptor;
  bytes: Buffer;
}

function converted(mediaType: string, bytes: Buffer, platform?: Platform): Converted {
  const desc: Descriptor = { mediaType, digest: sha256(bytes), size: bytes.length };
  if (platform) desc.platform = platform;
  return { desc, bytes };
}

/** The OCI manifest for a Docker manifest whose config was converted to `config`. */
export function dockerManifestToOci(manifest: ImageManifest, config: Descriptor): Converted {
  const layers = manifest.layers.map((l) => {
    const mt = LAYER_TYPES[l.mediaType];
    if (mt === undefined)
      throw new ConversionError(`layer ${l.digest} has media type ${l.mediaType}, which has no OCI counterpart`, {
        digest: l.digest,
        mediaType: l.mediaType,
      });
    return descriptor(l, mt);
  });
  const doc: JsonObject = {
    schemaVersion: 2,
    mediaType: MediaType.OciManifest,
    config: descriptor(config, MediaType.OciConfig),
    layers,
  };
  return converted(MediaType.OciManifest, goJson(doc));
}

/**
 * The OCI index for a Docker manifest list whose manifests were written as `written` (by their
 * source digest: the converted descriptor, or the same one when nothing changed).
 */
export function dockerListToOci(list: ImageIndex, written: ReadonlyMap<string, Descriptor>): Converted {
  const manifests = list.manifests.map((m) => {
    const w = written.get(m.digest);
    if (w === undefined) throw new TiuError('INTERNAL', `manifest ${m.digest} of the list was not written`);
    return descriptor(w, w.mediaType, m.platform);
  });
  return converted(MediaType.OciIndex, goJson({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests }));
}
