#!/usr/bin/env bash
# A local one-node Kubernetes cluster whose container runtime is Berth, in the shape of
# Kubernetes' hack/local-up-cluster.sh: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kube-proxy (iptables mode), CoreDNS, a local image registry, berthd
# and a kubelet registered as node "127.0.0.1" — or, with `--runtime containerd`, the same
# node on containerd 2.x (for comparisons: same kubelet, images and pod network, the
# bridge CNI plugin on the node's pod CIDR). Everything listens on 127.0.0.1 (CoreDNS
# on the pod bridge's gateway address, which only pods of this node reach); nothing the
# script starts talks to any other address, and neither may pods: berthd's built-in network
# masquerades pod traffic to the host's routes (as a node's pod network does), so `up`
# first inserts a FORWARD rule that REJECTs everything from the pod network that is not
# for the pod network ("berth-cluster no egress"; a Service's traffic is already DNAT'd
# to a pod's address when it is forwarded), and `down` removes it. Run as root, after
# `cargo build --workspace --bins` and integration/scripts/build-kube.sh + build-kubelet.sh.
#
#   integration/scripts/local-cluster.sh up       # start (certificates made on first up)
#   integration/scripts/local-cluster.sh up --runtime containerd   # the node on containerd 2.x
#   integration/scripts/local-cluster.sh runtime berth|containerd  # move the (empty) node's
#                                                 # kubelet to the other runtime; both keep running
#   integration/scripts/local-cluster.sh status   # processes, node, pods
#   integration/scripts/local-cluster.sh images   # only the registry and its images (up does this)
#   integration/scripts/local-cluster.sh restart kubelet|berthd|containerd   # one node component
#   integration/scripts/local-cluster.sh down     # stop and remove everything it made
#   integration/scripts/local-cluster.sh leaks    # after down: print what is left, exit 1 if any
#   export KUBECONFIG=/var/lib/berth-cluster/pki/admin.kubeconfig; kubectl get nodes -o wide
#
# State lives in $BERTH_CLUSTER_DIR (default /var/lib/berth-cluster): certificates,
# kubeconfigs, logs (logs/<component>.log), pid files, etcd's data, berthd's root and
# state, kubelet's root. `down` removes all of it, the cgroup tree /berth-cluster, the
# pod bridge berthc0 and its masquerade rule, the no-egress rule, and the KUBE-* iptables
# chains that did not exist before `up` (kube-proxy's; `up` refuses to start when another
# kube-proxy's KUBE-SERVICES chain or nft table is there). `down` fails (after removing
# everything) when a mount or netns pin of berthd's (or containerd's) was left after every
# pod was removed.
#
# A second cluster beside the default one (CI's cluster-e2e runs one in the background):
# BERTH_CLUSTER_INSTANCE=N (1-9) moves every loopback port up by N*100 and gives the
# bridge (berthcN), pod network (10.(244+N).0.0/16), cgroup root (/berth-cluster-N) and
# iptables comments their own names; with its own BERTH_CLUSTER_DIR and BERTH_CLUSTER_RUN.
# Only one kube-proxy can program a host's iptables: BERTH_CLUSTER_KUBE_PROXY=0 starts
# none (no Services; `down` then touches no KUBE-* chain).
set -euo pipefail

DIR="${BERTH_CLUSTER_DIR:-/var/lib/berth-cluster}"
# berthd's state_dir: short, because container sockets below it must fit in 108 bytes.
RUN="${BERTH_CLUSTER_RUN:-/run/berthc}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS="${BERTH_TOOLS_DIR:-/var/cache/berth/tools}/bin"
# The bins cargo built last: CARGO_TARGET_DIR if set (relative to the current directory,
# as cargo reads it), else the repository's target/.
BERTH_BIN="${BERTH_BIN_DIR:-$(realpath -m "${CARGO_TARGET_DIR:-$REPO/target}")/debug}"
KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.7.0}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.14.7}"

