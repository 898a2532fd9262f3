#!/bin/bash
# vm-lane: full
# kubelet v1.37.2 with `cgroupDriver: systemd` (as kubeadm configures it) and berthd
# with cgroup_driver = "systemd": kubelet makes its kubepods*.slice units over D-Bus,
# berthd runs the static pod's container as the transient unit berth-<id>.scope inside
# the pod's slice with the requested limits (memory.max 83886080, cpu.max
# "5000 100000", also as the unit's MemoryMax), and a `systemctl daemon-reload` leaves
# them so. Removing the manifest removes the pod, its scope and its slice.
# vm-lane: timeout 780
. /mnt/berth/vm/lib.sh
. "$(dirname "$0")/lib-kubelet.sh"
conf=/etc/berth/config.toml
cp "$conf" "$TEST_TMP/config.toml.orig"
on_exit "cp $TEST_TMP/config.toml.orig $conf; systemctl restart berthd"
sed -i 's/^cgroup_driver = .*/cgroup_driver = "systemd"/' "$conf"
grep -q '^cgroup_driver = "systemd"' "$conf" || echo 'cgroup_driver = "systemd"' >> "$conf"
systemctl restart berthd
wait_for 30 crictl info >/dev/null 2>&1 || fail "berthd did not come back with the systemd driver"
# kubelet's QoS slices outlive kubelet (as on a real node); gone at exit (after kubelet).
on_exit 'systemctl stop kubepods.slice'
static_pod_running() {
  unit=berth-$ctr.scope
  case "$cg" in
    /sys/fs/cgroup/kubepods.slice/kubepods-pod*.slice/"$unit") ;;
    *) fail "the container's cgroup $cg is not $unit in a kubepods-pod<uid>.slice" ;;
  esac
  slice=$(systemctl show -p Slice --value "$unit")
  [ "$(systemctl show -p ActiveState --value "$unit")" = active ] || fail "$unit is not active"
  [ "$(systemctl show -p ActiveState --value "$slice")" = active ] || fail "the pod's slice $slice is not active"
  [ "$(systemctl show -p MemoryMax --value "$unit")" = 83886080 ] \
    || fail "$unit's MemoryMax is '$(systemctl show -p MemoryMax --value "$unit")'"
  systemctl daemon-reload
  [ "$(cat "$cg/memory.max")" = 83886080 ] || fail "after daemon-reload memory.max '$(cat "$cg/memory.max")'"
  [ "$(cat "$cg/cpu.max")" = "5000 100000" ] || fail "after daemon-reload cpu.max '$(cat "$cg/cpu.max")'"
  say "$unit in $slice: MemoryMax 83886080, cpu.max '5000 100000', kept over a daemon-reload"
}
kubelet_static_pod systemd
wait_for 60 sh -c "[ \"\$(systemctl show -p LoadState --value $unit)\" = not-found ]" \
  || fail "$unit is still known after the pod went"
wait_for 60 sh -c "[ \"\$(systemctl show -p ActiveState --value $slice)\" = inactive ]" \
  || fail "the pod's slice $slice is still $(systemctl show -p ActiveState --value "$slice") after the pod went"
say "kubelet with the systemd driver ran the static pod in $slice with its limits and removed it"
