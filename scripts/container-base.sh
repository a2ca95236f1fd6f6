#!/usr/bin/env bash
# A local base image for the Containerfile, made without a container registry: a Debian tree from
# debootstrap (the apt archive) with what tiu runs (tar, xz, bzip2, zstd, getfattr, CA
# certificates) and a Node.js >= 22.15 (Debian 12 has Node 18: by default the project's own Node
# 24 from node_modules, or $NODE_BIN), turned into an oci-archive by tiu itself.
#
#   scripts/container-base.sh OUT.tar [TREE]
#
# TREE (default: a temp dir) keeps the debootstrap tree: an existing one is reused as it is.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: scripts/container-base.sh OUT.tar [TREE]}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
node_bin=${NODE_BIN:-$(readlink -f "$repo/node_modules/.bin/node")}
[ -x "$node_bin" ] || { echo "container-base.sh: no node at $node_bin (npm ci, or set NODE_BIN)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tree=${2:-$tmp/tree}
if [ ! -x "$tree/usr/bin/tar" ]; then
  rm -rf "$tree.new"
  debootstrap --variant=minbase --include=ca-certificates,xz-utils,bzip2,zstd,attr bookworm "$tree.new" "$mirror" >&2
  # No package manager runs in the image: the downloaded .debs and lists are dead weight.
  rm -rf "$tree.new"/var/cache/apt/archives/*.deb "$tree.new"/var/lib/apt/lists/*
  mv "$tree.new" "$tree"
fi
# /usr/bin: tiu build leaves /usr/local out of bundles (a device's own subvolume).
install -m 0755 "$node_bin" "$tree/usr/bin/node"
"$repo/bin/tiu" build "$tree" --tag "oci-archive:$out:base" --compression gzip >&2