INSTANCE="${BERTH_CLUSTER_INSTANCE:-0}"
[[ "$INSTANCE" =~ ^[0-9]$ ]] || { echo "local-cluster: BERTH_CLUSTER_INSTANCE must be 0-9" >&2; exit 2; }
OFF=$((INSTANCE * 100))
NAME=berth-cluster             # cgroup root, CNI network, iptables comments
[ "$INSTANCE" = 0 ] || NAME="berth-cluster-$INSTANCE"
WITH_KUBE_PROXY="${BERTH_CLUSTER_KUBE_PROXY:-1}"
NODE=127.0.0.1                 # node name = hostname override, as local-up-cluster.sh
# Fixed loopback ports (moved by the instance); override when another local control
# plane holds the defaults.
API_PORT="${BERTH_CLUSTER_API_PORT:-$((6443 + OFF))}"
ETCD_PORT="${BERTH_CLUSTER_ETCD_PORT:-$((2379 + OFF))}"
ETCD_PEER_PORT="${BERTH_CLUSTER_ETCD_PEER_PORT:-$((2380 + OFF))}"
REGISTRY_PORT=$((5055 + OFF))
KUBELET_PORT=$((10350 + OFF))  # not 10250: privileged_kubelet.rs may run alongside
KUBELET_HEALTHZ_PORT=$((10348 + OFF))
PROXY_METRICS_PORT=$((10249 + OFF))
PROXY_HEALTHZ_PORT=$((10256 + OFF))
KCM_PORT=$((10257 + OFF))
SCHEDULER_PORT=$((10259 + OFF))
COREDNS_HEALTH_PORT=$((18080 + OFF))
COREDNS_READY_PORT=$((18181 + OFF))
NET_B=$((244 + INSTANCE))      # second octet of the pod network
CLUSTER_CIDR=10.$NET_B.0.0/16  # kcm hands the node 10.$NET_B.0.0/24
NODE_CIDR=10.$NET_B.0.0/24
POD_GATEWAY=10.$NET_B.0.1      # the bridge's address: CoreDNS listens here
SERVICE_CIDR=10.0.0.0/24
SERVICE_IP=10.0.0.1
BRIDGE=berthc$INSTANCE
CGROUP_ROOT=/$NAME
# Pods reach only the pod network (and, through kube-proxy's DNAT, Services): never out.
EGRESS_RULE=(-s "$NODE_CIDR" ! -d "$NODE_CIDR" -m comment --comment "$NAME no egress" -j REJECT)
# containerd 2.x (integration/scripts/build-containerd2.sh), when the node runs on it.
CONTAINERD_DIR="$TOOLS/containerd2"
PAUSE_IMAGE=registry.k8s.io/pause:3.10.1   # pushed by berth-cluster-images
# Chains kubelet itself makes (any kubelet on the host, privileged_kubelet.rs's too):
# never deleted by `down`, as kube-proxy --cleanup never did.
KUBELET_CHAINS='^(KUBE-FIREWALL|KUBE-KUBELET-CANARY|KUBE-IPTABLES-HINT)$'
COMPONENTS=(registry etcd kube-apiserver kube-controller-manager kube-scheduler berthd containerd kubelet kube-proxy coredns)

log() { echo "local-cluster: $*"; }
die() { echo "local-cluster: $*" >&2; exit 1; }

bin() { # name -> path of the versioned binary
  local p="$TOOLS/$1"
  [ -x "$p" ] || die "$p missing: run integration/scripts/build-kube.sh and build-kubelet.sh"
  echo "$p"
}

kubectl() { "$TOOLS/kubectl-$KUBE_VERSION" --kubeconfig "$DIR/pki/admin.kubeconfig" "$@"; }

# ---------------------------------------------------------------- certificates

cert() { # name subject [san] : a key and a CA-signed certificate
  local name="$1" subj="$2" san="${3:-}" ext="$DIR/pki/$1.ext"
  openssl genrsa -out "$DIR/pki/$name.key" 2048 2>/dev/null
  openssl req -new -key "$DIR/pki/$name.key" -subj "$subj" -out "$DIR/pki/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [ -n "$san" ]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$san"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } > "$ext"
  openssl x509 -req -in "$DIR/pki/$name.csr" -CA "$DIR/pki/ca.crt" -CAkey "$DIR/pki/ca.key" \
    -CAcreateserial -days 365 -sha256 -extfile "$ext" -out "$DIR/pki/$name.crt" 2>/dev/null
  rm -f "$DIR/pki/$name.csr" "$ext"
}

kubeconfig() { # name user
  cat > "$DIR/pki/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: berth
  cluster:
    certificate-authority: $DIR/pki/ca.crt
    server: https://127.0.0.1:$API_PORT
users:
- name: $2
  user:
    client-certificate: $DIR/pki/$1.crt
    client-key: $DIR/pki/$1.key
contexts:
- name: berth
  context: {cluster: berth, user: $2}
current-context: berth
EOF
}

make_pki() {
  [ -f "$DIR/pki/admin.kubeconfig" ] && return
  mkdir -p "$DIR/pki"
  chmod 700 "$DIR/pki"
  openssl genrsa -out "$DIR/pki/ca.key" 2048 2>/dev/null
  openssl req -x509 -new -key "$DIR/pki/ca.key" -subj "/CN=berth-local-cluster-ca" -days 365 \
    -sha256 -out "$DIR/pki/ca.crt" 2>/dev/null
  cert apiserver "/CN=kube-apiserver" \
    "IP:127.0.0.1,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  cert admin "/O=system:masters/CN=admin"
  cert kubelet "/O=system:nodes/CN=system:node:$NODE"
  cert kubelet-serving "/CN=$NODE" "IP:127.0.0.1,DNS:localhost"
  cert kube-controller-manager "/CN=system:kube-controller-manager"
  cert kube-scheduler "/CN=system:kube-scheduler"
  cert kube-proxy "/CN=system:kube-proxy"
  cert coredns "/CN=system:coredns"
  openssl genrsa -out "$DIR/pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$DIR/pki/sa.key" -pubout -out "$DIR/pki/sa.pub" 2>/dev/null
  for c in admin kubelet kube-controller-manager kube-scheduler kube-proxy coredns; do
    kubeconfig "$c" "$c"
  done
}

# ---------------------------------------------------------------- processes

start() { # name command... : runs in its own session, output to logs/name.log
  local name="$1"; shift
  if running "$name"; then log "$name already running"; return; fi
  setsid "$@" >"$DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$DIR/pids/$name.pid"
}

pid_of() { cat "$DIR/pids/$1.pid" 2>/dev/null || true; }

running() { # name : the recorded pid is alive and still the process we started
  local pid; pid="$(pid_of "$1")"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "$DIR"
}

