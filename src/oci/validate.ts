/**
 * Schema checks of untrusted JSON: manifests, indexes, image configs and descriptors.
 * Everything that arrives from a registry, a layout on a USB stick or an archive passes here
 * before tiu acts on it. Failures are typed (MANIFEST_INVALID, MANIFEST_TOO_LARGE,
 * IMAGE_CONFIG_INVALID, MEDIA_TYPE_MISMATCH) and name the field that was wrong.
 */
import type { Readable } from 'node:stream';
import { TiuError } from '../errors.ts';
import { isDigest } from './digest.ts';
import {
  INDEX_MEDIA_TYPES,
  MANIFEST_MEDIA_TYPES,
  MAX_MANIFEST_BYTES,
  MediaType,
  isIndexType,
  isManifestType,
} from './mediatypes.ts';
import type { Descriptor, ImageConfig, ImageIndex, ImageManifest, Platform } from './types.ts';
import { isObject } from '../util/json.ts';

export class InvalidManifestError extends TiuError {
  constructor(why: string, details: Record<string, unknown> = {}) {
    super('MANIFEST_INVALID', `invalid manifest: ${why}`, details);
  }
}
export class ManifestTooLargeError extends TiuError {
  constructor(size: number, limit: number) {
    super('MANIFEST_TOO_LARGE', `manifest of ${size} bytes exceeds the limit of ${limit}`, { size, limit });
  }
}

export class InvalidConfigError extends TiuError {
  constructor(why: string, details: Record<string, unknown> = {}) {
    super('IMAGE_CONFIG_INVALID', `invalid image config: ${why}`, details);
  }
}
export class MediaTypeMismatchError extends TiuError {
  constructor(expected: string, actual: string, where: string) {
    super('MEDIA_TYPE_MISMATCH', `${where}: media type ${actual} where ${expected} was expected`, {
      expected,
      actual,
      where,
    });
  }
}

/** Largest image config accepted (configs are small; history can make them a few hundred KiB). */
export const MAX_CONFIG_BYTES = 4 * 1024 * 1024;

type Fail = (why: string) => never;

function failManifest(where: string): Fail {
  return (why: string) => {
    throw new InvalidManifestError(`${where}: ${why}`, { where });
  };
}

/** Media types are `type/subtype` per RFC 6838 (with the +suffix and parameters-free form OCI uses). */
const MEDIA_TYPE_RE = /^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}\/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$/;

export function isValidMediaType(v: unknown): v is string {
  return typeof v === 'string' && MEDIA_TYPE_RE.test(v);
}

function checkStringMap(v: unknown, field: string, fail: Fail): Record<string, string> | undefined {
  if (v === undefined) return undefined;
  if (!isObject(v)) fail(`${field} must be an object of strings`);
  for (const [k, val] of Object.entries(v)) {
    if (typeof val !== 'string') fail(`${field}[${JSON.stringify(k)}] must be a string`);
  }
  return v as Record<string, string>;
}

function checkPlatform(v: unknown, field: string, fail: Fail): Platform | undefined {
  if (v === undefined) return undefined;
  if (!isObject(v)) fail(`${field} must be an object`);
  if (typeof v.architecture !== 'string' || v.architecture === '')
    fail(`${field}.architecture must be a non-empty string`);
  if (typeof v.os !== 'string' || v.os === '') fail(`${field}.os must be a non-empty string`);
  for (const k of ['os.version', 'variant']) {
    if (v[k] !== undefined && typeof v[k] !== 'string') fail(`${field}.${k} must be a string`);
  }
  const feats = v['os.features'];
  if (feats !== undefined && (!Array.isArray(feats) || feats.some((f) => typeof f !== 'string'))) {
    fail(`${field}.os.features must be an array of strings`);
  }
  return v as unknown as Platform;
}

/**
 * Check one descriptor. `field` names it in messages (e.g. `layers[2]`). Throws
 * MANIFEST_INVALID by default; `fail` lets callers raise their own error type.
 */
export function validateDescriptor(
  v: unknown,
  field = 'descriptor',
  fail: Fail = failManifest('descriptor'),
): Descriptor {
  if (!isObject(v)) fail(`${field} must be an object`);
  if (!isValidMediaType(v.mediaType))
    fail(`${field}.mediaType must be a media type, got ${JSON.stringify(v.mediaType)?.slice(0, 80)}`);
  if (typeof v.digest !== 'string' || !isDigest(v.digest)) {
    fail(`${field}.digest is not a valid digest: ${JSON.stringify(v.digest)?.slice(0, 100)}`);
  }
  const size = v.size;
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) {
    fail(`${field}.size must be a non-negative integer, got ${JSON.stringify(size)}`);
  }
  if (v.urls !== undefined && (!Array.isArray(v.urls) || v.urls.some((u) => typeof u !== 'string'))) {
    fail(`${field}.urls must be an array of strings`);
  }
  checkStringMap(v.annotations, `${field}.annotations`, fail);
  if (v.data !== undefined && (typeof v.data !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(v.data))) {
    fail(`${field}.data must be base64`);
  }
  checkPlatform(v.platform, `${field}.platform`, fail);
  if (v.artifactType !== undefined && !isValidMediaType(v.artifactType))
    fail(`${field}.artifactType must be a media type`);
  return v as unknown as Descriptor;
}

