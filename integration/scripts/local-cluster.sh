#!/usr/bin/env bash
# A local one-node Kubernetes cluster whose container runtime is Berth, in the shape of
# Kubernetes' hack/local-up-cluster.sh: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kube-proxy (iptables mode), CoreDNS, a local image registry, berthd
# and a kubelet registered as node "127.0.0.1". Everything listens on 127.0.0.1 (CoreDNS
# on the pod bridge's gateway address, which only pods of this node reach); nothing the
# script starts talks to any other address, and neither may pods: berthd's built-in network
# masquerades pod traffic to the host's routes (as a node's pod network does), so `up`
# first inserts a FORWARD rule that REJECTs everything from the pod network that is not
# for the pod network ("berth-cluster no egress"; a Service's traffic is already DNAT'd
# to a pod's address when it is forwarded), and `down` removes it. Run as root, after
# `cargo build --workspace --bins` and integration/scripts/build-kube.sh + build-kubelet.sh.
#
#   integration/scripts/local-cluster.sh up       # start (certificates made on first up)
#   integration/scripts/local-cluster.sh status   # processes, node, pods
#   integration/scripts/local-cluster.sh images   # only the registry and its images (up does this)
#   integration/scripts/local-cluster.sh restart kubelet|berthd   # one node component
#   integration/scripts/local-cluster.sh down     # stop and remove everything it made
#   export KUBECONFIG=/var/lib/berth-cluster/pki/admin.kubeconfig; kubectl get nodes -o wide
#
# State lives in $BERTH_CLUSTER_DIR (default /var/lib/berth-cluster): certificates,
# kubeconfigs, logs (logs/<component>.log), pid files, etcd's data, berthd's root and
# state, kubelet's root. `down` removes all of it, the cgroup tree /berth-cluster, the
# pod bridge berthc0 and its masquerade rule, the no-egress rule, and the KUBE-* iptables
# chains that did not exist before `up` (kube-proxy's; `up` refuses to start when another
# kube-proxy's KUBE-SERVICES chain or nft table is there). `down` fails (after removing
# everything) when a mount or netns pin of berthd's was left after every pod was removed.
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

NODE=127.0.0.1                 # node name = hostname override, as local-up-cluster.sh
# Fixed loopback ports; override when another local control plane holds the defaults.
API_PORT="${BERTH_CLUSTER_API_PORT:-6443}"
ETCD_PORT="${BERTH_CLUSTER_ETCD_PORT:-2379}"
ETCD_PEER_PORT="${BERTH_CLUSTER_ETCD_PEER_PORT:-2380}"
REGISTRY_PORT=5055
KUBELET_PORT=10350             # not 10250: privileged_kubelet.rs may run alongside
KUBELET_HEALTHZ_PORT=10348
CLUSTER_CIDR=10.244.0.0/16     # kcm hands the node 10.244.0.0/24
NODE_CIDR=10.244.0.0/24
POD_GATEWAY=10.244.0.1         # the bridge's address: CoreDNS listens here
SERVICE_CIDR=10.0.0.0/24
SERVICE_IP=10.0.0.1
BRIDGE=berthc0
CGROUP_ROOT=/berth-cluster
# Pods reach only the pod network (and, through kube-proxy's DNAT, Services): never out.
EGRESS_RULE=(-s "$NODE_CIDR" ! -d "$NODE_CIDR" -m comment --comment "berth-cluster no egress" -j REJECT)
# Chains kubelet itself makes (any kubelet on the host, privileged_kubelet.rs's too):
# never deleted by `down`, as kube-proxy --cleanup never did.
KUBELET_CHAINS='^(KUBE-FIREWALL|KUBE-KUBELET-CANARY|KUBE-IPTABLES-HINT)$'
COMPONENTS=(registry etcd kube-apiserver kube-controller-manager kube-scheduler berthd kubelet kube-proxy coredns)

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


