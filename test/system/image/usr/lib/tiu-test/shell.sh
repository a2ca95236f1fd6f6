#!/bin/bash
# The system tests' command channel (test VM only). Once the boot has finished, it announces
# itself on the virtio-serial port org.tiu.test and then runs what the host sends:
#   host:  RUN <id> <base64 of a bash script>
#   guest: TIU-OUT <id> <exit code> <base64 of stdout+stderr>
# A boot that is shutting down (a rollback's reboot) never announces itself.
port=/dev/virtio-ports/org.tiu.test
for _ in $(seq 1 120); do [ -e "$port" ] && break; sleep 0.5; done
if [ ! -e "$port" ]; then echo "tiu-test-shell: $port did not appear" >&2; exit 0; fi
state=$(systemctl is-system-running --wait 2>/dev/null)
case "$state" in
  stopping | offline | unknown) echo "tiu-test-shell: system is $state, not announcing" >&2; exit 0 ;;
esac
exec 3<>"$port"
echo "tiu-test-shell: ready ($state)" >&2
printf 'TIU-VM-READY %s\n' "$state" >&3
out=/run/tiu-test-shell.out
while IFS=' ' read -r verb id b64 <&3; do
  [ "$verb" = RUN ] || continue
  rc=0
  bash -c "$(printf '%s' "$b64" | base64 -d)" </dev/null >"$out" 2>&1 || rc=$?
  printf 'TIU-OUT %s %s %s\n' "$id" "$rc" "$(base64 -w0 "$out")" >&3
done
