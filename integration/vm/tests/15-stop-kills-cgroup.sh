#!/bin/bash
# vm-lane: timeout 180
# StopContainer ends every process of the container's cgroup, as containerd does for
# a container without its own PID namespace: a host-PID container's background child
# is not killed with the container's init, only cgroup.kill (v2) reaches it.
# Found by this lane (2026-12-07): berthd signalled only the init and returned once it
# exited; the child lived on until RemoveContainer. Fixed: stop kills the cgroup's remainder.
# That kill is one write of "1" to the cgroup's cgroup.kill (v2, kernel >= 5.14), not a
# signal per pid: a kprobe on the openat syscall (tracefs, path read from user memory)
# records the file berthd opens during the stop.
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
T=/sys/kernel/tracing
[ -f "$T/kprobe_events" ] || mount -t tracefs nodev "$T" || fail "no tracefs"
# si (the path argument) is at offset 104 of the syscall's pt_regs on x86_64.
echo 'p:berthvm/openat __x64_sys_openat path=+0(+104(%di)):ustring' >> "$T/kprobe_events" \
  || fail "cannot add a kprobe on __x64_sys_openat"
on_exit "echo 0 > $T/events/berthvm/enable; echo '-:berthvm/openat' >> $T/kprobe_events"
echo 'path ~ "*/cgroup.kill"' > "$T/events/berthvm/openat/filter" 2>/dev/null \
  || say "(no filter on the kprobe's path: every openat traced)"
echo > "$T/trace"
echo 1 > "$T/events/berthvm/openat/enable"
crictl stop -t 1 "$bg" >/dev/null || fail "stop"
echo 0 > "$T/events/berthvm/openat/enable"
grep -F "path=\"$cgb/cgroup.kill\"" "$T/trace" > "$TEST_TMP/kill-trace" \
  || { grep -v '^#' "$T/trace" | tail -n 5; fail "the stop never opened $cgb/cgroup.kill"; }
say "the stop opened the container's cgroup.kill: $(tr -s ' ' < "$TEST_TMP/kill-trace" | head -n 1)"
if pgrep -f "^sleep $tag\$" >/dev/null; then fail "the container's background child survived stop"; fi
[ -z "$(cat "$cgb/cgroup.procs" 2>/dev/null)" ] || fail "processes left in $cgb after stop: $(cat "$cgb/cgroup.procs")"
crictl rm "$bg" >/dev/null
[ ! -d "$cgb" ] || wait_for 10 test ! -d "$cgb" || fail "the cgroup $cgb outlived the removed container"
say "stop killed every process of the container's cgroup (through cgroup.kill); rm removed the cgroup"
