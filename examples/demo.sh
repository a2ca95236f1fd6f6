#!/usr/bin/env bash
# `npm run demo`: installs what the demo needs, then runs examples/demo.ts on the project's Node 24.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d node_modules ] || npm ci
bash scripts/install-deps.sh
exec node_modules/.bin/node examples/demo.ts "$@"
