#!/bin/bash
# The systemd cgroup driver for real: with cgroup_driver = "systemd", a container is the
# transient unit berth-<id>.scope in its pod's slice, started over D-Bus with the seed's
# limits as unit properties (memory.max 80 MB, cpu.max "5000 100000"); a
# `systemctl daemon-reload` leaves them as requested (limits written only to the cgroup
# files, behind systemd's back, are reset to "max" by it: the classic runc/containerd
# bug); UpdateContainerResources reaches the unit (systemctl show -p MemoryMax) and
# survives a reload too; RemoveContainer leaves no unit behind; Status (verbose)
# reports the systemd driver.
# vm-lane: timeout 600
. /mnt/berth/vm/lib.sh
crictl pull "$BUSYBOX" >/dev/null

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
