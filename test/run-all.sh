#!/usr/bin/env bash
# The README's test command: installs what the tests need, type-checks, lints, then runs every
# test (unit and integration) in one mocha run and ends with the line "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/node_modules/.bin:$PATH"
[ -d node_modules ] || npm ci
bash scripts/install-deps.sh || exit 1
echo "== typecheck"; tsc --noEmit || exit 1
echo "== lint"; eslint . || exit 1
echo "== imports"; depcruise src --config .dependency-cruiser.cjs --output-type err || exit 1
echo "== format"; prettier --check --log-level warn . || { echo "run: npx prettier --write ."; exit 1; }
log=$(mktemp)
echo "== tests"
mocha --timeout 300000 'test/unit/**/*.test.ts' 'test/integration/**/*.test.ts' 'test/system/**/*.test.ts' "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
passed=$(grep -Eo '^ +[0-9]+ passing' "$log" | grep -Eo '[0-9]+' | tail -1)
failed=$(grep -Eo '^ +[0-9]+ failing' "$log" | grep -Eo '[0-9]+' | tail -1)
skipped=$(grep -Eo '^ +[0-9]+ pending' "$log" | grep -Eo '[0-9]+' | tail -1)
rm -f "$log"
echo "${passed:-0} passed, ${failed:-0} failed, ${skipped:-0} skipped"
[ "${passed:-0}" -gt 0 ] || rc=1
exit "$rc"
