#!/usr/bin/env bash
# Build (and cache) the bootable disk image the system tests boot in qemu.
#
#   test/system/build-image.sh            prints the image directory as its last line of stdout
#
# The image directory holds:
#   disk.raw     a GPT disk: partition 1 the ESP (vfat, 256 MiB, mounted at /boot/efi) with
#                systemd-boot (EFI/systemd/systemd-bootx64.efi and the removable-media path
#                EFI/BOOT/BOOTX64.EFI, loader/loader.conf "timeout 0") and a Boot Loader
#                Specification entry for snapshot 1 (tiu-1.conf, as tiu writes them); partition 2 a btrfs filesystem in the MicroOS
#                layout: top-level @, @/.snapshots/1/snapshot as the default subvolume (read-only,
#                with /etc as a nested read-write subvolume), @/var @/home @/root @/opt @/srv
#                @/usr/local as separate subvolumes, a snapper config "root", Debian bookworm
#                userland with systemd, systemd-boot, Node 24 and tiu.
#   vmlinuz, initrd.img   snapshot 1's kernel and initrd, for qemu -kernel/-initrd (TIU_VM_BOOT=kernel)
#   tree/        the root tree installed as snapshot 1 (the source the tests build bundles from)
#   kernel2/     a second kernel (Debian's cloud flavour, another `uname -r`) with its initrd, as
#                a tree fragment (boot/, usr/lib/modules/KVER/) for bundles that change the kernel
#   cmdline      the -kernel boots' command line (root=UUID=..., no subvol: the btrfs default subvolume)
#   cmdline-options   the same without root=: also the guest's /etc/kernel/cmdline
# Three cached stages under $TIU_VM_CACHE (default /var/cache/tiu-test), each keyed by a hash of
# its inputs, so a change to tiu's sources rebuilds only the last (fast) one:
#   base-KEY/    debootstrap of bookworm (minutes; keyed by mirror and package list)
#   os-KEY/      the configured OS tree + kernel + initrd (keyed by base and this script)
#   image-KEY/   tree + tiu + node on a btrfs disk (keyed by os and tiu's files)
# Needs root (debootstrap, chroot, loop device, mount). Safe to run concurrently (flock).
set -euo pipefail
umask 022
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${TIU_VM_CACHE:-/var/cache/tiu-test}
suite=bookworm
packages=systemd,systemd-sysv,udev,dbus,linux-image-amd64,linux-image-cloud-amd64,systemd-boot,systemd-boot-efi,dosfstools,initramfs-tools,kmod,btrfs-progs,snapper,zstd,e2fsprogs,procps,attr
# The disk's filesystem label; fstab mounts the subvolumes by it. The ESP's volume id is fixed
# (every VM's disk is a copy of one image), so the OS stage's fstab can name it; the btrfs UUID
# is made with the disk (a fixed one could meet another filesystem with it on the host).
label=tiu-root
esp_id=7105ECF1
esp_uuid=7105-ECF1
esp_mib=256
# panic=5: a kernel or initrd that fails resets the machine (qemu -no-reboot ends that boot).
cmdline_options="rootfstype=btrfs rw console=ttyS0 panic=5 loglevel=4 systemd.show_status=1 net.ifnames=0 mitigations=off"