stop() { # name : SIGTERM, then SIGKILL after 15 s; only the pid we recorded
  local name="$1" pid i
  pid="$(pid_of "$name")"
  if running "$name"; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 150); do running "$name" || break; sleep 0.1; done
    if running "$name"; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; fi
  fi
  rm -f "$DIR/pids/$name.pid"
}

wait_for() { # what seconds command... : bounded by wall time, not by a count of tries
  local what="$1" secs="$2" end c; shift 2
  end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || die "$what not up after ${secs}s; see $DIR/logs/"
    sleep 0.2
  done
  # When `what` is one of ours, the answer must have come from the process we started,
  # not from someone else's server on the same port.
  for c in "${COMPONENTS[@]}"; do
    if [ "$c" = "$what" ] && ! running "$c"; then
      die "$what answered, but the process we started is gone (another server on its port?); see $DIR/logs/$what.log"
    fi
  done
  return 0
}

https_ok() { curl -sfk --max-time 2 "$@"; }

# ---------------------------------------------------------------- cgroups

make_cgroups() { # kubelet wants its cgroupRoot in every hierarchy (v1 cpuset needs cpus/mems)
  local h
  for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    [ -f "$h/cgroup.procs" ] || continue
    mkdir -p "$h${CGROUP_ROOT#/}"
    for k in cpuset.cpus cpuset.mems; do
      [ -f "$h$k" ] && cat "$h$k" > "$h${CGROUP_ROOT#/}/$k"
    done
  done
  return 0
}

remove_cgroups() { # deepest first; only below our own root
  local h
  for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    [ -d "$h${CGROUP_ROOT#/}" ] || continue
    find "$h${CGROUP_ROOT#/}" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

# ---------------------------------------------------------------- up

up_registry() { # the image registry, with every image the cluster runs (first time: minutes)
  local coredns="$1" h
  mkdir -p "$DIR"/{logs,pids,registry,certs.d}
  # The image registry (Debian's docker-registry), mirrored by berthd for every upstream.
  cat > "$DIR/registry/config.yml" <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $DIR/registry/storage}, delete: {enabled: true}}
http: {addr: "127.0.0.1:$REGISTRY_PORT"}
EOF
  start registry /usr/bin/docker-registry serve "$DIR/registry/config.yml"
  wait_for registry 20 curl -sf "http://127.0.0.1:$REGISTRY_PORT/v2/"
  # The marker names which set was pushed: busybox-only does not satisfy a later full `up`.
  local want="${BERTH_CLUSTER_IMAGES:-all}"
  [ "$want" = busybox ] || want=all
  if [ ! -f "$DIR/registry/pushed-$want" ] && [ ! -f "$DIR/registry/pushed-all" ]; then
    local only=()
    # BERTH_CLUSTER_IMAGES=busybox: only busybox and CoreDNS (seconds, not minutes).
    [ "$want" = busybox ] && only=(--busybox-only)
    if [ ${#only[@]} -gt 0 ]; then log "pushing busybox and coredns to the local registry"
    else log "pushing images (busybox, critest's, nginx, httpd, coredns) to the local registry"; fi
    "$BERTH_BIN/berth-cluster-images" "${only[@]}" "http://127.0.0.1:$REGISTRY_PORT" "$coredns" "$COREDNS_VERSION"
    touch "$DIR/registry/pushed-$want"
  fi
  for h in docker.io registry.k8s.io gcr.io k8s.gcr.io; do
    mkdir -p "$DIR/certs.d/$h"
    echo "server = \"http://127.0.0.1:$REGISTRY_PORT\"" > "$DIR/certs.d/$h/hosts.toml"
  done

}


runtime_of_node() { cat "$DIR/runtime" 2>/dev/null || echo berth; }

runtime_socket() { # berth|containerd
  case "$1" in
    berth) echo "$DIR/berth.sock" ;;
    containerd) echo "$DIR/containerd.sock" ;;
  esac
}

check_runtime() { # berth|containerd : its binaries are there
  local b
  case "$1" in
    berth)
      for b in berthd berth-monitor berth-runtime; do
        [ -x "$BERTH_BIN/$b" ] || die "$BERTH_BIN/$b missing: cargo build --workspace --bins"
      done ;;
    containerd)
      [ -x "$CONTAINERD_DIR/containerd" ] && [ -x "$CONTAINERD_DIR/containerd-shim-runc-v2" ] ||
        die "$CONTAINERD_DIR missing: integration/scripts/build-containerd2.sh"
      command -v runc >/dev/null || die "runc missing: apt-get install runc" ;;
    *) die "runtime: berth or containerd, not '$1'" ;;
  esac
}

start_runtime() { # berth|containerd
  case "$1" in
    berth) start_berthd ;;
    containerd) start_containerd ;;
  esac
}

