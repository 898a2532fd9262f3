#!/bin/bash
# cgroup v2 for real (berthd's v2 code was only tested on fake trees before): the seed's
# limits — 80 MB memory (an allocation past it is OOM-killed and reported OOMKilled) and
# 5 % cpu (cpu.max "5000 100000") — the CRI's swap limit as memory.swap.max,
# UpdateContainerResources reaching memory.max and cpu.max, crictl stats with non-zero
# usage, the CRI metrics (ListMetricDescriptors, ListPodSandboxMetrics) with cgroup v2
# values, PSI files readable, the device rules enforced by the eBPF device program (the
# container may make a node for the guest's disk but not open it); the cgroup removed
# with the container. (Stop by cgroup.kill: 15-stop-kills-cgroup.sh; a device program
# that cannot be loaded: 12-device-program.sh.)
# vm-lane: timeout 480
. /mnt/berth/vm/lib.sh
crictl pull "$BUSYBOX" >/dev/null
MB80=83886080
limits="\"resources\": { \"memory_limit_in_bytes\": $MB80, \"cpu_period\": 100000, \"cpu_quota\": 5000 }"

pod=$(run_pod cg2)
# 1. cpu.max and memory.max of the seed's limits; stats; PSI.
# The CRI's swap limit is memory + swap (120 MiB); cgroup v2 limits swap alone: 40 MiB.
spin_limits="\"resources\": { \"memory_limit_in_bytes\": $MB80, \"memory_swap_limit_in_bytes\": 125829120, \"cpu_period\": 100000, \"cpu_quota\": 5000 }"
spin=$(run_ctr "$pod" spin "$BUSYBOX" '["sh", "-c", "while :; do :; done"]' "$spin_limits")
cg=$(ctr_cgroup "$spin")
say "container cgroup $cg"
[ "$(cat "$cg/cpu.max")" = "5000 100000" ] || fail "cpu.max is '$(cat "$cg/cpu.max")'"
[ "$(cat "$cg/memory.max")" = "$MB80" ] || fail "memory.max is '$(cat "$cg/memory.max")'"
[ "$(cat "$cg/memory.swap.max")" = 41943040 ] || fail "memory.swap.max is '$(cat "$cg/memory.swap.max")', not 41943040"
for p in cpu memory io; do
  grep -q '^some avg10=' "$cg/$p.pressure" || fail "$p.pressure unreadable: $(cat "$cg/$p.pressure" 2>&1)"
done
sleep 3
stats=$(crictl stats -o json "$spin")
cpu=$(tr -d '\n' <<<"$stats" | grep -o '"usageCoreNanoSeconds": *{[^}]*}' | grep -o '[0-9]\+' | head -n1)
mem=$(tr -d '\n' <<<"$stats" | grep -o '"workingSetBytes": *{[^}]*}' | grep -o '[0-9]\+' | head -n1)
[ "${cpu:-0}" -gt 0 ] && [ "${mem:-0}" -gt 0 ] || fail "stats not non-zero (cpu ${cpu:-?}, memory ${mem:-?}): $stats"
# At 5 % of one cpu the busy loop gets ~50 ms per second: over 3 s well under 1 s.
usage=$(sed -n 's/^usage_usec //p' "$cg/cpu.stat")
throttled=$(sed -n 's/^nr_throttled //p' "$cg/cpu.stat")
[ "$throttled" -gt 0 ] || fail "the 5 % container was never throttled (cpu.stat: $(cat "$cg/cpu.stat"))"
say "cpu.max, memory.max, memory.swap.max, PSI, stats (cpu ${cpu} ns, working set ${mem} B), throttled ${throttled} times, usage ${usage} us"

# The CRI metrics (kubelet's replacement for cAdvisor's): descriptors, and the busy
# container's values from its cgroup v2 files.
descs=$(crictl metricdescs -o json | tr -d ' \n')
ndescs=$(grep -o '"name":"[a-z_]*"' <<<"$descs" | sort -u | wc -l)
for m in container_cpu_usage_seconds_total container_memory_working_set_bytes container_spec_memory_swap_limit_bytes; do
  grep -q "\"name\":\"$m\"" <<<"$descs" || fail "ListMetricDescriptors lacks $m ($ndescs descriptors)"
