#!/bin/bash
# vm-lane: full
# kubelet v1.37.2 on a cgroup v2 node, as shipped (no failCgroupV1 override), with the
# cgroupfs driver and berthd: a static pod with a 80 Mi memory limit and 50 m cpu
# (the seed's 5 %) runs, and its container's cgroup — which kubelet places in its QoS
# hierarchy — has memory.max 83886080 and cpu.max "5000 100000". Removing the manifest
# removes the pod. (The systemd driver: 31-kubelet-systemd.sh.)
# vm-lane: timeout 720
. /mnt/berth/vm/lib.sh
. "$(dirname "$0")/lib-kubelet.sh"
static_pod_running() {
  case "$cg" in /sys/fs/cgroup/kubepods/*) ;; *) fail "the container is not in kubelet's kubepods hierarchy: $cg" ;; esac
}
kubelet_static_pod cgroupfs
say "kubelet ran the static pod with its limits in cgroup v2 and removed it"