/** Parse JSON bytes with the 4 MiB cap, as an object. */
function parseCappedJson(bytes: Uint8Array, limit: number, fail: Fail, tooLarge: () => never): Record<string, unknown> {
  if (bytes.length > limit) tooLarge();
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'));
  } catch (e) {
    fail(`not valid JSON (${(e as Error).message.slice(0, 120)})`);
  }
  if (!isObject(v)) fail('the document must be a JSON object');
  return v;
}

function checkDocMediaType(
  doc: Record<string, unknown>,
  expected: string | undefined,
  allowed: readonly string[],
  where: string,
  fail: Fail,
): void {
  const own = doc.mediaType;
  if (own !== undefined && typeof own !== 'string') fail('mediaType must be a string');
  if (typeof own === 'string' && !allowed.includes(own)) {
    throw new MediaTypeMismatchError(allowed.join(' or '), own, where);
  }
  if (expected !== undefined) {
    if (!allowed.includes(expected))
      throw new MediaTypeMismatchError(allowed.join(' or '), expected, `${where} (descriptor)`);
    if (typeof own === 'string' && own !== expected) throw new MediaTypeMismatchError(expected, own, where);
    // Docker schema 2 documents always carry their mediaType; OCI ones may omit it.
    if (own === undefined && (expected === MediaType.DockerManifest || expected === MediaType.DockerManifestList)) {
      fail(`mediaType is missing (the descriptor says ${expected})`);
    }
  }
}

/**
 * Parse and check an image manifest. `expectedMediaType` is the media type of the descriptor
 * that pointed at it; the document's own mediaType must agree with it.
 */
export function parseManifestBytes(bytes: Uint8Array, expectedMediaType?: string): ImageManifest {
  const fail: Fail = failManifest('manifest');
  const doc = parseCappedJson(bytes, MAX_MANIFEST_BYTES, fail, () => {
    throw new ManifestTooLargeError(bytes.length, MAX_MANIFEST_BYTES);
  });
  if (doc.schemaVersion !== 2) fail(`schemaVersion must be 2, got ${JSON.stringify(doc.schemaVersion)}`);
  if (doc.manifests !== undefined && doc.config === undefined) {
    throw new MediaTypeMismatchError(
      MediaType.OciManifest,
      typeof doc.mediaType === 'string' ? doc.mediaType : 'an index',
      'manifest',
    );
  }
  checkDocMediaType(doc, expectedMediaType, MANIFEST_MEDIA_TYPES, 'manifest', fail);
  validateDescriptor(doc.config, 'config', fail);
  if (!Array.isArray(doc.layers)) fail('layers must be an array');
  doc.layers.forEach((l, i) => validateDescriptor(l, `layers[${i}]`, fail));
  if (doc.subject !== undefined) validateDescriptor(doc.subject, 'subject', fail);
  checkStringMap(doc.annotations, 'annotations', fail);
  if (doc.artifactType !== undefined && !isValidMediaType(doc.artifactType)) fail('artifactType must be a media type');
  return doc as unknown as ImageManifest;
}

/** Parse and check an image index (or a Docker manifest list); `where` names it in messages. */
export function parseIndexBytes(bytes: Uint8Array, expectedMediaType?: string, where = 'index'): ImageIndex {
  const fail: Fail = failManifest(where);
  const doc = parseCappedJson(bytes, MAX_MANIFEST_BYTES, fail, () => {
    throw new ManifestTooLargeError(bytes.length, MAX_MANIFEST_BYTES);
  });
  if (doc.schemaVersion !== 2) fail(`schemaVersion must be 2, got ${JSON.stringify(doc.schemaVersion)}`);
  if (doc.manifests === undefined && doc.config !== undefined) {
    throw new MediaTypeMismatchError(
      MediaType.OciIndex,
      typeof doc.mediaType === 'string' ? doc.mediaType : 'a manifest',
      where,
    );
  }
  checkDocMediaType(doc, expectedMediaType, INDEX_MEDIA_TYPES, where, fail);
  if (!Array.isArray(doc.manifests)) fail('manifests must be an array');
  doc.manifests.forEach((m, i) => validateDescriptor(m, `manifests[${i}]`, fail));
  if (doc.subject !== undefined) validateDescriptor(doc.subject, 'subject', fail);
  checkStringMap(doc.annotations, 'annotations', fail);
  if (doc.artifactType !== undefined && !isValidMediaType(doc.artifactType)) fail('artifactType must be a media type');
  return doc as unknown as ImageIndex;
}

