#!/usr/bin/env bash
# Runs Kubernetes' node e2e conformance suite (test/e2e_node, `[NodeConformance]`) against
# berthd, the way Kubernetes' own `make test-e2e-node` (run_local.go) runs it against
# containerd or CRI-O: e2e_node.test starts etcd and an API server in-process, then a
# kubelet (the cached v1.37.2 one) whose runtime is berthd, then runs the specs with
# ginkgo. Results and logs land in $REPORT (default /var/tmp/berth-node-e2e/<time>).
#
#   integration/scripts/build-node-e2e.sh          # e2e_node.test, ginkgo, agnhost (cached)
#   integration/scripts/build-kubelet.sh           # kubelet v1.37.2 (cached)
#   cargo build --workspace --bins                 # berthd, berth-monitor, berth-node-e2e-images
#   integration/scripts/node-e2e.sh                # the conformance run (docs/conformance.md)
#   integration/scripts/node-e2e.sh --focus 'should have their auto-restart back-off timer' --nodes 1
#   integration/scripts/node-e2e.sh --runtime containerd   # the same specs on containerd 2.x
#     (the same locally built images, pulled by containerd through the same mirrors)
#
# Options: --focus RE (default '\[NodeConformance\]'), --skip RE (added to the default
# skips below), --nodes N (ginkgo processes, default 4), --runtime berth|containerd,
# --timeout D (ginkgo's, default 3h), --dry-run (list the specs only).
#
# Isolation: the whole run happens in a network namespace of its own (unshare --net) with
# only loopback, and a mount namespace of its own (slave to the host's; /var/lib/kubelet is
# a directory below $DIR there), so the suite's fixed ports (6443, 10248, 10250, 10255) cannot clash with
# anything else on the machine (privileged_kubelet.rs, local-cluster.sh), and nothing it
# starts, pods included, can reach any address outside it. Images come from a local
# registry in that namespace (berth-node-e2e-images pushes them under their upstream names;
# berthd mirrors registry.k8s.io and docker.io to it). All state is below $DIR; kubelet's
# cgroupRoot is /berth-node-e2e. The script removes everything on exit, even on failure.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS="${BERTH_TOOLS_DIR:-/var/cache/berth/tools}/bin"
BERTH_BIN="${BERTH_BIN_DIR:-$REPO/target/debug}"
KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"
DIR="${BERTH_NODE_E2E_DIR:-/var/lib/berth-node-e2e}"
# berthd's state_dir: short, because the monitors' sockets below it must fit in 108 bytes.
RUN="${BERTH_NODE_E2E_RUN:-/run/berthe2e}"
REPORT="${BERTH_NODE_E2E_REPORT:-/var/tmp/berth-node-e2e/$(date -u +%Y%m%dT%H%M%SZ)}"
NODE=berth-node-e2e       # node name
NODE_IP=192.0.2.1         # node address: the API server proxies to kubelet only on a non-loopback one
POD_CIDR=10.100.0.0/24    # the suite's default kubelet podCIDR
CGROUP_ROOT=/berth-node-e2e
REGISTRY_PORT=5000
BRIDGE=berthe2e0

FOCUS='\[NodeConformance\]'
# Skipped by Kubernetes' own node conformance job too (and far too long for 2 cores).
SKIP='\[Flaky\]|\[Slow\]|\[Serial\]|\[Disruptive\]'
# Skipped here, each for the reason given beside it and in docs/conformance.md (a
# spec that merely fails is not skipped: it is explained there instead).
# Nothing is skipped for this host today: the 7 `Device Plugin Failures` specs, skipped
# until kubelet's fixed device-plugin directory was made private to the run (below), run.
SKIP_HOST=()
NODES=4
TIMEOUT=3h
RUNTIME=berth
DRY_RUN=
ORIG_ARGS=("$@")

while [ $# -gt 0 ]; do
  case "$1" in
    --focus) FOCUS="$2"; shift 2 ;;
    --skip) SKIP="$SKIP|$2"; shift 2 ;;
    --nodes) NODES="$2"; shift 2 ;;
    --runtime) RUNTIME="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --timeout) TIMEOUT="$2"; shift 2 ;;
    *) echo "node-e2e: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
for s in "${SKIP_HOST[@]+"${SKIP_HOST[@]}"}"; do SKIP="$SKIP|$s"; done

