#!/usr/bin/env bash
# Bundle tiu for a package (packaging/tiu.spec): the CLI and its production dependencies as
# JavaScript that runs on the distribution's Node.js (>= 22.15: zstd in node:zlib), plus the
# man pages and bash completion rendered from the command table (scripts/package-docs.ts).
# The bundle is split at src/'s dynamic imports (main.js + chunks/), so a command loads only the
# code its path needs, as a checkout does: one file would load all of tiu for every command
# (`tiu --version` 64 MiB of RSS instead of 50, `tiu status --help` 64 instead of 57).
#
#   scripts/bundle.sh OUTDIR
#
# OUTDIR/dist/cli/main.js   the bundle's entry; it sits where bin/tiu and `tiu --version` (../../package.json) expect it
# OUTDIR/dist/cli/chunks/   the code main.js imports on demand
# OUTDIR/docs/              tiu.8 tiu.conf.5 tiu-health.8 tiu.bash
#
# esbuild comes from node_modules (the vendored dependencies), or $ESBUILD. It runs offline.
# The docs generator runs on the first `node` in PATH, or $TIU_BUNDLE_NODE. Not $NODE: npm sets
# that to the Node.js running npm itself, which under `npm test` may be older than 22.15.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: scripts/bundle.sh OUTDIR}
esbuild=${ESBUILD:-$repo/node_modules/.bin/esbuild}
[ -x "$esbuild" ] || { echo "bundle.sh: no esbuild at $esbuild (vendor it, or set ESBUILD)" >&2; exit 1; }
node=${TIU_BUNDLE_NODE:-node}
"$node" -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 22 || (a === 22 && b >= 15) ? 0 : 1)' || {
  echo "bundle.sh: $(command -v "$node") is Node.js $("$node" --version), older than 22.15.0; put a newer node first in PATH or set TIU_BUNDLE_NODE" >&2
  exit 1
}

# In ESM output, CommonJS dependencies (tar-stream) still call require() for Node's built-in
# modules: the banner (on every output file) gives them one. import.meta.main is true for the whole
# bundle (main.ts is its entry); Node before 22.18 does not set it.
common=(--bundle --platform=node --format=esm --target=node22.15 --legal-comments=none --log-level=warning
  "--banner:js=import { createRequire as __tiuCreateRequire } from 'node:module'; const require = __tiuCreateRequire(import.meta.url);")
"$esbuild" "$repo/src/cli/main.ts" "${common[@]}" --define:import.meta.main=true \
  --splitting --outdir="$out/dist/cli" --chunk-names='chunks/[name]-[hash]'

# The docs generator imports main.ts for the help text: there import.meta.main must be false.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$esbuild" "$repo/scripts/package-docs.ts" "${common[@]}" --define:import.meta.main=false --outfile="$tmp/package-docs.mjs"
"$node" "$tmp/package-docs.mjs" "$repo" "$out/docs"
