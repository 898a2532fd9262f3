#!/bin/bash
# vm-lane: full
# kubelet v1.37.2 on a cgroup v2 node, as shipped (no failCgroupV1 override), with the
# cgroupfs driver and berthd: a static pod with a 80 Mi memory limit and 50 m cpu
# (the seed's 5 %) runs, and its container's cgroup — which kubelet places in its QoS
# hierarchy — has memory.max 83886080 and cpu.max "5000 100000". Removing the manifest
# removes the pod.
# vm-lane: timeout 420
. /mnt/berth/vm/lib.sh
d=$TEST_TMP/kubelet
mkdir -p "$d/manifests" "$d/root" "$d/pod-logs" "$d/volume-plugins"
cat > "$d/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: $d/manifests
fileCheckFrequency: 2s
syncFrequency: 5s
address: 127.0.0.1
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
containerRuntimeEndpoint: unix:///run/berth/berth.sock
imageServiceEndpoint: unix:///run/berth/berth.sock
cgroupDriver: cgroupfs
cgroupsPerQOS: true
enforceNodeAllocatable: []
failSwapOn: false
podLogsDir: $d/pod-logs
volumePluginDir: $d/volume-plugins
resolvConf: /etc/resolv.conf
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
YAML
# kubelet in a transient unit of its own, so stopping it takes all its processes.
systemd-run --unit=berth-vm-kubelet --property=Type=exec --property=KillMode=control-group \
  --property=StandardOutput=file:"$d/kubelet.log" --property=StandardError=file:"$d/kubelet.log" \
  /usr/local/bin/kubelet --config="$d/kubelet.yaml" --root-dir="$d/root" --hostname-override=vmnode --v=2 \
  || fail "starting kubelet"
on_exit 'systemctl stop berth-vm-kubelet; systemctl reset-failed berth-vm-kubelet'
# Pods left by kubelet go before the unit stops (on_exit runs in reverse order).
klog() { echo "--- kubelet log (tail) ---"; tail -n 60 "$d/kubelet.log"; }
cat > "$d/manifests/.limits.yaml" <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: limits
  namespace: default
spec:
  containers:
  - name: main
    image: $BUSYBOX
    command: ["sleep", "3600"]
    resources:
      limits: { memory: 80Mi, cpu: 50m }
      requests: { memory: 80Mi, cpu: 50m }
YAML
mv "$d/manifests/.limits.yaml" "$d/manifests/limits.yaml"
running() { crictl ps -q --name '^main$' --label io.kubernetes.pod.name=limits-vmnode --state running | grep -q .; }
wait_for 240 running || { klog; crictl ps -a; fail "the static pod's container is not running after 240 s"; }
ctr=$(crictl ps -q --name '^main$' --label io.kubernetes.pod.name=limits-vmnode --state running | head -n1)
cg=$(ctr_cgroup "$ctr")
say "kubelet's container cgroup: $cg"
case "$cg" in /sys/fs/cgroup/kubepods*) ;; *) fail "the container is not in kubelet's kubepods hierarchy: $cg" ;; esac
[ "$(cat "$cg/memory.max")" = 83886080 ] || fail "memory.max '$(cat "$cg/memory.max")'"
[ "$(cat "$cg/cpu.max")" = "5000 100000" ] || fail "cpu.max '$(cat "$cg/cpu.max")'"
rm "$d/manifests/limits.yaml"
gone() { ! crictl pods -q --label io.kubernetes.pod.name=limits-vmnode | grep -q .; }
wait_for 120 gone || { klog; fail "the pod was not removed after its manifest was"; }
say "kubelet ran the static pod with its limits in cgroup v2 and removed it"