up() {
  [ "$(id -u)" = 0 ] || die "run as root"
  local b
  for b in berthd berth-monitor berth-runtime berth-cluster-images; do
    [ -x "$BERTH_BIN/$b" ] || die "$BERTH_BIN/$b missing: cargo build --workspace --bins"
  done
  local etcd apiserver kcm scheduler proxy kubelet coredns
  etcd="$(bin "etcd-$ETCD_VERSION")"; apiserver="$(bin "kube-apiserver-$KUBE_VERSION")"
  kcm="$(bin "kube-controller-manager-$KUBE_VERSION")"
  scheduler="$(bin "kube-scheduler-$KUBE_VERSION")"; proxy="$(bin "kube-proxy-$KUBE_VERSION")"
  kubelet="$(bin "kubelet-$KUBE_VERSION")"; coredns="$(bin "coredns-$COREDNS_VERSION")"
  bin "kubectl-$KUBE_VERSION" >/dev/null
  running kube-apiserver || ports_free
  mkdir -p "$DIR"/{logs,pids,etcd,registry,certs.d,cni/net.d,berth,kubelet,pod-logs}
  snapshot_chains
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
    --bind-address=127.0.0.1 --leader-elect=false --use-service-account-credentials \
    --allocate-node-cidrs --cluster-cidr=$CLUSTER_CIDR --node-cidr-mask-size=24 \
    --service-cluster-ip-range=$SERVICE_CIDR --root-ca-file="$DIR/pki/ca.crt" \
    --service-account-private-key-file="$DIR/pki/sa.key" \
    --cluster-signing-cert-file="$DIR/pki/ca.crt" --cluster-signing-key-file="$DIR/pki/ca.key"
  start kube-scheduler "$scheduler" --kubeconfig="$DIR/pki/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="$DIR/pki/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="$DIR/pki/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false

  start_berthd
  make_cgroups
  start_kubelet "$kubelet"

  cat > "$DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $DIR/pki/kube-proxy.kubeconfig}
mode: iptables
hostnameOverride: "$NODE"
clusterCIDR: $CLUSTER_CIDR
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack: {maxPerCore: 0}
# NodePorts only on the pod network, never on loopback (that would need route_localnet).
nodePortAddresses: [$CLUSTER_CIDR]
iptables: {localhostNodePorts: false}
EOF
  start kube-proxy "$proxy" --config="$DIR/kube-proxy.yaml"

  wait_for "node $NODE Ready" 120 node_ready
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

start_kubelet() { # kubelet binary
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
containerRuntimeEndpoint: unix://$DIR/berth.sock
imageServiceEndpoint: unix://$DIR/berth.sock
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
evictionHard: {memory.available: "100Mi", nodefs.available: "2%", imagefs.available: "2%"}
EOF
  start kubelet "$1" --config="$DIR/kubelet.yaml" --kubeconfig="$DIR/pki/kubelet.kubeconfig" \
    --root-dir="$DIR/kubelet" --hostname-override=$NODE --v=1
}

node_ready() {
  [ "$(kubectl get node $NODE -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

start_coredns() { # a host process on the pod bridge's gateway, once berthd made the bridge
  # The bridge appears with the first pod on the native network; a throwaway pod makes it.
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
    health 127.0.0.1:18080
    ready 127.0.0.1:18181
    kubernetes cluster.local in-addr.arpa {
        kubeconfig $DIR/pki/coredns.kubeconfig berth
        pods insecure
    }
    cache 30
    loop
}
EOF
  start coredns "$1" -conf "$DIR/Corefile"
  wait_for coredns 30 curl -sf http://127.0.0.1:18181/ready
}

# ---------------------------------------------------------------- down

down() {
  [ "$(id -u)" = 0 ] || die "run as root"
  [ -d "$DIR" ] || { log "nothing to take down ($DIR missing)"; return 0; }
  stop coredns
  stop kubelet
  # Every pod goes through berthd's own teardown (containers, mounts, netns, veths, IPs).
  local leaked=""
  if running berthd && [ -x "$TOOLS/crictl" ]; then
    local crictl=("$TOOLS/crictl" --runtime-endpoint "unix://$DIR/berth.sock" --timeout 30s)
    local p
    for p in $("${crictl[@]}" pods -q 2>/dev/null); do
      "${crictl[@]}" stopp "$p" >/dev/null 2>&1 || true
      "${crictl[@]}" rmp -f "$p" >/dev/null 2>&1 || true
    done
    # Every pod is gone through berthd's own teardown: whatever berthd still has mounted
    # (rootfs, volumes, a netns pin) is a leak, before the lazy unmount below hides it.
    # Only its shared pin directory ($RUN/ns, bind-mounted on itself) stays.
    leaked="$(mounts_below "$RUN" "$DIR/berth" | grep -vxF "$RUN/ns" || true)"
    if [ -n "$leaked" ]; then
      echo "local-cluster: LEAK: still mounted after every pod was removed:" >&2
      echo "$leaked" | sed 's/^/  /' >&2
    fi
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
  # Mounts below the cluster dir (kubelet's volumes, berthd's rootfs and netns pins),
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
  [ -z "$leaked" ] || die "berthd left mounts after every pod was removed (listed above)"
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
    *) die "restart: kubelet or berthd" ;;
  esac
  log "restarted $1"
}

ports_free() { # every loopback port up listens on, before anything starts
  local p
  local ports=("$API_PORT" "$ETCD_PORT" "$ETCD_PEER_PORT" "$KUBELET_PORT" "$KUBELET_HEALTHZ_PORT" 10249 10256 10257 10259)
  # The registry's and CoreDNS's too (a wait_for could succeed against someone else's
  # server), unless it is ours (`images` started the registry).
  running registry || ports+=("$REGISTRY_PORT")
  running coredns || ports+=(18080 18181)
  for p in "${ports[@]}"; do
    if [ -n "$(ss -Htln "sport = :$p")" ]; then
      die "port $p is in use (another control plane? BERTH_CLUSTER_API_PORT/_ETCD_PORT/_ETCD_PEER_PORT move ours)"
    fi
  done
}

case "${1:-}" in
  up) up ;;
  restart) restart "${2:-}" ;;
  images) [ "$(id -u)" = 0 ] || die "run as root"; up_registry "$(bin "coredns-$COREDNS_VERSION")" ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status|images|restart kubelet|restart berthd" >&2; exit 2 ;;
esac