export type ParsedManifest =
  | { kind: 'manifest'; mediaType: string; manifest: ImageManifest }
  | { kind: 'index'; mediaType: string; index: ImageIndex };

/**
 * Parse a manifest or an index. With a media type (from a descriptor or Content-Type) it must
 * match; without one, the document's own mediaType or its shape decides.
 */
export function parseManifestOrIndex(bytes: Uint8Array, mediaType?: string): ParsedManifest {
  let mt = mediaType;
  if (mt === undefined) mt = detectManifestMediaType(bytes);
  if (isIndexType(mt)) return { kind: 'index', mediaType: mt, index: parseIndexBytes(bytes, mt) };
  if (isManifestType(mt)) return { kind: 'manifest', mediaType: mt, manifest: parseManifestBytes(bytes, mt) };
  throw new MediaTypeMismatchError('a manifest or index media type', mt, 'document');
}

/** The media type of a manifest/index document judged from its content (own field, then shape). */
export function detectManifestMediaType(bytes: Uint8Array): string {
  const fail: Fail = failManifest('document');
  const doc = parseCappedJson(bytes, MAX_MANIFEST_BYTES, fail, () => {
    throw new ManifestTooLargeError(bytes.length, MAX_MANIFEST_BYTES);
  });
  if (typeof doc.mediaType === 'string') return doc.mediaType;
  if (Array.isArray(doc.manifests)) return MediaType.OciIndex;
  if (isObject(doc.config)) return MediaType.OciManifest;
  return fail('neither a manifest nor an index (no mediaType, config or manifests)');
}

/** Parse and check an image config (OCI or Docker). */
export function parseConfigBytes(bytes: Uint8Array): ImageConfig {
  const fail: Fail = (why) => {
    throw new InvalidConfigError(why);
  };
  const doc = parseCappedJson(bytes, MAX_CONFIG_BYTES, fail, () => {
    throw new InvalidConfigError(`config of ${bytes.length} bytes exceeds the limit of ${MAX_CONFIG_BYTES}`, {
      size: bytes.length,
    });
  });
  if (typeof doc.architecture !== 'string' || doc.architecture === '') fail('architecture must be a non-empty string');
  if (typeof doc.os !== 'string' || doc.os === '') fail('os must be a non-empty string');
  for (const k of ['created', 'author', 'os.version', 'variant']) {
    if (doc[k] !== undefined && typeof doc[k] !== 'string') fail(`${k} must be a string`);
  }
  const rootfs = doc.rootfs;
  if (!isObject(rootfs)) fail('rootfs must be an object');
  if (rootfs.type !== 'layers') fail(`rootfs.type must be "layers", got ${JSON.stringify(rootfs.type)}`);
  if (!Array.isArray(rootfs.diff_ids)) fail('rootfs.diff_ids must be an array');
  rootfs.diff_ids.forEach((d, i) => {
    if (typeof d !== 'string' || !isDigest(d)) fail(`rootfs.diff_ids[${i}] is not a valid digest`);
  });
  const cfg = doc.config;
  if (cfg !== undefined && cfg !== null) {
    if (!isObject(cfg)) fail('config must be an object');
    checkStringMap(cfg.Labels ?? undefined, 'config.Labels', fail);
    for (const k of ['Env', 'Entrypoint', 'Cmd']) {
      const v = cfg[k];
      if (v !== undefined && v !== null && (!Array.isArray(v) || v.some((x) => typeof x !== 'string')))
        fail(`config.${k} must be an array of strings`);
    }
  }
  if (doc.history !== undefined && !Array.isArray(doc.history)) fail('history must be an array');
  return doc as unknown as ImageConfig;
}

export function isImageConfigType(mt: string | undefined): boolean {
  return mt === MediaType.OciConfig || mt === MediaType.DockerConfig;
}

export class ContentTooLargeError extends TiuError {
  constructor(what: string, limit: number) {
    super('CONTENT_TOO_LARGE', `${what} is larger than the limit of ${limit} bytes`, { what, limit });
  }
}

/**
 * Read a whole stream into memory, failing as soon as it passes `limit` bytes (with
 * CONTENT_TOO_LARGE, or the error `tooLarge` makes).
 */
export async function readAllCapped(
  stream: Readable,
  limit: number,
  what = 'content',
  tooLarge: () => Error = () => new ContentTooLargeError(what, limit),
): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  try {
    for await (const c of stream) {
      const chunk = typeof c === 'string' ? Buffer.from(c) : (c as Buffer);
      n += chunk.length;
      if (n > limit) throw tooLarge();
      chunks.push(chunk);
    }
  } finally {
    if (!stream.destroyed) stream.destroy();
  }
  return Buffer.concat(chunks, n);
}