up() {
  [ "$(id -u)" = 0 ] || die "run as root"
  local rt
  case "${1:-}" in
    "") rt="$(runtime_of_node)" ;;
    --runtime) rt="${2:-}" ;;
    *) die "up [--runtime berth|containerd]" ;;
  esac
  check_runtime "$rt"
  [ -x "$BERTH_BIN/berth-cluster-images" ] || die "$BERTH_BIN/berth-cluster-images missing: cargo build --workspace --bins"
  if [ -f "$DIR/runtime" ] && [ "$(runtime_of_node)" != "$rt" ]; then
    die "the node runs on $(runtime_of_node): '$0 runtime $rt' moves it"
  fi
  local etcd apiserver kcm scheduler proxy kubelet coredns
  etcd="$(bin "etcd-$ETCD_VERSION")"; apiserver="$(bin "kube-apiserver-$KUBE_VERSION")"
  kcm="$(bin "kube-controller-manager-$KUBE_VERSION")"
  scheduler="$(bin "kube-scheduler-$KUBE_VERSION")"; proxy="$(bin "kube-proxy-$KUBE_VERSION")"
  kubelet="$(bin "kubelet-$KUBE_VERSION")"; coredns="$(bin "coredns-$COREDNS_VERSION")"
  bin "kubectl-$KUBE_VERSION" >/dev/null
  running kube-apiserver || ports_free
  mkdir -p "$DIR"/{logs,pids,etcd,registry,certs.d,cni/net.d,berth,kubelet,pod-logs}
  echo "$rt" > "$DIR/runtime"
  # Whether this cluster runs kube-proxy is fixed by its first `up` (down reads it).
  [ -f "$DIR/kube-proxy" ] || echo "$WITH_KUBE_PROXY" > "$DIR/kube-proxy"
  [ "$(cat "$DIR/kube-proxy")" = 0 ] || snapshot_chains
  # Before any pod exists: nothing from the pod network leaves the machine.
  iptables -C FORWARD "${EGRESS_RULE[@]}" 2>/dev/null || iptables -I FORWARD 1 "${EGRESS_RULE[@]}"
  make_pki

  up_registry "$coredns"

  start etcd "$etcd" --name berth-cluster --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "berth-cluster=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls "" \
    --log-level warn
  wait_for etcd 30 curl -sf "http://127.0.0.1:$ETCD_PORT/health"

  start kube-apiserver "$apiserver" --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
    --secure-port=$API_PORT --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --service-cluster-ip-range=$SERVICE_CIDR --client-ca-file="$DIR/pki/ca.crt" \
    --tls-cert-file="$DIR/pki/apiserver.crt" --tls-private-key-file="$DIR/pki/apiserver.key" \
    --kubelet-client-certificate="$DIR/pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$DIR/pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$DIR/pki/ca.crt" \
    --kubelet-preferred-address-types=Hostname,InternalIP \
    --service-account-key-file="$DIR/pki/sa.pub" --service-account-signing-key-file="$DIR/pki/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --authorization-mode=Node,RBAC --allow-privileged=true --endpoint-reconciler-type=none
  wait_for kube-apiserver 120 https_ok "https://127.0.0.1:$API_PORT/readyz" --cacert "$DIR/pki/ca.crt" \
    --cert "$DIR/pki/admin.crt" --key "$DIR/pki/admin.key"

  start kube-controller-manager "$kcm" --kubeconfig="$DIR/pki/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="$DIR/pki/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="$DIR/pki/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=$KCM_PORT --leader-elect=false --use-service-account-credentials \
    --allocate-node-cidrs --cluster-cidr=$CLUSTER_CIDR --node-cidr-mask-size=24 \
    --service-cluster-ip-range=$SERVICE_CIDR --root-ca-file="$DIR/pki/ca.crt" \
    --service-account-private-key-file="$DIR/pki/sa.key" \
    --cluster-signing-cert-file="$DIR/pki/ca.crt" --cluster-signing-key-file="$DIR/pki/ca.key"
  start kube-scheduler "$scheduler" --kubeconfig="$DIR/pki/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="$DIR/pki/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="$DIR/pki/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=$SCHEDULER_PORT --leader-elect=false

  start_runtime "$rt"
  make_cgroups
  start_kubelet "$kubelet"

  [ "$(cat "$DIR/kube-proxy")" = 0 ] || start_kube_proxy "$proxy"

  wait_for "node $NODE Ready" 120 node_ready
  up_rest "$coredns"
}

start_kube_proxy() { # kube-proxy binary
  cat > "$DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $DIR/pki/kube-proxy.kubeconfig}
mode: iptables
hostnameOverride: "$NODE"
clusterCIDR: $CLUSTER_CIDR
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
conntrack: {maxPerCore: 0}
# NodePorts only on the pod network, never on loopback (that would need route_localnet).
nodePortAddresses: [$CLUSTER_CIDR]
iptables: {localhostNodePorts: false}
EOF
  start kube-proxy "$1" --config="$DIR/kube-proxy.yaml"
}

up_rest() { # after the node is Ready
  local coredns="$1"
  # CoreDNS (a host process with its own client certificate) reads Services and
  # EndpointSlices; kubectl logs/exec reach kubelet with the apiserver's client
  # certificate (system:masters), so they need no binding.
  kubectl apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "berth-local:coredns"}
rules:
- {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "berth-local:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "berth-local:coredns"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:coredns"}]
EOF
  start_coredns "$coredns"
  log "up: export KUBECONFIG=$DIR/pki/admin.kubeconfig; kubectl get nodes -o wide (kubectl is $TOOLS/kubectl)"
}

