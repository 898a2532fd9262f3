#!/bin/bash
# The guest is the node the lane exists for: systemd as PID 1, pure cgroup v2 with the
# usual controllers, AppArmor enabled, berthd running as deploy/berthd.service in its
# own delegated cgroup, answering crictl, with images from the in-guest registry.
# vm-lane: timeout 120
. /mnt/berth/vm/lib.sh
[ "$(cat /proc/1/comm)" = systemd ] || fail "PID 1 is $(cat /proc/1/comm)"
[ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] || fail "/sys/fs/cgroup is not cgroup2"
for c in cpuset cpu io memory pids; do
  grep -qw "$c" /sys/fs/cgroup/cgroup.controllers || fail "no $c controller"
done
[ "$(cat /sys/module/apparmor/parameters/enabled)" = Y ] || fail "AppArmor is not enabled"
systemctl is-active --quiet berthd || fail "berthd.service is not active"
pid=$(systemctl show -p MainPID --value berthd)
grep -qx '0::/system.slice/berthd.service' "/proc/$pid/cgroup" || fail "berthd's cgroup: $(cat "/proc/$pid/cgroup")"
crictl info | grep -q '"RuntimeReady"' || fail "crictl info: $(crictl info)"
crictl pull "$BUSYBOX" >/dev/null || fail "pull from the in-guest registry"
crictl images | grep -q 'e2e-test-images/busybox' || fail "the pulled image is not listed"
say "systemd PID 1, cgroup2 ($(cat /sys/fs/cgroup/cgroup.controllers)), AppArmor on, berthd.service active, pull OK"
