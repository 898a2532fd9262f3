#!/bin/bash
# On cgroup v2 the device rules are an eBPF program; when it cannot be loaded the
# container must not run without them (it could open any device node it makes): with
# bpf(2) refused to berthd's service (a seccomp filter in a drop-in, EPERM — as on a
# kernel without CONFIG_CGROUP_BPF or a node that denies BPF), creating a container
# fails with berthd's error naming the device rules and the opt-out, and no container
# is left running. (The program's effect when loaded: 10-cgroup-v2.sh.)
# vm-lane: timeout 240
. /mnt/berth/vm/lib.sh
dropin=/run/systemd/system/berthd.service.d/50-vmlane-no-bpf.conf
mkdir -p "${dropin%/*}"
on_exit "rm -f $dropin; systemctl daemon-reload; systemctl restart berthd"
printf '[Service]\nSystemCallFilter=~bpf\nSystemCallErrorNumber=EPERM\n' > "$dropin"
systemctl daemon-reload
systemctl restart berthd
wait_for 30 crictl info >/dev/null 2>&1 || fail "berthd did not come back with bpf(2) refused"
pod=$(run_pod nobpf)
f=$(ctr_json nodev "$BUSYBOX" '["sleep", "3600"]')
rc=0
out=$( { id=$(crictl create "$pod" "$f" "$TEST_TMP/podcfg-$pod") && crictl start "$id"; } 2>&1) || rc=$?
[ "$rc" -ne 0 ] || fail "the container was created and started without its device program: $out"
grep -q 'device rules could not be enforced' <<<"$out" || fail "the error does not name the device rules: $out"
grep -q 'allow_degraded_device_filter' <<<"$out" || fail "the error does not name the opt-out: $out"
if crictl ps -q --name '^nodev$' --state running | grep -q .; then fail "a container runs without its device program"; fi
say "without bpf(2): $(grep -o 'the device rules could not be enforced[^;]*' <<<"$out" | head -n1)"