start_berthd() {
  # berthd: its built-in (native) network on its own bridge, with the subnet kcm will
  # give this node, so a pod started before kubelet passes the pod CIDR on is on the
  # same network as every later one (docs/networking.md, "Kubernetes nodes").
  cat > "$DIR/berth/config.toml" <<EOF
root_dir = "$DIR/berth/root"
state_dir = "$RUN"

[grpc]
socket = "$DIR/berth.sock"

[cni]
conf_dir = "$DIR/cni/net.d"
builtin_default = true
builtin_mode = "native"
builtin_bridge = "$BRIDGE"
builtin_subnet = "$NODE_CIDR"

[registry]
config_path = "$DIR/certs.d"

[stream]
address = "127.0.0.1"
EOF
  start berthd "$BERTH_BIN/berthd" --config "$DIR/berth/config.toml"
  # Answering on the socket, not only the socket file: a restart finds the old one there.
  wait_for berthd 30 "$(bin crictl)" --runtime-endpoint "unix://$DIR/berth.sock" --timeout 2s version
}

start_containerd() {
  # containerd 2.x + runc as integration/src/peer.rs runs it for the benchmarks, set up
  # for this node: the CNI bridge plugin on the same bridge and pod CIDR berthd's native
  # network uses (host-local's state in our dir), the same registry mirrors (its own
  # hosts.toml: containerd wants a [host] table), cgroupfs, its state below $RUN.
  local d="$DIR/containerd" h
  mkdir -p "$d/net.d" "$d/certs.d"
  for h in docker.io registry.k8s.io gcr.io k8s.gcr.io; do
    mkdir -p "$d/certs.d/$h"
    printf 'server = "http://127.0.0.1:%s"\n\n[host."http://127.0.0.1:%s"]\n  capabilities = ["pull", "resolve"]\n' \
      "$REGISTRY_PORT" "$REGISTRY_PORT" > "$d/certs.d/$h/hosts.toml"
  done
  # The CNI network containerd's pods join: the bridge template node-e2e.sh uses too.
  sed -e "s|@NAME@|$NAME|" -e "s|@BRIDGE@|$BRIDGE|" -e "s|@IPAM@|$d/ipam|" \
    -e "s|@SUBNET@|$NODE_CIDR|" -e "s|@GATEWAY@|$POD_GATEWAY|" \
    "$REPO/integration/peer/bridge.conflist" > "$d/net.d/10-$NAME.conflist"
  # The same containerd 2 configuration as peer.rs and node-e2e.sh (one template).
  sed -e "s|@ROOT@|$d/root|" -e "s|@STATE@|$RUN/containerd|" \
    -e "s|@SOCKET@|$DIR/containerd.sock|" -e "s|@PAUSE@|$PAUSE_IMAGE|" \
    -e "s|@CERTS@|$d/certs.d|" -e "s|@OCI@|runc|" -e "s|@CNI@|$d/net.d|" \
    "$REPO/integration/peer/containerd2.toml" > "$d/config.toml"
  # containerd finds its shim on PATH: this build's shim, not Debian's.
  start containerd env "PATH=$CONTAINERD_DIR:$PATH" "$CONTAINERD_DIR/containerd" --config "$d/config.toml"
  wait_for containerd 30 "$(bin crictl)" --runtime-endpoint "unix://$DIR/containerd.sock" --timeout 2s version
}

start_kubelet() { # kubelet binary
  local sock
  sock="$(runtime_socket "$(runtime_of_node)")"
  printf 'nameserver 127.0.0.1\n' > "$DIR/resolv.conf" # pods never see the host's resolver
  cat > "$DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $DIR/pki/kubelet-serving.crt
tlsPrivateKeyFile: $DIR/pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $DIR/pki/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$sock
imageServiceEndpoint: unix://$sock
cgroupDriver: cgroupfs
cgroupsPerQOS: true
# kubelet >= 1.35 refuses cgroup v1 unless this is false; nothing changes on cgroup v2.
failCgroupV1: false
cgroupRoot: $CGROUP_ROOT
enforceNodeAllocatable: []
failSwapOn: false
podLogsDir: $DIR/pod-logs
resolvConf: $DIR/resolv.conf
clusterDNS: [$POD_GATEWAY]
clusterDomain: cluster.local
serializeImagePulls: false
# Absolute: on a large shared disk a percentage means gigabytes (2% of 252 GB is 5 GB).
evictionHard: {memory.available: "100Mi", nodefs.available: "512Mi", imagefs.available: "512Mi"}
EOF
  start kubelet "$1" --config="$DIR/kubelet.yaml" --kubeconfig="$DIR/pki/kubelet.kubeconfig" \
    --root-dir="$DIR/kubelet" --hostname-override=$NODE --v=1
}

