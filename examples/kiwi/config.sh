#!/bin/bash
# kiwi's in-image configuration step for the tiu example image.
set -euo pipefail
# tiu replaces transactional-update's zypper-based updates; keep snapper for the snapshots.
systemctl enable tiu-update.timer || true
# MicroOS mounts these as subvolumes; they exist as empty directories in the image.
for d in home root opt srv usr/local boot/writable; do mkdir -p "/$d"; done
# A reproducible image id for `tiu status` (os-release IMAGE_VERSION ends up in the bundle's annotations).
if [ -n "${kiwi_iversion:-}" ]; then
  grep -q '^IMAGE_VERSION=' /usr/lib/os-release || echo "IMAGE_VERSION=\"${kiwi_iversion}\"" >> /usr/lib/os-release
fi
exit 0
