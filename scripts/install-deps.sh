#!/usr/bin/env bash
# Install the Debian packages tiu's tests, demo and benchmarks use, where missing.
# As root it installs them with apt-get; otherwise it names what is missing and fails.
set -euo pipefail
# package:command-that-proves-it
wanted=(
  btrfs-progs:mkfs.btrfs snapper:snapper docker-registry:docker-registry skopeo:skopeo
  umoci:umoci podman:podman buildah:buildah zstd:zstd rsync:rsync casync:casync ostree:ostree curl:curl xz-utils:xz apache2-utils:htpasswd
  openssl:openssl util-linux:losetup tar:tar e2fsprogs:mkfs.ext4 bsdutils:script
  attr:getfattr bzip2:bzip2
  # test/integration/skopeo-interop.test.ts: `podman save --format oci-archive`
  podman:podman
  # test/system: the VM image (debootstrap, chroot) and qemu to boot it
  qemu-system-x86:qemu-system-x86_64 debootstrap:debootstrap binutils:strip
  # test/system: the VM's GPT disk, its ESP (built with mtools) and UEFI firmware (a path, not a command)
  ovmf:/usr/share/OVMF/OVMF_CODE_4M.fd fdisk:sfdisk mtools:mcopy
  # test/integration/boot-entries.test.ts and the VM: systemd-boot's EFI binary (a path), the ESP's mkfs
  systemd-boot:/usr/lib/systemd/boot/efi/systemd-bootx64.efi dosfstools:mkfs.vfat
  # test/integration/rpm.test.ts: rpmbuild, rpm2cpio | cpio, man -l (nroff)
  rpm:rpmbuild cpio:cpio man-db:man groff-base:nroff
  # test/integration/containerfile.test.ts: buildah (debootstrap is above)
  buildah:buildah
)
[ "${TIU_WITH_BENCH:-}" = 1 ] && wanted+=(debootstrap:debootstrap)
missing=()
for w in "${wanted[@]}"; do
  pkg=${w%%:*} cmd=${w#*:}
  case $cmd in
    /*) [ -e "$cmd" ] || missing+=("$pkg") ;;
    *) command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || [ -x "/sbin/$cmd" ] || missing+=("$pkg") ;;
  esac
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "tiu: missing Debian packages: ${missing[*]}" >&2
  echo "     install them with: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "tiu: installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
