/** OCI platform names (the Go GOARCH values image indexes use) for this machine. */

const NODE_TO_OCI_ARCH: Record<string, string> = {
  x64: 'amd64',
  arm64: 'arm64',
  arm: 'arm',
  ppc64: 'ppc64le',
  s390x: 's390x',
  riscv64: 'riscv64',
  ia32: '386',
};

/** The OCI architecture of this machine (Node's name where OCI has none for it). */
export function hostArchitecture(): string {
  return NODE_TO_OCI_ARCH[process.arch] ?? process.arch;
}

/** The platform an update picks from an image index on this machine. */
export function hostPlatform(): { os: string; architecture: string } {
  return { os: 'linux', architecture: hostArchitecture() };
}