node_ready() {
  [ "$(kubectl get node $NODE -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

node_on() { # berth|containerd : the node reports that runtime and is Ready
  local rt
  rt="$(kubectl get node $NODE -o 'jsonpath={.status.nodeInfo.containerRuntimeVersion}')"
  [ "${rt%%://*}" = "$1" ] && node_ready
}

start_coredns() { # a host process on the pod bridge's gateway, once the runtime made the bridge
  # The bridge appears with the first pod (native network or CNI plugin); a throwaway pod makes it.
  if ! ip -4 addr show dev "$BRIDGE" 2>/dev/null | grep -q "$POD_GATEWAY/"; then
    wait_for "service account default/default" 60 kubectl get serviceaccount default
    kubectl run berth-bridge-warmup --image=busybox --restart=Never --command -- true >/dev/null
    wait_for "bridge $BRIDGE" 60 sh -c "ip -4 addr show dev $BRIDGE | grep -q '$POD_GATEWAY/'"
    kubectl delete pod berth-bridge-warmup --wait=false >/dev/null
  fi
  cat > "$DIR/Corefile" <<EOF
.:53 {
    bind $POD_GATEWAY
    errors
    health 127.0.0.1:$COREDNS_HEALTH_PORT
    ready 127.0.0.1:$COREDNS_READY_PORT
    kubernetes cluster.local in-addr.arpa {
        kubeconfig $DIR/pki/coredns.kubeconfig berth
        pods insecure
    }
    cache 30
    loop
}
EOF
  start coredns "$1" -conf "$DIR/Corefile"
  wait_for coredns 30 curl -sf "http://127.0.0.1:$COREDNS_READY_PORT/ready"
}

# ---------------------------------------------------------------- down

remove_pods() { # berth|containerd : every pod through the runtime's own teardown
  [ -x "$TOOLS/crictl" ] || return 0
  local crictl=("$TOOLS/crictl" --runtime-endpoint "unix://$(runtime_socket "$1")" --timeout 30s) p
  for p in $("${crictl[@]}" pods -q 2>/dev/null); do
    "${crictl[@]}" stopp "$p" >/dev/null 2>&1 || true
    "${crictl[@]}" rmp -f "$p" >/dev/null 2>&1 || true
  done
}

shims() { # pids of containerd shims started for this cluster's containerd
  local p
  for p in /proc/[0-9]*; do
    [[ "$(cat "$p/comm" 2>/dev/null)" == containerd-shim* ]] || continue
    tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -qF -- "$DIR/containerd.sock" && echo "${p#/proc/}"
  done
  return 0
}

cni_results() { # the CNI result cache files of this cluster's network (<network>-<id>-<ifname>)
  find /var/lib/cni/results -maxdepth 1 -regextype posix-extended \
    -regex ".*/$NAME-[0-9a-f]{64}-[^/]*" 2>/dev/null || true
}

cni_nat_rules() { # the bridge plugin's masquerade rules for this cluster's CNI network
  iptables-save -t nat 2>/dev/null | grep -F -- "name: \\\"$NAME\\\" id:" || true
}

remove_cni_nat() { # those rules and the CNI-* chains they jump to
  local rules chains
  rules="$(cni_nat_rules)"
  [ -n "$rules" ] || return 0
  chains="$(echo "$rules" | grep -o -- '-j CNI-[^ ]*' | cut -d' ' -f2 | sort -u || true)"
  {
    echo "*nat"
    echo "$rules" | sed 's/^-A /-D /'
    for c in $chains; do echo "-F $c"; done
    for c in $chains; do echo "-X $c"; done
    echo COMMIT
  } | iptables-restore --noflush || log "removing the CNI masquerade rules failed"
}

down() {
  [ "$(id -u)" = 0 ] || die "run as root"
  [ -d "$DIR" ] || { log "nothing to take down ($DIR missing)"; return 0; }
  stop coredns
  stop kubelet
  # Every pod goes through its runtime's own teardown (containers, mounts, netns, veths,
  # IPs); whatever the runtime still has mounted afterwards (rootfs, volumes, a netns pin)
  # is a leak, recorded before the lazy unmount below hides it.
  local leaked="" l
  if running containerd; then
    remove_pods containerd
    l="$(mounts_below "$RUN/containerd" "$DIR/containerd")"
    [ -z "$l" ] || leaked+="containerd: still mounted after every pod was removed:"$'\n'"$l"$'\n'
    local i
    for i in $(seq 50); do [ -z "$(shims)" ] && break; sleep 0.1; done
    l="$(shims)"
    [ -z "$l" ] || leaked+="containerd: shims still running after every pod was removed: $(echo $l)"$'\n'
    l="$(cni_nat_rules)"
    [ -z "$l" ] || leaked+="containerd: CNI masquerade rules after every pod was removed:"$'\n'"$l"$'\n'
  fi
  stop containerd
  # A shim outlives containerd: only the ones started for ours.
  for l in $(shims); do kill -KILL "$l" 2>/dev/null || true; done
  remove_cni_nat
  cni_results | xargs -r rm -f
  if running berthd; then
    remove_pods berth
    # Only berthd's shared pin directory ($RUN/ns, bind-mounted on itself) stays.
    l="$(mounts_below "$RUN" "$DIR/berth" | grep -vxF "$RUN/ns" | grep -vF "$RUN/containerd/" || true)"
    [ -z "$l" ] || leaked+="berthd: still mounted after every pod was removed:"$'\n'"$l"$'\n'
  fi
  if [ -n "$leaked" ]; then
    echo "local-cluster: LEAK:" >&2
    echo -n "$leaked" | sed 's/^/  /' >&2
  fi
  stop berthd
  stop kube-proxy
  remove_new_chains
  stop kube-scheduler
  stop kube-controller-manager
  stop kube-apiserver
  stop etcd
  stop registry
  # berthd's native network: its bridge and masquerade rule (berthd leaves them, by design).
  local rule=(-s "$NODE_CIDR" ! -d "$NODE_CIDR" -m comment --comment "berth native network $BRIDGE" -j MASQUERADE)
  while iptables -t nat -C POSTROUTING "${rule[@]}" 2>/dev/null; do
    iptables -t nat -D POSTROUTING "${rule[@]}"
  done
  while iptables -C FORWARD "${EGRESS_RULE[@]}" 2>/dev/null; do
    iptables -D FORWARD "${EGRESS_RULE[@]}"
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  # Mounts below the cluster dir (kubelet's volumes, the runtimes' rootfs and netns pins),
  # deepest first, before anything is removed.
  local m
  local d
  for d in "$DIR" "$RUN"; do
    for m in $(mounts_below "$d" | sort -r); do
      umount -l "$m" 2>/dev/null || true
    done
    if [ -n "$(mounts_below "$d")" ]; then
      die "mounts remain below $d; not removing it"
    fi
  done
  remove_cgroups
  rm -rf --one-file-system "$DIR" "$RUN"
  log "down: removed $DIR, $RUN, $BRIDGE, cgroup $CGROUP_ROOT, the no-egress rule, kube-proxy's rules"
  [ -z "$leaked" ] || die "a runtime left state behind after every pod was removed (listed above)"
}

# What `up` made that must be gone after `down` (cluster-e2e.sh checks the same for CI's
# cluster on Berth); prints each, exit 1 if any.
leaks() {
  local out="" p c h
  for p in /proc/[0-9]*; do
    c="$(tr '\0' ' ' 2>/dev/null < "$p/cmdline")" || continue
    case "$c" in
      *"$DIR/"*|*"$DIR "*|*"$RUN/"*|*"$RUN "*) out+="process ${p#/proc/}: ${c:0:120}"$'\n' ;;
    esac
  done
  out+="$(findmnt -rn -o TARGET | grep -E "^($DIR|$RUN)(/|$)" | sed 's/^/mount /' || true)"$'\n'
  for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    [ ! -d "$h${CGROUP_ROOT#/}" ] || out+="cgroup $h${CGROUP_ROOT#/}"$'\n'
  done
  ! ip link show "$BRIDGE" >/dev/null 2>&1 || out+="bridge $BRIDGE"$'\n'
  out+="$(iptables-save -t filter | grep -F -- "\"$NAME no egress\"" | sed 's/^/iptables filter /' || true)"$'\n'
  out+="$(iptables-save -t nat | grep -F -- "berth native network $BRIDGE\"" | sed 's/^/iptables nat /' || true)"$'\n'
  out+="$(cni_nat_rules | sed 's/^/iptables nat (CNI) /')"$'\n'
  # kube-proxy's chains, unless another cluster's kube-proxy runs (CI's, in the background).
  if ! pgrep "^kube-proxy" >/dev/null; then
    out+="$(iptables-save -t nat | grep -E -- "^:KUBE-(SERVICES|NODEPORTS|SVC-|SEP-|EXT-|PROXY-CANARY)" | sed 's/^/iptables nat /' || true)"$'\n'
    out+="$(iptables-save -t filter | grep -E -- "^:KUBE-(SERVICES|NODEPORTS|EXTERNAL-SERVICES|PROXY-FIREWALL|FORWARD|PROXY-CANARY)" | sed 's/^/iptables filter /' || true)"$'\n'
  fi
  out+="$(cni_results | sed 's/^/CNI cache /')"$'\n'
  [ ! -e "$DIR" ] || out+="directory $DIR"$'\n'
  [ ! -e "$RUN" ] || out+="directory $RUN"$'\n'
  out="$(echo "$out" | sed '/^$/d')"
  if [ -n "$out" ]; then
    echo "local-cluster: left behind:" >&2
    echo "$out" >&2
    return 1
  fi
  log "leaks: nothing left of the cluster in $DIR (processes, mounts, cgroups, bridge $BRIDGE, iptables rules, CNI state)"
}