log() { echo "node-e2e: $*"; }
die() { echo "node-e2e: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root"
E2E="$TOOLS/e2e_node.test-$KUBE_VERSION"
KUBELET="$TOOLS/kubelet-$KUBE_VERSION"
[ -x "$E2E" ] || die "$E2E missing: integration/scripts/build-node-e2e.sh"
[ -x "$KUBELET" ] || die "$KUBELET missing: integration/scripts/build-kubelet.sh"
GINKGO="$(ls "$TOOLS"/ginkgo-v* 2>/dev/null | sort -V | tail -1)"
AGNHOST="$(ls "$TOOLS"/agnhost-[0-9]* 2>/dev/null | sort -V | tail -1)"
[ -x "$GINKGO" ] && [ -x "$AGNHOST" ] || die "ginkgo/agnhost missing: integration/scripts/build-node-e2e.sh"
# agnhost's TLS key pair (the image's /localhost.crt and /localhost.key), from the
# kubernetes module build-node-e2e.sh downloaded.
PORTER="$(go env GOMODCACHE 2>/dev/null)/k8s.io/kubernetes@$KUBE_VERSION/test/images/agnhost/porter"
[ -f "$PORTER/localhost.key" ] || die "$PORTER missing: integration/scripts/build-node-e2e.sh"
case "$RUNTIME" in
  berth) for b in berthd berth-monitor berth-runtime berth-node-e2e-images berth-nmeter berth-nnp; do
           [ -x "$BERTH_BIN/$b" ] || die "$BERTH_BIN/$b missing: cargo build --workspace --bins"
         done ;;
  containerd) [ -x "$TOOLS/containerd2/containerd" ] || die "$TOOLS/containerd2 missing: integration/scripts/build-containerd2.sh"
              for b in berth-node-e2e-images berth-nmeter berth-nnp; do [ -x "$BERTH_BIN/$b" ] || die "$BERTH_BIN/$b missing: cargo build --workspace --bins"; done ;;
  *) die "--runtime berth|containerd" ;;
esac

# ---------------------------------------------------------------- our own network namespace
if [ -z "${BERTH_NODE_E2E_NETNS:-}" ]; then
  [ -e "$DIR" ] && die "$DIR exists: another run, or a crashed one (unmount below it, then remove it)"
  export BERTH_NODE_E2E_NETNS=1 BERTH_NODE_E2E_REPORT="$REPORT"
  # /var/lib/kubelet is replaced by a directory of ours inside the run (below); remember whether the
  # host had that directory, so that a directory made only as the mount point goes again.
  [ -e /var/lib/kubelet ] || export BERTH_NODE_E2E_MADE_VLK=1
  # A mount namespace of our own as well, slave to the host's: host mounts still reach
  # the run, and nothing the run mounts (kubelet's volumes, berthd's rootfs) reaches the
  # host — it all goes when the namespace's last process exits.
  exec unshare --net --mount --propagation slave --fork -- "$0" "${ORIG_ARGS[@]}"
fi
ip link set lo up
# kubelet keeps two things in /var/lib/kubelet whatever its --root-dir (ours is below
# $DIR): the serving certificate the suite's --cert-dir puts in /var/lib/kubelet/pki, and
# the device-plugin socket, fixed at /var/lib/kubelet/device-plugins/kubelet.sock. With the
# host's directory the run would write there, and the `Device Plugin Failures` specs' fake
# plugins would reach whichever kubelet on the machine (local-cluster.sh,
# privileged_kubelet.rs) bound that socket last. In our mount namespace /var/lib/kubelet
# is a directory below $DIR instead.
mkdir -p /var/lib/kubelet "$DIR/var-lib-kubelet"
mount --bind "$DIR/var-lib-kubelet" /var/lib/kubelet
# The in-process API server picks its advertise address from the default route, and it
# refuses to proxy to a node on a loopback address (/configz, logs): give the namespace a
# node address and a default route that lead nowhere — a bridge without ports (packets
# sent to it are dropped) with a TEST-NET-1 address — so nothing here reaches a real address.
ip link add e2e-null type bridge
ip addr add "$NODE_IP/24" dev e2e-null
ip link set e2e-null up
ip route add default dev e2e-null
MYNET="$(readlink /proc/self/ns/net)"

mkdir -p "$DIR"/{logs,bin,usrbin,work,registry,certs.d,berth,kubelet} "$REPORT"
START=$(date +%s)