done
# The cpu metric is whole seconds (the CRI value is an integer), and at 5 % cpu the
# container may not have had one yet: the metric must lie between the cgroup's own
# usage (cpu.stat usage_usec) read just before and just after, in whole seconds.
usec() { awk '$1 == "usage_usec" { print $2 }' "$cg/cpu.stat"; }
cpu_before=$(( $(usec) / 1000000 ))
metrics=$(crictl metricsp -o json | tr -d ' \n')
cpu_after=$(( $(usec) / 1000000 ))
# metric NAME: the spin container's value of NAME (the only container of the pod running).
metric() {
  grep -o "\"name\":\"$1\"[^}]*\"value\":{\"value\":\"\?[0-9]*" <<<"$metrics" | grep -o '[0-9]*$' | head -n1
}
mcpu=$(metric container_cpu_usage_seconds_total)
mws=$(metric container_memory_working_set_bytes)
mlimit=$(metric container_spec_memory_limit_bytes)
mswap=$(metric container_spec_memory_swap_limit_bytes)
[ -n "$mcpu" ] && [ "$mcpu" -ge "$cpu_before" ] && [ "$mcpu" -le "$cpu_after" ] \
  || fail "ListPodSandboxMetrics: cpu '${mcpu:-}' s, the cgroup's usage ${cpu_before}..${cpu_after} s: ${metrics:0:3000}"
[ "${mws:-0}" -gt 0 ] || fail "ListPodSandboxMetrics: working set '${mws:-}' not non-zero: ${metrics:0:3000}"
[ "$mlimit" = "$MB80" ] || fail "container_spec_memory_limit_bytes '$mlimit'"
[ "$mswap" = 41943040 ] || fail "container_spec_memory_swap_limit_bytes '$mswap'"
say "metrics: $ndescs descriptors; cpu usage $mcpu, working set $mws, memory limit $mlimit, swap limit $mswap"

# Device rules: only the devices the container was given. The guest's disk (not given)
# may be made with CAP_MKNOD, but the device program refuses to open it (EPERM; without
# the program, root could read the raw disk). /dev/null (given) opens.
disk=$(cat /sys/block/vda/dev)
out=$(crictl exec "$spin" sh -c "mknod /tmp/disk b ${disk%:*} ${disk#*:} && dd if=/tmp/disk of=/dev/null bs=512 count=1" 2>&1) \
  && fail "the container read the guest's disk $disk: $out"
grep -q 'Operation not permitted' <<<"$out" || fail "reading the disk failed, but not by the device rules: $out"
crictl exec "$spin" dd if=/dev/null of=/dev/null count=1 >/dev/null 2>&1 || fail "/dev/null does not open"
say "device $disk (the guest's disk) refused by the device program: $out"

# 2. UpdateContainerResources (a page multiple: the kernel rounds memory.max down to pages).
crictl update --memory 104857600 --cpu-quota 20000 --cpu-period 100000 "$spin" >/dev/null || fail "crictl update"
[ "$(cat "$cg/memory.max")" = 104857600 ] || fail "after update memory.max is '$(cat "$cg/memory.max")'"
[ "$(cat "$cg/cpu.max")" = "20000 100000" ] || fail "after update cpu.max is '$(cat "$cg/cpu.max")'"
say "UpdateContainerResources reached memory.max and cpu.max"
crictl stop -t 2 "$spin" >/dev/null
crictl rm "$spin" >/dev/null
[ ! -d "$cg" ] || wait_for 10 test ! -d "$cg" || fail "the cgroup $cg outlived the removed container"

# 3. 80 MB and a 200 MB allocation (dd's buffer, filled by read): OOM-killed, reported as OOMKilled.
hog=$(run_ctr "$pod" hog "$BUSYBOX" '["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"]' "$limits")
st() { crictl inspect -o go-template --template "{{.status.$1}}" "$hog"; }
wait_for 180 sh -c "[ \"\$(crictl inspect -o go-template --template '{{.status.state}}' $hog)\" = CONTAINER_EXITED ]" \
  || fail "the memory hog still runs after 180 s (state $(st state))"
[ "$(st reason)" = OOMKilled ] || fail "reason '$(st reason)' exit $(st exitCode), not OOMKilled"
say "memory hog: exit $(st exitCode), reason OOMKilled"

