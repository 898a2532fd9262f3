#!/usr/bin/env bash
# Pod start through the whole stack on a running local cluster (local-cluster.sh up):
# a Deployment of busybox pods (an exec readiness probe, as most workloads have one) is
# scaled from 0 to N replicas and timed until all N are Ready, ROUNDS times (scaled back
# to 0, every pod gone, between rounds). Prints one line per round and the median.
# docs/benchmarks.md has the last result.
#
#   integration/scripts/cluster-scale.sh [N=30] [ROUNDS=3]
set -euo pipefail

N="${1:-30}"
ROUNDS="${2:-3}"
DIR="${BERTH_CLUSTER_DIR:-/var/lib/berth-cluster}"
TOOLS="${BERTH_TOOLS_DIR:-/var/cache/berth/tools}/bin"
KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"
K() { timeout 120 "$TOOLS/kubectl-$KUBE_VERSION" --kubeconfig "$DIR/pki/admin.kubeconfig" "$@"; }
die() { echo "cluster-scale: $*" >&2; exit 1; }

[ -f "$DIR/pki/admin.kubeconfig" ] || die "no cluster: integration/scripts/local-cluster.sh up first"
cleanup() { K delete deployment scale --wait=false >/dev/null 2>&1 || true; }
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

ready() { K get deployment scale -o 'jsonpath={.status.readyReplicas}'; }
times=()
for r in $(seq "$ROUNDS"); do
  start=$(date +%s.%N)
  K scale deployment/scale --replicas="$N" >/dev/null
  end_by=$((SECONDS + 300))
  until [ "$(ready)" = "$N" ]; do
    [ "$SECONDS" -lt "$end_by" ] || die "round $r: not $N Ready within 300 s (have $(ready))"
    sleep 0.25
  done
  t=$(echo "$(date +%s.%N) - $start" | bc)
  times+=("$t")
  printf 'cluster-scale: round %d: 0 -> %d Ready in %.1f s\n' "$r" "$N" "$t"
  K scale deployment/scale --replicas=0 >/dev/null
  end_by=$((SECONDS + 180))
  until [ -z "$(K get pods -l app=scale -o name)" ]; do
    [ "$SECONDS" -lt "$end_by" ] || die "round $r: pods not gone within 180 s"
    sleep 0.5
  done
done
median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
printf 'cluster-scale: median of %d rounds: %.1f s for 0 -> %d Ready\n' "$ROUNDS" "$median" "$N"