mounts_below() { # dir... : mount points strictly below any of them
  local d
  for d in "$@"; do
    findmnt -rn -o TARGET | awk -v p="$d/" 'index($0, p) == 1'
  done
}

# ---------------------------------------------------------------- iptables chains

# The KUBE-* chains of every table, both families, before anything starts: `down` deletes
# only the ones that appeared after (kube-proxy's), not another cluster's on this host.
# The first `up` refuses when another kube-proxy is already programming this host.
snapshot_chains() {
  [ -f "$DIR/chains-before" ] && return 0 # up again on a running cluster: keep the first
  if iptables-save -t nat 2>/dev/null | grep -q '^:KUBE-SERVICES ' ||
     iptables-save -t filter 2>/dev/null | grep -q '^:KUBE-SERVICES '; then
    die "a KUBE-SERVICES chain exists: another kube-proxy runs on this host; not starting a second"
  fi
  if command -v nft >/dev/null && nft list tables 2>/dev/null | grep -q 'kube-proxy'; then
    die "a kube-proxy nftables table exists: another kube-proxy runs on this host"
  fi
  list_chains > "$DIR/chains-before.tmp"
  mv "$DIR/chains-before.tmp" "$DIR/chains-before"
}

list_chains() { # "family table chain" of every KUBE-* chain
  local fam t
  for fam in iptables ip6tables; do
    command -v "$fam-save" >/dev/null || continue
    for t in nat filter mangle; do
      "$fam-save" -t "$t" 2>/dev/null | sed -n "s/^:\(KUBE-[^ ]*\) .*/$fam $t \1/p"
    done
  done
}

