# kubelet running one static pod on the guest node (sourced by 30-kubelet.sh and
# 31-kubelet-systemd.sh; not a test itself: run-guest.sh runs only NN-*.sh).
#
# kubelet_static_pod DRIVER: kubelet v1.37.2 as shipped (no failCgroupV1 override),
# with `cgroupDriver: DRIVER`, runs a static pod whose container asks for 80 Mi of memory
# and 50 m of cpu (the seed's 5 %); sets $ctr (the container's id) and $cg (its cgroup
# directory) while the pod runs, and calls `static_pod_running` (defined by the caller)
# to check it. Then the manifest is removed and the pod must go.
kubelet_static_pod() {
  local driver=$1
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
cgroupDriver: $driver
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
  wait_for 420 _kubelet_pod_running || { _klog; crictl ps -a; fail "the static pod's container is not running after 420 s"; }
  ctr=$(crictl ps -q --name '^main$' --label io.kubernetes.pod.name=limits-vmnode --state running | head -n1)
  cg=$(ctr_cgroup "$ctr")
  say "kubelet's container cgroup: $cg"
  [ "$(cat "$cg/memory.max")" = 83886080 ] || fail "memory.max '$(cat "$cg/memory.max")'"
  [ "$(cat "$cg/cpu.max")" = "5000 100000" ] || fail "cpu.max '$(cat "$cg/cpu.max")'"
  static_pod_running
  rm "$d/manifests/limits.yaml"
  wait_for 240 _kubelet_pod_gone || { _klog; fail "the pod was not removed after its manifest was"; }
}
_klog() { echo "--- kubelet log (tail) ---"; tail -n 60 "$d/kubelet.log"; }
_kubelet_pod_running() {
  crictl ps -q --name '^main$' --label io.kubernetes.pod.name=limits-vmnode --state running | grep -q .
}
_kubelet_pod_gone() { ! crictl pods -q --label io.kubernetes.pod.name=limits-vmnode | grep -q .; }
