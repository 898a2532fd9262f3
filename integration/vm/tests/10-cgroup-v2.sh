#!/bin/bash
# cgroup v2 for real (berthd's v2 code was only tested on fake trees before): the seed's
# limits — 80 MB memory (an allocation past it is OOM-killed and reported OOMKilled) and
# 5 % cpu (cpu.max "5000 100000") — UpdateContainerResources reaching memory.max and
# cpu.max, crictl stats with non-zero usage, PSI files readable; the cgroup removed
# with the container. (Stop killing the whole cgroup: 15-stop-kills-cgroup.sh.)
# vm-lane: timeout 300
. /mnt/berth/vm/lib.sh
crictl pull "$BUSYBOX" >/dev/null
MB80=83886080
limits="\"resources\": { \"memory_limit_in_bytes\": $MB80, \"cpu_period\": 100000, \"cpu_quota\": 5000 }"

pod=$(run_pod cg2)
# 1. cpu.max and memory.max of the seed's limits; stats; PSI.
spin=$(run_ctr "$pod" spin "$BUSYBOX" '["sh", "-c", "while :; do :; done"]' "$limits")
cg=$(ctr_cgroup "$spin")
say "container cgroup $cg"
[ "$(cat "$cg/cpu.max")" = "5000 100000" ] || fail "cpu.max is '$(cat "$cg/cpu.max")'"
[ "$(cat "$cg/memory.max")" = "$MB80" ] || fail "memory.max is '$(cat "$cg/memory.max")'"
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
say "cpu.max, memory.max, PSI, stats (cpu ${cpu} ns, working set ${mem} B), throttled ${throttled} times, usage ${usage} us"

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
wait_for 60 sh -c "[ \"\$(crictl inspect -o go-template --template '{{.status.state}}' $hog)\" = CONTAINER_EXITED ]" \
  || fail "the memory hog still runs after 60 s (state $(st state))"
[ "$(st reason)" = OOMKilled ] || fail "reason '$(st reason)' exit $(st exitCode), not OOMKilled"
say "memory hog: exit $(st exitCode), reason OOMKilled"

