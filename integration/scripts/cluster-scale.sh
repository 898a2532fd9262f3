#!/usr/bin/env bash
# Pod start through the whole stack on a running local cluster (local-cluster.sh up):
# a Deployment of busybox pods (an exec readiness probe, as most workloads have one) is
# scaled from 0 to N replicas and timed until all N are Ready, ROUNDS times per runtime
# (scaled back to 0, every pod gone, between rounds).
#
# With --runtimes berth,containerd the node's kubelet is moved between the two runtimes
# (`local-cluster.sh runtime`, untimed; both daemons keep running) and the rounds are
# interleaved A B B A A B … so that both runtimes see the same machine load and the same
# drift in it. Before the timed rounds, each runtime starts one untimed pod (pulls the
# image, and containerd its pause image; makes the bridge). Prints one line per round
# with the 1-minute load average before and after it, then median/min/max per runtime
# and the ratio of the medians. docs/benchmarks.md has the last result.
#
#   integration/scripts/cluster-scale.sh [--runtimes berth,containerd] [N=30] [ROUNDS=3]
set -euo pipefail

RUNTIMES=""
if [ "${1:-}" = --runtimes ]; then
  RUNTIMES="${2:-}"
  shift 2
fi
N="${1:-30}"
ROUNDS="${2:-3}"
DIR="${BERTH_CLUSTER_DIR:-/var/lib/berth-cluster}"
TOOLS="${BERTH_TOOLS_DIR:-/var/cache/berth/tools}/bin"
KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"
CLUSTER="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/local-cluster.sh"
K() { timeout 330 "$TOOLS/kubectl-$KUBE_VERSION" --kubeconfig "$DIR/pki/admin.kubeconfig" "$@"; }
die() { echo "cluster-scale: $*" >&2; exit 1; }
log() { echo "cluster-scale: $*"; }

[ -f "$DIR/pki/admin.kubeconfig" ] || die "no cluster: integration/scripts/local-cluster.sh up first"
node_runtime() { cat "$DIR/runtime" 2>/dev/null || echo berth; }
START_RUNTIME="$(node_runtime)"
[ -n "$RUNTIMES" ] || RUNTIMES="$START_RUNTIME"
IFS=, read -r -a RTS <<< "$RUNTIMES"
[ "${#RTS[@]}" -le 2 ] || die "--runtimes: one or two of berth, containerd"
[ "${#RTS[@]}" = 1 ] || [ "${RTS[0]}" != "${RTS[1]}" ] || die "--runtimes: two different runtimes"
for rt in "${RTS[@]}"; do
  case "$rt" in berth|containerd) ;; *) die "--runtimes: berth or containerd, not '$rt'" ;; esac
done

cleanup() {
  K delete deployment scale --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

K apply -f - >/dev/null <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: scale}
spec:
  replicas: 0
  selector: {matchLabels: {app: scale}}
  template:
    metadata: {labels: {app: scale}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: scale
        image: busybox
        command: [sleep, "3600"]
        readinessProbe: {exec: {command: ["true"]}, periodSeconds: 1}
EOF

load1() { cut -d' ' -f1 /proc/loadavg; }

use() { # runtime : the node's kubelet on it (no-op when it already is)
  [ "$(node_runtime)" = "$1" ] && return 0
  "$CLUSTER" runtime "$1" >/dev/null
}

scale_to() { # replicas : timed by the caller; returns once readyReplicas == replicas
  K scale deployment/scale --replicas="$1" >/dev/null
  K wait deployment/scale --for=jsonpath='{.status.readyReplicas}'="$1" --timeout=300s >/dev/null ||
    die "not $1 Ready within 300 s (have $(K get deployment scale -o 'jsonpath={.status.readyReplicas}'))"
}

scale_down() { # back to 0, every pod gone
  K scale deployment/scale --replicas=0 >/dev/null
  local end_by=$((SECONDS + 180))
  until [ -z "$(K get pods -l app=scale -o name)" ]; do
    [ "$SECONDS" -lt "$end_by" ] || die "pods not gone within 180 s"
    sleep 0.5
  done
}

# One untimed pod per runtime: the image pull (and containerd's pause image), the bridge
# and the first-pod costs a running node has paid already.
for rt in "${RTS[@]}"; do
  use "$rt"
  scale_to 1
  scale_down
  log "warm-up on $rt done"
done

# The order of the timed rounds: A B B A A B … (one runtime: A A A …).
ORDER=()
for i in $(seq 0 $((ROUNDS - 1))); do
  if [ "${#RTS[@]}" = 1 ]; then ORDER+=("${RTS[0]}")
  elif [ $((i % 2)) = 0 ]; then ORDER+=("${RTS[0]}" "${RTS[1]}")
  else ORDER+=("${RTS[1]}" "${RTS[0]}"); fi
done

log "$(date -u '+%F %T UTC'); $N replicas, $ROUNDS rounds per runtime, order ${ORDER[*]}; $(nproc) cores"
declare -A TIMES
r=0
for rt in "${ORDER[@]}"; do
  r=$((r + 1))
  use "$rt"
  l0="$(load1)"
  start=$(date +%s.%N)
  scale_to "$N"
  t=$(echo "$(date +%s.%N) - $start" | bc)
  l1="$(load1)"
  TIMES[$rt]+="$t "
  printf 'cluster-scale: round %d (%s): 0 -> %d Ready in %.1f s (load average %s -> %s)\n' \
    "$r" "$rt" "$N" "$t" "$l0" "$l1"
  scale_down
done

stats() { # times... -> "median min max" (an even count's median: the mean of the middle two)
  printf '%s\n' "$@" | sort -n |
    awk '{a[NR]=$1} END {m = NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; printf "%s %s %s", m, a[1], a[NR]}'
}
declare -A MEDIAN
for rt in "${RTS[@]}"; do
  # shellcheck disable=SC2086
  read -r med min max <<< "$(stats ${TIMES[$rt]})"
  MEDIAN[$rt]=$med
  printf 'cluster-scale: %s: median %.1f s, min %.1f s, max %.1f s over %d rounds (0 -> %d Ready)\n' \
    "$rt" "$med" "$min" "$max" "$ROUNDS" "$N"
done
if [ "${#RTS[@]}" = 2 ]; then
  printf 'cluster-scale: ratio of the medians berth/containerd: %.2f\n' \
    "$(echo "${MEDIAN[berth]} / ${MEDIAN[containerd]}" | bc -l)"
fi
log "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
use "$START_RUNTIME"