# Processes this run started: in our network namespace, with $DIR on their command line.
ours() {
  local p
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/ns/net" 2>/dev/null)" = "$MYNET" ] || continue
    [ "${p#/proc/}" = "$$" ] && continue
    tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -q -- "$DIR" && echo "${p#/proc/}"
  done
  return 0
}

stop_pid() { # pid : TERM, KILL after 15 s
  local pid="$1" i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 150); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? p h m
  set +e
  export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  log "cleaning up"
  # kubelet and the suite's services first, so nothing restarts pods.
  for p in $(ours); do
    case "$(tr '\0' ' ' < /proc/$p/cmdline 2>/dev/null)" in
      *kubelet*|*run-services-mode*|*e2e_node.test*|*ginkgo*) stop_pid "$p" ;;
    esac
  done
  if [ -S "$DIR/runtime.sock" ] && [ -x "$TOOLS/crictl" ]; then
    local crictl=("$TOOLS/crictl" --runtime-endpoint "unix://$DIR/runtime.sock" --timeout 30s)
    for p in $("${crictl[@]}" pods -q 2>/dev/null); do
      "${crictl[@]}" stopp "$p" >/dev/null 2>&1
      "${crictl[@]}" rmp -f "$p" >/dev/null 2>&1
    done
    if [ "$RUNTIME" = containerd ]; then
      for m in $("${crictl[@]}" images -q 2>/dev/null); do "${crictl[@]}" rmi "$m" >/dev/null 2>&1; done
    fi
  fi
  for p in $(ours); do stop_pid "$p"; done
  [ -d "$DIR/logs" ] && cp -r "$DIR/logs" "$REPORT/" 2>/dev/null
  # Anything still mounted below our directories (the runtime's teardown should leave none).
  for d in /var/lib/kubelet "$DIR" "$RUN"; do
    findmnt -R -n -l -o TARGET --target "$d" 2>/dev/null | grep -F -- "$d" | sort -r | while read -r m; do
      umount -l "$m" && log "unmounted $m"  # kubelet's root is a bind of itself
    done
  done
  for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    [ -d "$h${CGROUP_ROOT#/}" ] && find "$h${CGROUP_ROOT#/}" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  umount -l /var/lib/kubelet 2>/dev/null
  [ -n "${BERTH_NODE_E2E_MADE_VLK:-}" ] && rmdir /var/lib/kubelet 2>/dev/null
  if findmnt -R -n -l -o TARGET | grep -q -e "^$DIR" -e "^$RUN"; then
    log "mounts remain below $DIR or $RUN: not deleting them"
  else
    rm -rf "$DIR" "$RUN"
  fi
  log "report and logs: $REPORT (took $(( $(date +%s) - START )) s)"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- PATH without systemd
# The suite runs kubelet through systemd-run whenever that binary is on PATH (this host
# has it installed but does not run systemd), and reads logs with journalctl: hide both.
for f in /usr/bin/*; do
  case "${f##*/}" in systemd-run|journalctl) continue ;; esac
  ln -s "$f" "$DIR/usrbin/${f##*/}"
done
export PATH="$DIR/bin:$DIR/usrbin:/usr/local/sbin:/usr/local/bin:/usr/sbin"
ln -s "$KUBELET" "$DIR/bin/kubelet"     # the suite looks for kubelet beside its own binary
ln -s "$E2E" "$DIR/bin/e2e_node.test"   # ginkgo runs a precompiled suite only if named *.test

# ---------------------------------------------------------------- registry and images
cat > "$DIR/registry/config.yml" <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $DIR/registry/storage}}
http: {addr: "127.0.0.1:$REGISTRY_PORT"}
EOF
/usr/bin/docker-registry serve "$DIR/registry/config.yml" > "$DIR/logs/registry.log" 2>&1 < /dev/null &
for i in $(seq 100); do curl -sf "http://127.0.0.1:$REGISTRY_PORT/v2/" >/dev/null && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$REGISTRY_PORT/v2/" >/dev/null || die "registry did not start"
if [ -z "$DRY_RUN" ]; then
  log "building and pushing the suite's images"
  "$BERTH_BIN/berth-node-e2e-images" "http://127.0.0.1:$REGISTRY_PORT" "$AGNHOST" "$PORTER" > "$DIR/logs/images.log" 2>&1 \
    || { cat "$DIR/logs/images.log"; die "pushing images failed"; }
