#!/usr/bin/env bash
# Stop a registry started by registry/start.sh.   registry/stop.sh [--dir DIR] [--purge]
set -euo pipefail
dir=/var/lib/tiu-registry purge=
while [ $# -gt 0 ]; do
  case $1 in --dir) dir=$2; shift 2 ;; --purge) purge=1; shift ;; *) exit 2 ;; esac
done
if [ -f "$dir/registry.pid" ]; then
  pid=$(cat "$dir/registry.pid")
  kill "$pid" 2>/dev/null && while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  rm -f "$dir/registry.pid"
fi
[ -n "$purge" ] && rm -rf "$dir"
exit 0
