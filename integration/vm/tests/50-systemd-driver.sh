#!/bin/bash
# The systemd cgroup driver for real: with cgroup_driver = "systemd", a container is the
# transient unit berth-<id>.scope in its pod's slice, started over D-Bus with the seed's
# limits as unit properties (memory.max 80 MB, cpu.max "5000 100000"); a
# `systemctl daemon-reload` leaves them as requested (limits written only to the cgroup
# files, behind systemd's back, are reset to "max" by it: the classic runc/containerd
# bug); UpdateContainerResources reaches the unit (systemctl show -p MemoryMax) and
# survives a reload too; RemoveContainer leaves no unit behind; Status (verbose)
# reports the systemd driver. UpdatePodSandboxResources reaches the pod's slice
# (MemoryMax, memory.max); RemovePodSandbox stops the slice (before, a pod's transient
# slice stayed loaded and active for good). A cgroup parent that is a path, not a slice,
# is refused with InvalidArgument before anything is made, by RunPodSandbox and by
# UpdatePodSandboxResources (for a pod made under the cgroupfs driver) alike.
# vm-lane: timeout 600
. /mnt/berth/vm/lib.sh
crictl pull "$BUSYBOX" >/dev/null

# A pod made under the cgroupfs driver: its cgroup parent is a path (step 8).
cgfs=$(run_pod cgfs '"cgroup_parent": "/vmlane-cgfs"')

# berthd with the systemd driver, put back as it was at exit.
conf=/etc/berth/config.toml
cp "$conf" "$TEST_TMP/config.toml.orig"
on_exit "cp $TEST_TMP/config.toml.orig $conf; systemctl restart berthd"
sed -i 's/^cgroup_driver = .*/cgroup_driver = "systemd"/' "$conf"
grep -q '^cgroup_driver = "systemd"' "$conf" || echo 'cgroup_driver = "systemd"' >> "$conf"
systemctl restart berthd
wait_for 30 crictl info >/dev/null 2>&1 || fail "berthd did not come back with the systemd driver"
crictl info | grep -q '"cgroupDriver": *"systemd"' || fail "Status does not report the systemd driver: $(crictl info | grep -i cgroup)"

MB80=83886080
limits="\"resources\": { \"memory_limit_in_bytes\": $MB80, \"cpu_period\": 100000, \"cpu_quota\": 5000 }"
slice=vmlane-podsd$$.slice
sliced=/sys/fs/cgroup/vmlane.slice/$slice
pod=$(run_pod sd "\"cgroup_parent\": \"$slice\"")
on_exit "systemctl stop $slice vmlane.slice"
ctr=$(run_ctr "$pod" limited "$BUSYBOX" '["sleep", "3600"]' "$limits")
unit=berth-$ctr.scope
on_exit "systemctl stop $unit; systemctl reset-failed $unit"

# 1. The unit, in the pod's slice, holding the container.
[ "$(systemctl show -p ActiveState --value "$unit")" = active ] \
  || fail "$unit is not active: $(systemctl status "$unit" 2>&1 | head -n 20)"
[ "$(systemctl show -p Slice --value "$unit")" = "$slice" ] \
  || fail "$unit is in slice '$(systemctl show -p Slice --value "$unit")', not $slice"
systemctl status "$unit" --no-pager | head -n 12
cg=$(ctr_cgroup "$ctr")
[ "$cg" = "$sliced/$unit" ] || fail "the container's cgroup is $cg, not the scope's $sliced/$unit"
[ "$(systemctl show -p Delegate --value "$unit")" = yes ] || fail "$unit is not delegated"
say "$unit is active in $slice at $cg"

# 2. The requested limits, set by systemd, kept over a daemon-reload.
check_limits() { # MEMORY CPU.MAX WHEN
  [ "$(cat "$cg/memory.max")" = "$1" ] || fail "$3: memory.max is '$(cat "$cg/memory.max")', not $1"
  [ "$(cat "$cg/cpu.max")" = "$2" ] || fail "$3: cpu.max is '$(cat "$cg/cpu.max")', not '$2'"
}
check_limits "$MB80" "5000 100000" "after create"
systemctl daemon-reload
check_limits "$MB80" "5000 100000" "after systemctl daemon-reload"
[ "$(systemctl show -p MemoryMax --value "$unit")" = "$MB80" ] \
  || fail "the unit's MemoryMax is '$(systemctl show -p MemoryMax --value "$unit")'"
say "memory.max $MB80 and cpu.max '5000 100000' survive a daemon-reload"

# 3. UpdateContainerResources goes through the unit.
crictl update --memory 104857600 --cpu-quota 20000 --cpu-period 100000 "$ctr" >/dev/null || fail "crictl update"
[ "$(systemctl show -p MemoryMax --value "$unit")" = 104857600 ] \
  || fail "after update the unit's MemoryMax is '$(systemctl show -p MemoryMax --value "$unit")'"