fi
for h in docker.io registry.k8s.io gcr.io k8s.gcr.io; do
  mkdir -p "$DIR/certs.d/$h"
  echo "server = \"http://127.0.0.1:$REGISTRY_PORT\"" > "$DIR/certs.d/$h/hosts.toml"
done

# ---------------------------------------------------------------- the runtime
case "$RUNTIME" in
berth)
  cat > "$DIR/berth/config.toml" <<EOF
root_dir = "$DIR/berth/root"
state_dir = "$RUN"

[grpc]
socket = "$DIR/runtime.sock"

[cni]
conf_dir = "$DIR/berth/net.d"
builtin_default = true
builtin_mode = "native"
builtin_bridge = "$BRIDGE"
builtin_subnet = "$POD_CIDR"

[registry]
config_path = "$DIR/certs.d"

[stream]
address = "127.0.0.1"

# The RuntimeClass handler the suite's PodOverhead spec expects preconfigured
# (e2eruntimeclass.PreconfiguredRuntimeClassHandler), as Kubernetes' job configures
# containerd: runc.
[runtime_handlers.test-handler]
runtime_path = "/usr/sbin/runc"
EOF
  "$BERTH_BIN/berthd" --config "$DIR/berth/config.toml" > "$DIR/logs/berthd.log" 2>&1 < /dev/null &
  echo $! > "$DIR/runtime.pid"
  RUNTIME_PROCESS=berthd
  ;;
containerd)
  # containerd 2.x + runc as integration/src/peer.rs runs it for the differential test:
  # the CNI bridge plugin on its own bridge with the same pod CIDR, the same mirrors
  # (containerd wants a [host] table), the same pause image.
  mkdir -p "$DIR/containerd/net.d"
  for h in docker.io registry.k8s.io gcr.io k8s.gcr.io; do
    printf 'server = "http://127.0.0.1:%s"\n\n[host."http://127.0.0.1:%s"]\n  capabilities = ["pull", "resolve"]\n' \
      "$REGISTRY_PORT" "$REGISTRY_PORT" > "$DIR/certs.d/$h/hosts.toml"
  done
  # Host-local's leases below $DIR (its default, /var/lib/cni/networks, is the host's).
  sed -e "s|@NAME@|node-e2e|" -e "s|@BRIDGE@|$BRIDGE|" -e "s|@IPAM@|$DIR/containerd/ipam|" \
    -e "s|@SUBNET@|$POD_CIDR|" -e "s|@GATEWAY@|${POD_CIDR%.0/24}.1|" \
    "$REPO/integration/peer/bridge.conflist" > "$DIR/containerd/net.d/10-node-e2e.conflist"
  # The same containerd 2 configuration as integration/src/peer.rs's (one template).
  sed -e "s|@ROOT@|$DIR/containerd/root|" -e "s|@STATE@|$RUN/containerd|" \
    -e "s|@SOCKET@|$DIR/runtime.sock|" -e "s|@PAUSE@|registry.k8s.io/pause:3.10.2|" \
    -e "s|@CERTS@|$DIR/certs.d|" -e "s|@OCI@|runc|" -e "s|@CNI@|$DIR/containerd/net.d|" \
    "$REPO/integration/peer/containerd2.toml" > "$DIR/containerd/config.toml"
  # The PodOverhead spec runs its pod with the runtime handler `test-handler` (on runc).
  cat >> "$DIR/containerd/config.toml" <<'EOF'

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.test-handler]
  runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.test-handler.options]
    SystemdCgroup = false
    BinaryName = "runc"
EOF
  # containerd finds its shim on PATH: this build's shim, not Debian's.
  PATH="$TOOLS/containerd2:$PATH" "$TOOLS/containerd2/containerd" --config "$DIR/containerd/config.toml" \
    > "$DIR/logs/containerd.log" 2>&1 < /dev/null &
  echo $! > "$DIR/runtime.pid"
  RUNTIME_PROCESS=containerd
  ;;
esac
for i in $(seq 150); do [ -S "$DIR/runtime.sock" ] && break; sleep 0.2; done
[ -S "$DIR/runtime.sock" ] || { tail -20 "$DIR/logs/berthd.log"; die "$RUNTIME did not start"; }

# ---------------------------------------------------------------- kubelet's base config
for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do  # kubelet wants cgroupRoot in every hierarchy
  [ -f "$h/cgroup.procs" ] || continue
  mkdir -p "$h${CGROUP_ROOT#/}"
  for k in cpuset.cpus cpuset.mems; do
    [ -f "$h$k" ] && cat "$h$k" > "$h${CGROUP_ROOT#/}/$k"
  done
