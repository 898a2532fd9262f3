#!/bin/bash
# vm-lane: timeout 180
# StopContainer ends every process of the container's cgroup, as containerd does for
# a container without its own PID namespace: a host-PID container's background child
# is not killed with the container's init, only cgroup.kill (v2) reaches it.
# Found by this lane (2026-12-07): berthd signalled only the init and returned once it
# exited; the child lived on until RemoveContainer. Fixed: stop kills the cgroup's remainder.
. /mnt/berth/vm/lib.sh
# A host-PID container's background child is not in
#    any PID namespace berthd would tear down, only in the container's cgroup.
hpod=$(run_pod cg2-hostpid '"security_context": { "namespace_options": { "pid": 2 } }')
tag=$((RANDOM + 40000))
bg=$(run_ctr "$hpod" bg "$BUSYBOX" "[\"sh\", \"-c\", \"sleep $tag & sleep $((tag + 1)) & wait\"]" \
  '"security_context": { "namespace_options": { "pid": 2 } }')
wait_for 20 pgrep -f "^sleep $tag\$" >/dev/null || fail "the background child never started"
cgb=$(ctr_cgroup "$bg")
[ -f "$cgb/cgroup.kill" ] || fail "no cgroup.kill in $cgb"
crictl stop -t 1 "$bg" >/dev/null || fail "stop"
if pgrep -f "^sleep $tag\$" >/dev/null; then fail "the container's background child survived stop"; fi
[ -z "$(cat "$cgb/cgroup.procs" 2>/dev/null)" ] || fail "processes left in $cgb after stop: $(cat "$cgb/cgroup.procs")"
crictl rm "$bg" >/dev/null
[ ! -d "$cgb" ] || wait_for 10 test ! -d "$cgb" || fail "the cgroup $cgb outlived the removed container"
say "stop killed every process of the container's cgroup; rm removed the cgroup"
