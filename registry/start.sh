#!/usr/bin/env bash
# Start a local distribution registry (Debian's docker-registry) for the demo, CI pipelines or
# an air-gapped mirror. Storage and pid file live in DIR (default /var/lib/tiu-registry).
#   registry/start.sh [--port 5000] [--dir DIR] [--htpasswd FILE] [--tls CERT KEY]
set -euo pipefail
port=5000 dir=/var/lib/tiu-registry htpasswd= cert= key=
while [ $# -gt 0 ]; do
  case $1 in
    --port) port=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --htpasswd) htpasswd=$2; shift 2 ;;
    --tls) cert=$2 key=$3; shift 3 ;;
    *) echo "usage: $0 [--port P] [--dir DIR] [--htpasswd FILE] [--tls CERT KEY]" >&2; exit 2 ;;
  esac
done
command -v docker-registry >/dev/null || { echo "docker-registry is not installed (apt-get install docker-registry)" >&2; exit 1; }
mkdir -p "$dir/data"
if [ -f "$dir/registry.pid" ] && kill -0 "$(cat "$dir/registry.pid")" 2>/dev/null; then
  echo "registry already running (pid $(cat "$dir/registry.pid"))"; exit 0
fi
{
  echo "version: 0.1"
  echo "log: { level: warn, accesslog: { disabled: true } }"
  echo "storage: { filesystem: { rootdirectory: \"$dir/data\" }, delete: { enabled: true } }"
  echo "http:"
  echo "  addr: 127.0.0.1:$port"
  [ -n "$cert" ] && echo "  tls: { certificate: \"$cert\", key: \"$key\" }"
  [ -n "$htpasswd" ] && printf 'auth:\n  htpasswd: { realm: tiu, path: "%s" }\n' "$htpasswd"
} > "$dir/config.yml"
docker-registry serve "$dir/config.yml" >>"$dir/registry.log" 2>&1 &
echo $! > "$dir/registry.pid"
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "registry listening on 127.0.0.1:$port (storage $dir/data)"; exit 0; fi
  kill -0 "$(cat "$dir/registry.pid")" 2>/dev/null || { cat "$dir/registry.log" >&2; exit 1; }
  sleep 0.1
done
echo "registry did not start; see $dir/registry.log" >&2; exit 1
