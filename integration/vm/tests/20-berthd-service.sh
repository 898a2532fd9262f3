#!/bin/bash
# berthd as a systemd service (deploy/berthd.service, installed and started by the
# runner): a running container survives `systemctl restart berthd` (KillMode=process:
# only berthd restarts, the container's monitor and processes stay) and is still
# managed afterwards (exec, stop); `journalctl -u berthd` has berthd's log, from both
# runs; the unit is Type=notify, so `restart` returns only once the socket serves.
# vm-lane: timeout 240
. /mnt/berth/vm/lib.sh
crictl pull "$BUSYBOX" >/dev/null
pod=$(run_pod svc)
ctr=$(run_ctr "$pod" sleeper "$BUSYBOX" '["sleep", "3600"]')
pid=$(crictl inspect -o go-template --template '{{.info.pid}}' "$ctr")
old_main=$(systemctl show -p MainPID --value berthd)
systemctl restart berthd || fail "systemctl restart berthd"
new_main=$(systemctl show -p MainPID --value berthd)
[ "$new_main" != "$old_main" ] && [ "$new_main" -gt 0 ] || fail "berthd did not restart ($old_main -> $new_main)"
# The socket answers as soon as restart returns (READY=1 after recovery).
[ "$(crictl inspect -o go-template --template '{{.status.state}}' "$ctr")" = CONTAINER_RUNNING ] \
  || fail "after the restart the container is $(crictl inspect -o go-template --template '{{.status.state}}' "$ctr")"
kill -0 "$pid" || fail "the container's process $pid died with berthd"
out=$(crictl exec "$ctr" echo alive) || fail "exec after the restart"
[ "$out" = alive ] || fail "exec said '$out'"
crictl stop -t 1 "$ctr" >/dev/null || fail "stop after the restart"
! kill -0 "$pid" 2>/dev/null || wait_for 10 sh -c "! kill -0 $pid 2>/dev/null" || fail "stop left $pid running"
starts=$(journalctl -u berthd --no-pager -o cat | grep -c 'Started berthd.service\|berthd.*listening\|serving' || true)
journalctl -u berthd --no-pager -o cat | tail -n 5
[ "$(journalctl -u berthd --no-pager -o cat _PID="$new_main" | wc -l)" -gt 0 ] || fail "journalctl -u berthd has nothing from the new berthd ($new_main)"
[ "$(journalctl -u berthd --no-pager -o cat _PID="$old_main" | wc -l)" -gt 0 ] || fail "journalctl -u berthd has nothing from the old berthd ($old_main)"
say "container survived systemctl restart berthd (pid $pid), exec and stop work, journal has both runs ($starts start lines)"