remove_new_chains() { # what kube-proxy --cleanup did, for our chains only
  [ -f "$DIR/chains-before" ] || return 0
  local fam t new script
  for fam in iptables ip6tables; do
    command -v "$fam-save" >/dev/null || continue
    for t in nat filter mangle; do
      new="$(list_chains | awk -v f="$fam" -v t="$t" '$1 == f && $2 == t {print $3}' |
        grep -vxF -f <(awk -v f="$fam" -v t="$t" '$1 == f && $2 == t {print $3}' "$DIR/chains-before") |
        grep -vE "$KUBELET_CHAINS" || true)"
      [ -n "$new" ] || continue
      # One iptables-restore --noflush per table: the rules of other chains that jump
      # to ours, then our chains flushed, then deleted.
      script="$(
        echo "*$t"
        "$fam-save" -t "$t" | awk -v new="$new" '
          BEGIN { n = split(new, a, "\n"); for (i = 1; i <= n; i++) ours[a[i]] = 1 }
          /^-A / { for (i = 1; i < NF; i++) if ($i == "-j" && ($(i + 1) in ours) && !($2 in ours)) { sub(/^-A /, "-D "); print; break } }'
        for c in $new; do echo "-F $c"; done
        for c in $new; do echo "-X $c"; done
        echo COMMIT
      )"
      echo "$script" | "$fam-restore" --noflush || log "removing $fam $t chains failed"
    done
  done
}

status() {
  local c
  [ ! -f "$DIR/runtime" ] || echo "node runtime: $(runtime_of_node)"
  for c in "${COMPONENTS[@]}"; do
    if running "$c"; then echo "$c: running (pid $(pid_of "$c"))"; else echo "$c: stopped"; fi
  done
  if running kube-apiserver; then
    kubectl get nodes -o wide || true
    kubectl get pods -A -o wide || true
  fi
}

# Stops one node component and starts it again with the same configuration, as an
# operator restarting a node's kubelet or runtime does; pods and containers keep running.
restart() {
  [ "$(id -u)" = 0 ] || die "run as root"
  case "$1" in
    kubelet)
      stop kubelet
      start_kubelet "$(bin "kubelet-$KUBE_VERSION")"
      wait_for "kubelet healthz" 60 curl -sf "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz"
      ;;
    berthd)
      stop berthd
      start_berthd
      ;;
    containerd)
      stop containerd
      start_containerd
      ;;
    *) die "restart: kubelet, berthd or containerd" ;;
  esac
  log "restarted $1"
}

no_pods_on_node() {
  local out
  out="$(kubectl get pods -A --field-selector "spec.nodeName=$NODE" -o name)" || return 1
  [ -z "$out" ]
}

no_pods_in() { # berth|containerd : the runtime holds no pod sandbox
  local out
  out="$("$TOOLS/crictl" --runtime-endpoint "unix://$(runtime_socket "$1")" --timeout 10s pods -q)" || return 1
  [ -z "$out" ]
}

# Moves the node's kubelet to the other runtime (for comparisons on one node: same
# kubelet, configuration, images and pod network). Only an empty node moves: a pod left
# in the old runtime would run on unknown to kubelet. Both runtimes keep running, so
# each sees the other idle beside it.
switch_runtime() { # berth|containerd
  [ "$(id -u)" = 0 ] || die "run as root"
  local want="$1" cur
  check_runtime "$want"
  running kube-apiserver && running kubelet || die "no cluster running in $DIR: '$0 up' first"
  cur="$(runtime_of_node)"
  if [ "$want" = "$cur" ] && node_on "$want"; then
    log "the node already runs on $want"
    return 0
  fi
  wait_for "no pods on node $NODE" 120 no_pods_on_node
  wait_for "no pod sandbox in $cur" 120 no_pods_in "$cur"
  running "$(daemon_of "$want")" || start_runtime "$want"
  stop kubelet
  echo "$want" > "$DIR/runtime"
  start_kubelet "$(bin "kubelet-$KUBE_VERSION")"
  wait_for "node $NODE Ready on $want" 120 node_on "$want"
  log "the node runs on $want"
}

daemon_of() { # berth|containerd -> its component name
  case "$1" in berth) echo berthd ;; *) echo "$1" ;; esac
}

ports_free() { # every loopback port up listens on, before anything starts
  local p
  local ports=("$API_PORT" "$ETCD_PORT" "$ETCD_PEER_PORT" "$KUBELET_PORT" "$KUBELET_HEALTHZ_PORT"
    "$PROXY_METRICS_PORT" "$PROXY_HEALTHZ_PORT" "$KCM_PORT" "$SCHEDULER_PORT")
  # The registry's and CoreDNS's too (a wait_for could succeed against someone else's
  # server), unless it is ours (`images` started the registry).
  running registry || ports+=("$REGISTRY_PORT")
  running coredns || ports+=("$COREDNS_HEALTH_PORT" "$COREDNS_READY_PORT")
  for p in "${ports[@]}"; do
    if [ -n "$(ss -Htln "sport = :$p")" ]; then
      die "port $p is in use (another control plane? BERTH_CLUSTER_INSTANCE=1 moves every port; BERTH_CLUSTER_API_PORT/_ETCD_PORT/_ETCD_PEER_PORT move these)"
    fi
  done
}

case "${1:-}" in
  up) shift; up "$@" ;;
  runtime) switch_runtime "${2:-}" ;;
  restart) restart "${2:-}" ;;
  images) [ "$(id -u)" = 0 ] || die "run as root"; up_registry "$(bin "coredns-$COREDNS_VERSION")" ;;
  down) down ;;
  leaks) leaks ;;
  status) status ;;
  *) echo "usage: $0 up [--runtime berth|containerd]|down|leaks|status|images|runtime berth|containerd|restart kubelet|berthd|containerd" >&2; exit 2 ;;
esac
