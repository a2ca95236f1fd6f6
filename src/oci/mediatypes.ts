/** Media types of the OCI image spec and Docker schema 2, and tiu's own. */
export const MediaType = {
  OciManifest: 'application/vnd.oci.image.manifest.v1+json',
  OciIndex: 'application/vnd.oci.image.index.v1+json',
  OciConfig: 'application/vnd.oci.image.config.v1+json',
  OciLayerTar: 'application/vnd.oci.image.layer.v1.tar',
  OciLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  OciLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  OciEmpty: 'application/vnd.oci.empty.v1+json',
  DockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  DockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  DockerConfig: 'application/vnd.docker.container.image.v1+json',
  DockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  DockerLayerTar: 'application/vnd.docker.image.rootfs.diff.tar',
  CosignSimpleSigning: 'application/vnd.dev.cosign.simplesigning.v1+json',
  SigstoreBundle: 'application/vnd.dev.sigstore.bundle.v0.3+json',
} as const;

export const MANIFEST_MEDIA_TYPES: readonly string[] = [MediaType.OciManifest, MediaType.DockerManifest];
export const INDEX_MEDIA_TYPES: readonly string[] = [MediaType.OciIndex, MediaType.DockerManifestList];

export function isManifestType(mt: string | undefined): boolean {
  return mt !== undefined && MANIFEST_MEDIA_TYPES.includes(mt);
}
export function isIndexType(mt: string | undefined): boolean {
  return mt !== undefined && INDEX_MEDIA_TYPES.includes(mt);
}
/** Manifests and indexes: JSON documents that name other blobs. */
export function isManifestLike(mt: string | undefined): boolean {
  return isManifestType(mt) || isIndexType(mt);
}

/** Largest manifest or index tiu accepts from anywhere (as containerd and the distribution registry do). */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