done
printf 'nameserver 127.0.0.1\n' > "$DIR/resolv.conf"   # pods never see the host's resolver
# The suite's own default (test/e2e_node/jenkins/default-kubelet-config.yaml) plus what
# this host needs; the suite then sets auth, ports, static pod path on top.
cat > "$DIR/kubelet-base.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
healthzBindAddress: 127.0.0.1
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
cgroupsPerQOS: true
# kubelet >= 1.35 refuses cgroup v1 unless this is false; nothing changes on cgroup v2.
failCgroupV1: false
failSwapOn: false
podCIDR: $POD_CIDR
resolvConf: $DIR/resolv.conf
volumeStatsAggPeriod: 10s
serializeImagePulls: false
fileCheckFrequency: 10s
evictionPressureTransitionPeriod: 30s
# The suite's "2%" disk thresholds, as absolute floors: this run shares its disk with
# everything else on the machine, and at 2% a busy shared disk put the node under
# DiskPressure mid-run (every later pod rejected as Evicted).
evictionHard: {memory.available: "250Mi", nodefs.available: "512Mi", imagefs.available: "512Mi", nodefs.inodesFree: "2%"}
evictionMinimumReclaim: {nodefs.available: "100Mi", nodefs.inodesFree: "1%"}
EOF
if [ -n "${BERTH_NODE_E2E_CRI_STATS:-}" ]; then
  # kubelet's built-in cAdvisor tells a cgroup's pod and container only for runtimes it
  # has a handler for (containerd, CRI-O): on berthd its /metrics/cadvisor has no
  # container series. With this gate kubelet takes container stats and metrics from the
  # runtime over CRI instead (docs/metrics.md). Off by default, as in Kubernetes' job.
  printf 'featureGates: {PodAndContainerStatsFromCRI: true}\n' >> "$DIR/kubelet-base.yaml"
fi
# Flags win over the config file and over what the suite sets: kubelet's own root, and no
# kubelet/system/runtime cgroups (the suite would move every process of the host's root
# cgroup into /system, and kubelet itself into /kubelet).
KUBELET_FLAGS="--root-dir=$DIR/kubelet --node-ip=$NODE_IP --system-cgroups= --kubelet-cgroups= --runtime-cgroups= --v=2"

# ---------------------------------------------------------------- the suite
cd "$DIR/work"
log "running $(basename "$E2E") with $(basename "$GINKGO"): focus=$FOCUS nodes=$NODES runtime=$RUNTIME; report in $REPORT"
ginkgo_args=(--nodes="$NODES" --focus="$FOCUS" --skip="$SKIP" --timeout="$TIMEOUT" --no-color
  --junit-report=junit.xml --output-dir="$REPORT" --poll-progress-after=10m)
[ -n "$DRY_RUN" ] && ginkgo_args+=(--dry-run)
set +e
# In the background with `wait`: bash runs the INT/TERM trap (and so the cleanup) only once
# a foreground pipeline ends, and processes the suite started (kubelet) would keep this
# one's pipe open after ginkgo is gone. ginkgo's own exit code goes through a file.
{ "$GINKGO" "${ginkgo_args[@]}" "$DIR/bin/e2e_node.test" -- \
  --container-runtime-endpoint="unix://$DIR/runtime.sock" \
  --image-service-endpoint="unix://$DIR/runtime.sock" \
  --container-runtime-process-name="$RUNTIME_PROCESS" --container-runtime-pid-file="$DIR/runtime.pid" \
  --node-name="$NODE" \
  --kubelet-config-file="$DIR/kubelet-base.yaml" --kubelet-flags="$KUBELET_FLAGS" \
  --prepull-images=false --report-dir="$REPORT" --v=2
  echo $? > "$DIR/ginkgo.rc"
} 2>&1 | tee "$REPORT/ginkgo.log" | grep --line-buffered -E '^(•|Ran |PASS|FAIL|SUCCESS|\[FAIL\]|  \[FAILED\]|Summarizing)|^\S.*\[(FAILED|PANICKED)\]' &
wait $!
rc=$(cat "$DIR/ginkgo.rc" 2>/dev/null || echo 1)
set -e
grep -E '^Ran [0-9]+ of|^(SUCCESS|FAIL)!' "$REPORT/ginkgo.log" | tail -2
exit "$rc"