check_limits 104857600 "20000 100000" "after update"
systemctl daemon-reload
check_limits 104857600 "20000 100000" "after update and daemon-reload"
say "UpdateContainerResources: MemoryMax 104857600 (100 MiB) in the unit and the cgroup, kept over a reload"

# 4. RemoveContainer: the unit is gone, and its cgroup.
crictl rm -f "$ctr" >/dev/null || fail "crictl rm"
wait_for 20 sh -c "[ \"\$(systemctl show -p LoadState --value $unit)\" = not-found ]" \
  || fail "$unit is still known after RemoveContainer: $(systemctl status "$unit" 2>&1 | head -n 5)"
[ ! -d "$sliced/$unit" ] || fail "the scope's cgroup outlived it"
say "RemoveContainer stopped $unit and systemd forgot it"

# 5. UpdatePodSandboxResources (crictl has no command for it: grpcurl, by reflection)
#    goes through the pod's slice unit.
cri() { grpcurl -plaintext -unix -max-time 120 -d "$2" /run/berth/berth.sock "runtime.v1.RuntimeService/$1"; }
cri UpdatePodSandboxResources "{\"pod_sandbox_id\": \"$pod\", \"resources\": { \"memory_limit_in_bytes\": 209715200, \"cpu_period\": 100000, \"cpu_quota\": 50000 }}" \
  >/dev/null || fail "UpdatePodSandboxResources"
[ "$(systemctl show -p MemoryMax --value "$slice")" = 209715200 ] \
  || fail "after UpdatePodSandboxResources the slice's MemoryMax is '$(systemctl show -p MemoryMax --value "$slice")'"
[ "$(cat "$sliced/memory.max")" = 209715200 ] || fail "the slice's memory.max is '$(cat "$sliced/memory.max")'"
[ "$(cat "$sliced/cpu.max")" = "50000 100000" ] || fail "the slice's cpu.max is '$(cat "$sliced/cpu.max")'"
say "UpdatePodSandboxResources: $slice has MemoryMax 209715200 and cpu.max '50000 100000'"

# 6. RemovePodSandbox: the infra's scope and the pod's slice are stopped; no unit and
#    no cgroup of the pod is left.
crictl rmp -f "$pod" >/dev/null || fail "crictl rmp"
infra=berth-$pod.scope
[ "$(systemctl show -p ActiveState --value "$infra")" = inactive ] || fail "$infra is still $(systemctl show -p ActiveState --value "$infra")"
wait_for 20 sh -c "[ \"\$(systemctl show -p ActiveState --value $slice)\" = inactive ]" \
  || fail "$slice is still $(systemctl show -p ActiveState --value "$slice") after RemovePodSandbox"
[ ! -d "$sliced" ] || fail "the pod slice's cgroup $sliced outlived the pod"
say "RemovePodSandbox stopped $infra and $slice"

# 7. A path as cgroup parent under the systemd driver: InvalidArgument, nothing made.
before=$(crictl pods -q | wc -l)
if out=$(crictl runp "$(pod_json sdpath '"cgroup_parent": "/vmlane/podpath"')" 2>&1); then
  crictl rmp -f "$out" >/dev/null 2>&1 || true
  fail "a pod with cgroup parent /vmlane/podpath ran under the systemd driver"
fi
grep -q 'InvalidArgument' <<<"$out" || fail "not InvalidArgument: $out"
grep -q 'podpath' <<<"$out" || fail "the error does not name the parent: $out"
[ "$(crictl pods -q | wc -l)" = "$before" ] || fail "a sandbox was left behind: $(crictl pods)"
[ ! -e /sys/fs/cgroup/vmlane/podpath ] || fail "a cgroup /vmlane/podpath was made"
say "a path as cgroup parent: refused ($out)"

# 8. UpdatePodSandboxResources of the pod made under the cgroupfs driver: its path is
#    no slice name; InvalidArgument, and systemd is not asked (it said "Unit name
#    /vmlane-cgfs is not valid", an Internal error, before the check came first).
if out=$(cri UpdatePodSandboxResources "{\"pod_sandbox_id\": \"$cgfs\", \"resources\": { \"memory_limit_in_bytes\": 209715200 }}" 2>&1); then
  fail "UpdatePodSandboxResources of a pod whose cgroup parent is a path succeeded"
fi
grep -q 'InvalidArgument' <<<"$out" || fail "not InvalidArgument: $out"
grep -q 'vmlane-cgfs' <<<"$out" || fail "the error does not name the parent: $out"
say "UpdatePodSandboxResources with a path as cgroup parent: refused ($(tr '\n' ' ' <<<"$out"))"