log() { echo "build-image: $*" >&2; }
die() { log "error: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, loop devices, mount)"
for c in debootstrap mkfs.btrfs btrfs losetup chroot zstd sha256sum flock sfdisk mkfs.vfat mcopy mmd; do
  command -v "$c" >/dev/null || [ -x "/usr/sbin/$c" ] || [ -x "/sbin/$c" ] || die "$c is not installed (scripts/install-deps.sh with TIU_WITH_VM=1)"
done
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

# The Debian mirror this machine's apt uses for $suite (deb822 .sources or one-line .list),
# unless TIU_VM_MIRROR says otherwise.
find_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '
      /^[[:space:]]*$/ { if (u != "" && s ~ ("(^| )" suite "( |$)")) { print u; exit } u = ""; s = ""; next }
      /^URIs:/ { sub(/^URIs:[[:space:]]*/, ""); split($0, a, " "); u = a[1] }
      /^Suites:/ { sub(/^Suites:[[:space:]]*/, ""); s = $0 }
      END { if (u != "" && s ~ ("(^| )" suite "( |$)")) print u }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -E 's/\[[^]]*\]//' "$f" | awk -v suite="$suite" '$1 == "deb" && $3 == suite { print $2 }'
  done
}
mirror=${TIU_VM_MIRROR:-$(find_mirror | grep -v security | head -1)}
mirror=${mirror:-http://deb.debian.org/debian}

hash() { sha256sum | cut -c1-16; }
# Keep the newest few of each stage; remove older ones (they are large).
prune() {
  local prefix=$1 keep=$2
  # shellcheck disable=SC2012
  ls -1dt "$cache/$prefix"-* 2>/dev/null | tail -n +"$((keep + 1))" | while read -r old; do
    log "removing old $old"
    rm -rf --one-file-system "$old"
  done
}

# ---------------------------------------------------------------- stage 1: debootstrap
base_key=$(printf '%s\n' "v1" "$mirror" "$suite" "$packages" | hash)
base=$cache/base-$base_key
if [ ! -f "$base/done" ]; then
  start=$(date +%s)
  log "debootstrap $suite from $mirror into $base (takes a few minutes)"
  rm -rf --one-file-system "$base" "$base.tmp"
  mkdir -p "$base.tmp"
  debootstrap --variant=minbase --include="$packages" "$suite" "$base.tmp/root" "$mirror" >"$base.tmp/debootstrap.log" 2>&1 ||
    { tail -20 "$base.tmp/debootstrap.log" >&2; die "debootstrap failed (log: $base.tmp/debootstrap.log)"; }
  rm -rf "$base.tmp/root/var/cache/apt/archives/"*.deb "$base.tmp/root/var/lib/apt/lists/"*
  mv "$base.tmp" "$base"
  touch "$base/done"
  log "debootstrap took $(($(date +%s) - start)) s"
  prune base 2
fi

# ---------------------------------------------------------------- stage 2: the configured OS
os_key=$( { echo "v2 $base_key $cmdline_options $label $esp_uuid"; sed -n '/^# @os-begin/,/^# @os-end/p' "$0"; find "$here/image" -type f -print0 | sort -z | xargs -0 sha256sum | sed "s|$here/||"; } | hash)
os=$cache/os-$os_key
# @os-begin
configure_os() {
  local root=$1
  # Trim what a test VM never reads.
  rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
  echo tiu-vm >"$root/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 tiu-vm\n' >"$root/etc/hosts"
  printf 'LANG=C.UTF-8\n' >"$root/etc/default/locale"
  # fstab: MicroOS layout. The root is the default subvolume (no subvol=), read-only by its
  # subvolume flag; /etc is a nested subvolume inside it; the rest are separate subvolumes.
  {
    echo "LABEL=$label / btrfs defaults 0 0"
    for sv in var .snapshots home root opt srv usr/local; do
      echo "LABEL=$label /$sv btrfs subvol=/@/$sv 0 0"
    done
    echo "UUID=$esp_uuid /boot/efi vfat umask=0077 0 2"
    echo "tmpfs /tmp tmpfs defaults,nosuid,nodev 0 0"
  } >"$root/etc/fstab"
  mkdir -p "$root/boot/efi"
  # The kernel command line a boot entry gets besides root= and rootflags= (kernel-install's file).
  mkdir -p "$root/etc/kernel"
  echo "$cmdline_options" >"$root/etc/kernel/cmdline"
  # snapper: config "root" for /, no timeline; its timers stay off so the test owns the numbering.
  sed -e 's/^TIMELINE_CREATE=.*/TIMELINE_CREATE="no"/' -e 's/^FSTYPE=.*/FSTYPE="btrfs"/' -e 's|^SUBVOLUME=.*|SUBVOLUME="/"|' \
    "$root/usr/share/snapper/config-templates/default" >"$root/etc/snapper/configs/root"
  if grep -q '^SNAPPER_CONFIGS=' "$root/etc/default/snapper" 2>/dev/null; then
    sed -i 's/^SNAPPER_CONFIGS=.*/SNAPPER_CONFIGS="root"/' "$root/etc/default/snapper"
  else
    echo 'SNAPPER_CONFIGS="root"' >>"$root/etc/default/snapper"
  fi
  for u in snapper-timeline.timer snapper-cleanup.timer snapper-boot.timer apt-daily.timer apt-daily-upgrade.timer \
    e2scrub_all.timer e2scrub_reap.service fstrim.timer systemd-timesyncd.service getty@tty1.service serial-getty@ttyS0.service; do
    ln -sf /dev/null "$root/etc/systemd/system/$u"
  done
  # The test VM's files: the command channel service and its script.
  cp -a "$here/image/." "$root/"
  mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
  ln -sf /usr/lib/systemd/system/tiu-test-shell.service "$root/etc/systemd/system/multi-user.target.wants/"
  # Two kernels: Debian's generic flavour is the image's; the cloud flavour (another `uname -r`)
  # leaves the tree for kernel2/, a fragment bundles can put in instead.
  local kvers kver kver2
  kvers=$(ls "$root/usr/lib/modules")
  kver=$(echo "$kvers" | grep -v -- '-cloud-amd64$' || true)
  kver2=$(echo "$kvers" | grep -- '-cloud-amd64$' || true)
  [ "$(echo "$kver" | wc -w)" = 1 ] && [ "$(echo "$kver2" | wc -w)" = 1 ] || die "expected a generic and a cloud kernel in $root/usr/lib/modules, found: $kvers"
  # Kernel modules: only what this VM loads (virtio, btrfs, ext4 for the USB-stick disk, vfat for
  # the ESP, virtio-net for the boots that have a network: qemu user networking to the host's registry).
  local k m mod
  for k in $kver $kver2; do
    m=$root/usr/lib/modules/$k/kernel
    find "$m" -mindepth 1 -maxdepth 1 ! -name drivers ! -name fs ! -name lib ! -name crypto ! -name arch ! -name net -exec rm -rf {} +
    find "$m/drivers" -mindepth 1 -maxdepth 1 ! -name virtio ! -name block ! -name char ! -name net -exec rm -rf {} +
    find "$m/drivers/net" -mindepth 1 -maxdepth 1 ! -name 'virtio_net.ko*' ! -name 'net_failover.ko*' -exec rm -rf {} +
    [ -d "$m/net" ] && find "$m/net" -mindepth 1 -maxdepth 1 ! -name core -exec rm -rf {} +
    [ -d "$m/net/core" ] && find "$m/net/core" -mindepth 1 -maxdepth 1 ! -name 'failover.ko*' -exec rm -rf {} +
    find "$m/fs" -mindepth 1 -maxdepth 1 ! -name btrfs ! -name ext4 ! -name jbd2 ! -name 'mbcache.ko*' ! -name autofs ! -name fat ! -name nls ! -name efivarfs -exec rm -rf {} +
    find "$m/drivers/char" -mindepth 1 -maxdepth 1 ! -name 'virtio_console.ko*' ! -name hw_random -exec rm -rf {} +
    chroot "$root" depmod "$k"
    for mod in virtio_pci virtio_blk virtio_console virtio_net btrfs ext4 autofs4 vfat nls_cp437 nls_ascii efivarfs; do
      chroot "$root" modprobe -S "$k" --show-depends "$mod" >/dev/null || die "module $mod or a dependency is missing for $k"
    done
  done
  # A small initrd: just the modules to mount the root filesystem.
  printf 'virtio_pci\nvirtio_blk\nbtrfs\n' >"$root/etc/initramfs-tools/modules"
  sed -i -e 's/^MODULES=.*/MODULES=list/' -e 's/^COMPRESS=.*/COMPRESS=zstd/' "$root/etc/initramfs-tools/initramfs.conf"
  mount -t proc proc "$root/proc"
  mount -t sysfs sysfs "$root/sys"
  local rc=0
  for k in $kver $kver2; do
    chroot "$root" update-initramfs -c -k "$k" >>"$root.initramfs.log" 2>&1 || rc=$?
  done
  umount "$root/sys" "$root/proc"
  [ "$rc" = 0 ] || { cat "$root.initramfs.log" >&2; die "update-initramfs failed"; }
  rm -f "$root.initramfs.log"
  # Kernel and initrd stay in the tree's /boot (the image carries its own); copies go to the cache.
  local out
  out=$(dirname "$root")
  cp "$root/boot/vmlinuz-$kver" "$out/vmlinuz"
  cp "$root/boot/initrd.img-$kver" "$out/initrd.img"
  echo "$kver" >"$out/kver"
  mkdir -p "$out/kernel2/boot" "$out/kernel2/usr/lib/modules"
  for f in vmlinuz initrd.img config System.map; do
    [ -e "$root/boot/$f-$kver2" ] && mv "$root/boot/$f-$kver2" "$out/kernel2/boot/"
  done
  mv "$root/usr/lib/modules/$kver2" "$out/kernel2/usr/lib/modules/"
  echo "$kver2" >"$out/kernel2/kver"
  # The /vmlinuz and /initrd.img links (if any) name the image's own kernel.
  for f in vmlinuz initrd.img vmlinuz.old initrd.img.old; do
    if [ -L "$root/$f" ]; then ln -sfn "boot/${f%.old}-$kver" "$root/$f"; fi
    if [ -L "$root/boot/$f" ]; then ln -sfn "${f%.old}-$kver" "$root/boot/$f"; fi
  done
  rm -f "$root/etc/machine-id" "$root/var/lib/dbus/machine-id"
  : >"$root/etc/machine-id"
}
# @os-end
if [ ! -f "$os/done" ]; then
  start=$(date +%s)
  log "configuring the OS tree in $os"
  rm -rf --one-file-system "$os" "$os.tmp"
  mkdir -p "$os.tmp"
  cp -a "$base/root" "$os.tmp/tree"
  configure_os "$os.tmp/tree"
  echo "$cmdline_options" >"$os.tmp/cmdline-options"
  mv "$os.tmp" "$os"
  touch "$os/done"
  log "OS tree took $(($(date +%s) - start)) s"
  prune os 2
fi

# ---------------------------------------------------------------- stage 3: tiu + node on the disk
# tiu as scripts/install.sh installs it on a device: src/ compiled to JavaScript, the production
# dependencies and the project's own Node 24 binary in /usr/lib/tiu, /usr/bin/tiu, the units.
tiu_files() {
  cd "$repo"
  git ls-files -z --cached --others --exclude-standard -- package.json package-lock.json tsconfig.json tsconfig.build.json scripts/install.sh bin src systemd 2>/dev/null | while IFS= read -r -d '' f; do
    [ -f "$f" ] && printf '%s\0' "$f"
  done
}
node_bin=$(readlink -f "$repo/node_modules/.bin/node")
[ -x "$node_bin" ] || die "no node in $repo/node_modules (run npm ci)"
image_key=$( {
  echo "v3 $os_key"
  sed -n '/^# @image-begin/,/^# @image-end/p' "$0"
  tiu_files | (cd "$repo" && xargs -0 sha256sum)
  stat -c '%s %Y' "$node_bin"
} | hash)
image=$cache/image-$image_key
# @image-begin
install_tiu() {
  local root=$1
  bash "$repo/scripts/install.sh" "$root" >/dev/null || die "scripts/install.sh failed"
  # The first runs fill Node's compile cache (/var/cache/tiu/node-compile, on /var), so that
  # even the VM's first tiu command starts fast under TCG.
  mount -t proc proc "$root/proc"
  local c ok=1
  env -u NODE_EXTRA_CA_CERTS -u NODE_OPTIONS chroot "$root" /usr/bin/tiu --version >/dev/null || ok=0
  for c in update status rollback health inspect; do
    [ $ok = 1 ] && { env -u NODE_EXTRA_CA_CERTS -u NODE_OPTIONS chroot "$root" /usr/bin/tiu "$c" --help >/dev/null || ok=0; }
  done
  umount "$root/proc"
  [ $ok = 1 ] || die "tiu does not run in the image"
  if [ -f "$root/usr/lib/systemd/system/tiu-health.service" ]; then
    mkdir -p "$root/etc/systemd/system/multi-user.target.wants" "$root/etc/systemd/system/boot-complete.target.requires"
    ln -sf /usr/lib/systemd/system/tiu-health.service "$root/etc/systemd/system/multi-user.target.wants/"
    ln -sf /usr/lib/systemd/system/tiu-health.service "$root/etc/systemd/system/boot-complete.target.requires/"
  fi
}
# The ESP, built as a file with mtools (no mount): systemd-boot, loader.conf, and snapshot 1's
# kernel, initrd and Boot Loader Specification entry, laid out as tiu's systemd-boot integration
# writes them (src/deploy/boot/entries.ts): loader.conf `default tiu-*`, the entry
# loader/entries/tiu-1.conf (no tries counter: snapshot 1 is the installed, good system) with
# root=UUID= and rootflags=subvol= of snapshot 1, the kernel files named by content under tiu/KVER/.
make_esp() {
  local tree=$1 esp=$2 tmp=$3 root_uuid=$4
  local kver kernel initrd
  kver=$(ls "$tree/usr/lib/modules")
  kernel=tiu/$kver/linux-$(sha256sum <"$tree/boot/vmlinuz-$kver" | cut -c1-32)
  initrd=tiu/$kver/initrd-$(sha256sum <"$tree/boot/initrd.img-$kver" | cut -c1-32)
  export MTOOLS_SKIP_CHECK=1
  truncate -s "${esp_mib}M" "$esp"
  mkfs.vfat -F 32 -n TIU-ESP -i "$esp_id" "$esp" >/dev/null
  mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/EFI/systemd ::/loader ::/loader/entries ::/tiu "::/tiu/$kver"
  mcopy -i "$esp" "$tree/usr/lib/systemd/boot/efi/systemd-bootx64.efi" ::/EFI/systemd/systemd-bootx64.efi
  mcopy -i "$esp" "$tree/usr/lib/systemd/boot/efi/systemd-bootx64.efi" ::/EFI/BOOT/BOOTX64.EFI
  mcopy -i "$esp" "$tree/boot/vmlinuz-$kver" "::/$kernel"
  mcopy -i "$esp" "$tree/boot/initrd.img-$kver" "::/$initrd"
  mkdir -p "$tmp"
  printf 'default tiu-*\ntimeout 0\nconsole-mode keep\neditor no\n' >"$tmp/loader.conf"
  mcopy -i "$esp" "$tmp/loader.conf" ::/loader/loader.conf
  {
    echo "# Boot Loader Specification type #1 entry, written by tiu for snapshot 1"
    echo "title      tiu snapshot 1 ($kver)"
    echo "version    1@$kver"
    echo "linux      /$kernel"
    echo "initrd     /$initrd"
    echo "options    root=UUID=$root_uuid rootflags=subvol=@/.snapshots/1/snapshot $cmdline_options"
  } >"$tmp/entry.conf"
  mcopy -i "$esp" "$tmp/entry.conf" ::/loader/entries/tiu-1.conf
  rm -rf "$tmp"
}
make_disk() {
  local tree=$1 disk=$2 mnt=$3
  local root_uuid cmdline
  root_uuid=$(cat /proc/sys/kernel/random/uuid)
  cmdline="root=UUID=$root_uuid $cmdline_options"
  echo "$cmdline" >"$(dirname "$disk")/cmdline"
  # GPT: 1 MiB, the ESP, then the btrfs partition to the end (3 GiB).
  local esp_start=1 btrfs_start=$((1 + esp_mib)) btrfs_mib=3072
  truncate -s "$((btrfs_start + btrfs_mib + 1))M" "$disk"
  printf 'label: gpt\nstart=%sMiB,size=%sMiB,type=U,name=ESP\nstart=%sMiB,size=%sMiB,type=L,name=root\n' \
    "$esp_start" "$esp_mib" "$btrfs_start" "$btrfs_mib" | sfdisk -q "$disk" >/dev/null
  make_esp "$tree" "$disk.esp" "$mnt.esp" "$root_uuid"
  dd if="$disk.esp" of="$disk" bs=1M seek="$esp_start" conv=notrunc,sparse status=none
  rm -f "$disk.esp"
  local loop
  loop=$(losetup --find --show --offset "$((btrfs_start << 20))" --sizelimit "$((btrfs_mib << 20))" "$disk")
  mkfs.btrfs -q -f -L "$label" -U "$root_uuid" "$loop" || { losetup -d "$loop"; die "mkfs.btrfs failed"; }
  mkdir -p "$mnt"
  mount -o compress=zstd:1 "$loop" "$mnt" || { losetup -d "$loop"; die "mount $loop failed"; }
  # shellcheck disable=SC2064
  trap "umount '$mnt' 2>/dev/null; losetup -d '$loop' 2>/dev/null" EXIT
  btrfs -q subvolume create "$mnt/@"
  btrfs -q subvolume create "$mnt/@/.snapshots"
  mkdir -p "$mnt/@/.snapshots/1" "$mnt/@/usr"
  local s=$mnt/@/.snapshots/1/snapshot
  btrfs -q subvolume create "$s"
  btrfs -q subvolume create "$s/etc"
  for sv in var home root opt srv usr/local; do btrfs -q subvolume create "$mnt/@/$sv"; done
  # The OS tree, minus what lives in the other subvolumes.
  (cd "$tree" && tar --xattrs --xattrs-include='*' --acls --numeric-owner \
    --exclude=./var --exclude=./home --exclude=./root --exclude=./opt --exclude=./srv --exclude=./usr/local -cf - .) |
    (cd "$s" && tar --xattrs --xattrs-include='*' --acls --numeric-owner -xpf -)
  for sv in var home root opt srv usr/local .snapshots; do mkdir -p "$s/$sv"; done
  for sv in var home root opt srv usr/local; do
    [ -d "$tree/$sv" ] && (cd "$tree/$sv" && tar --xattrs --xattrs-include='*' --acls --numeric-owner -cf - .) |
      (cd "$mnt/@/$sv" && tar --xattrs --xattrs-include='*' --acls --numeric-owner -xpf -)
  done
  chmod 700 "$mnt/@/root"
  cat >"$mnt/@/.snapshots/1/info.xml" <<EOF
<?xml version="1.0"?>
<snapshot>
  <type>single</type>
  <num>1</num>
  <date>$(date -u '+%Y-%m-%d %H:%M:%S')</date>
  <description>first root filesystem</description>
</snapshot>
EOF
  local id
  id=$(btrfs subvolume show "$s" | awk '/Subvolume ID:/ { print $3 }')
  btrfs subvolume set-default "$id" "$mnt"
  btrfs property set -ts "$s" ro true
  sync
  umount "$mnt"
  losetup -d "$loop"
  trap - EXIT
}
# @image-end
if [ ! -f "$image/done" ]; then
  start=$(date +%s)
  log "building the disk image in $image"
  rm -rf --one-file-system "$image" "$image.tmp"
  mkdir -p "$image.tmp"
  cp -a "$os/tree" "$image.tmp/tree"
  install_tiu "$image.tmp/tree"
  make_disk "$image.tmp/tree" "$image.tmp/disk.raw" "$image.tmp/mnt"
  rmdir "$image.tmp/mnt"
  cp "$os/vmlinuz" "$os/initrd.img" "$os/cmdline-options" "$os/kver" "$image.tmp/"
  cp -a "$os/kernel2" "$image.tmp/"
  mv "$image.tmp" "$image"
  touch "$image/done"
  log "disk image took $(($(date +%s) - start)) s"
  prune image 3
fi
echo "$image"
