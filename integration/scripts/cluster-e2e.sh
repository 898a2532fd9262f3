#!/usr/bin/env bash
# kubectl end to end on a local cluster whose runtime is Berth (issue 18): starts
# local-cluster.sh, runs each scenario below with kubectl against it, tears the cluster
# down whatever happens and checks that nothing it made is left. Run as root after
# `cargo build --workspace --bins` and the Kubernetes builds (build-kube.sh,
# build-kubelet.sh; cached in /var/cache/berth/tools/bin):
#
#   integration/scripts/cluster-e2e.sh            # everything, ~3-4 min here
#   integration/scripts/cluster-e2e.sh --keep     # leave the cluster up at the end (debugging)
#   integration/scripts/cluster-e2e.sh --replace  # first take down a cluster a killed run left
#                                                 # in $BERTH_CLUSTER_DIR (CI: its own dir);
#                                                 # refuses while any of its processes lives
#
# Every wait is bounded. On failure: `kubectl get pods -A -o wide`, the events and the
# tail of every component's log, then `down`. Exit code 0 only if every scenario passed
# and the teardown left nothing. A script, not a Rust test: each step is a kubectl
# command, and the cluster's binaries come from the Kubernetes builds, not from cargo.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="$REPO/integration/scripts/local-cluster.sh"
export BERTH_CLUSTER_DIR="${BERTH_CLUSTER_DIR:-/var/lib/berth-cluster}"
export BERTH_CLUSTER_RUN="${BERTH_CLUSTER_RUN:-/run/berthc}"
# Only busybox is pulled here: pushing critest's/nginx's images would take minutes.
export BERTH_CLUSTER_IMAGES="${BERTH_CLUSTER_IMAGES:-busybox}"
DIR="$BERTH_CLUSTER_DIR"
RUN="$BERTH_CLUSTER_RUN"
TOOLS="${BERTH_TOOLS_DIR:-/var/cache/berth/tools}/bin"
KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"
NODE=127.0.0.1
BRIDGE=berthc0
CGROUP_ROOT=berth-cluster
KEEP=0 REPLACE=0
for arg in "$@"; do
  case "$arg" in
    --keep) KEEP=1 ;;
    --replace) REPLACE=1 ;;
    *) echo "usage: $0 [--keep] [--replace]" >&2; exit 2 ;;
  esac
done

CURRENT="start"
RESULTS=()
BG=()                  # pids of kubectl port-forward / attach / logs -f we started
TMP=""
T0=$SECONDS

log() { echo "cluster-e2e: $*"; }
fail() { echo "cluster-e2e: FAIL [$CURRENT]: $*" >&2; exit 1; }

K() { timeout 150 "$TOOLS/kubectl-$KUBE_VERSION" --kubeconfig "$DIR/pki/admin.kubeconfig" "$@"; }
KBIN="$TOOLS/kubectl-$KUBE_VERSION --kubeconfig $DIR/pki/admin.kubeconfig"

# until SECONDS WHAT COMMAND... : polls every 0.5 s
until_ok() {
  local secs="$1" what="$2" end; shift 2
  end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || fail "$what: not within ${secs}s"
    sleep 0.5
  done
}

scenario() { # name function
  CURRENT="$1"
  local t=$SECONDS
  log "--- $1"
  "$2"
  RESULTS+=("$(printf '%-44s %4ss' "$1" $((SECONDS - t)))")
}

jp() { K get "$1" -o "jsonpath=$2"; } # object jsonpath
# grep -q in a pipeline can end it before the writer finishes: with pipefail that is a
# failure. q reads everything.
q() { grep "$@" >/dev/null; }
ready_is() { [ "$(jp "pod/$1" '{.status.conditions[?(@.type=="Ready")].status}')" = "$2" ]; }
restarts_at_least() { [ "$(jp "pod/$1" '{.status.containerStatuses[0].restartCount}')" -ge "$2" ]; }
logs_have() { K logs "$1" | q -- "$2"; }
serves() { http_from_client web | q "^web $1"; }
one_rs_with_pods() { [ "$(K get rs -l app=web -o 'jsonpath={range .items[*]}{.status.replicas}{" "}{end}' | tr ' ' '\n' | grep -c '^[1-9]')" = 1 ]; }
no_ready_web() { local out; out="$(jp deployment/web '{.status.readyReplicas}')" || return 1; [ -z "$out" ]; }
node_ready() { [ "$(jp "node/$NODE" '{.status.conditions[?(@.type=="Ready")].status}')" = True ]; }
no_pods() { local out; out="$(K get pods "$@" -o name)" || return 1; [ -z "$out" ]; }

# ------------------------------------------------------------------ teardown

dump() {
  echo "=== kubectl get pods -A -o wide" >&2
  K get pods -A -o wide >&2 || true
  echo "=== events" >&2
  K get events -A --sort-by=.lastTimestamp 2>&1 | tail -n 40 >&2 || true
  local f
  for f in "$DIR"/logs/*.log; do
    [ -f "$f" ] || continue
    echo "=== tail $f" >&2
    tail -n 15 "$f" >&2
  done
}

leaks() { # what `up` made that must be gone after `down`; prints each leak
  local p h c
  for p in /proc/[0-9]*; do
    c="$(tr '\0' ' ' 2>/dev/null < "$p/cmdline")" || continue
    if [[ "$c" == *"$DIR"* || "$c" == *"$RUN"* ]]; then echo "process ${p#/proc/}: ${c:0:120}"; fi
  done
  findmnt -rn -o TARGET | grep -E "^($DIR|$RUN)(/|$)" | sed 's/^/mount /' || true
  for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    [ -d "$h$CGROUP_ROOT" ] && echo "cgroup $h$CGROUP_ROOT"
  done
  ip link show "$BRIDGE" >/dev/null 2>&1 && echo "bridge $BRIDGE"
  iptables-save -t filter | grep -F -- "berth-cluster no egress" | sed 's/^/iptables filter /' || true
  iptables-save -t nat | grep -E -- "^:KUBE-(SERVICES|NODEPORTS|SVC-|SEP-|EXT-|PROXY-CANARY)|berth native network $BRIDGE\"" | sed 's/^/iptables nat /' || true
  iptables-save -t filter | grep -E -- "^:KUBE-(SERVICES|NODEPORTS|EXTERNAL-SERVICES|PROXY-FIREWALL|FORWARD|PROXY-CANARY)" | sed 's/^/iptables filter /' || true
  [ ! -e "$DIR" ] || echo "directory $DIR"
  [ ! -e "$RUN" ] || echo "directory $RUN"
  # netns: berthd pins them below $RUN (checked above); a named one would be here.
  ip netns list 2>/dev/null | grep -i berthc || true
}

finish() {
  local rc=$? p l
  trap - EXIT
  for p in "${BG[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  if [ "$rc" -ne 0 ] && [ -f "$DIR/pki/admin.kubeconfig" ]; then dump; fi
  if [ "$KEEP" = 1 ]; then
    log "--keep: cluster left up; take it down with $CLUSTER down"
  else
    CURRENT="down"
    local t=$SECONDS
    "$CLUSTER" down || rc=1
    RESULTS+=("$(printf '%-44s %4ss' "down" $((SECONDS - t)))")
    l="$(leaks)"
    if [ -n "$l" ]; then
      echo "cluster-e2e: FAIL [down]: left behind:" >&2
      echo "$l" >&2
      rc=1
    fi
  fi
  [ -z "$TMP" ] || rm -rf "$TMP"
  printf '%s\n' "${RESULTS[@]}"
  if [ "$rc" -eq 0 ]; then log "PASS in $((SECONDS - T0))s"; else log "FAILED ($rc) after $((SECONDS - T0))s"; fi
  exit "$rc"
}

# ------------------------------------------------------------------ scenarios

only_from() { # pod count: count requests through the Service, every one answered by pod
  local i
  for i in $(seq "$2"); do http_from_client web.default.svc.cluster.local | q "^web v1 $1\$" || return 1; done
}

http_from_client() { # target -> the response to GET / through the client pod
  K exec client -- sh -c "printf 'GET / HTTP/1.0\r\nHost: web\r\n\r\n' | nc -w 5 $1 80"
}

refused_from_client() { ! http_from_client "$1" > "$TMP/refused" 2>&1 && q "Connection refused" < "$TMP/refused"; }

web_pods() { K get pods -l app=web --field-selector=status.phase=Running -o 'jsonpath={.items[*].metadata.name}'; }

# A Deployment of busybox httpd (2 replicas) with readiness (/ready) and liveness
# (/healthz) probes, a ClusterIP Service, and a client pod; the Service answers by its
# DNS name and its ClusterIP (kube-proxy's iptables rules), from both replicas.
deploy_web() { # version
  K apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  strategy: {rollingUpdate: {maxUnavailable: 0, maxSurge: 1}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: web
        image: busybox
        env: [{name: VERSION, value: "$1"}]
        command: [sh, -c, 'mkdir /www && echo "web \$VERSION \$(hostname)" > /www/index.html && echo ok > /www/ready && echo ok > /www/healthz && exec httpd -f -p 80 -h /www']
        ports: [{containerPort: 80}]
        # Generous timeouts: a loaded CI machine must not fail a probe by slowness (a
        # spurious liveness restart would break the restart-count checks below).
        readinessProbe: {httpGet: {path: /ready, port: 80}, periodSeconds: 1, failureThreshold: 1, timeoutSeconds: 5}
        livenessProbe: {httpGet: {path: /healthz, port: 80}, periodSeconds: 2, failureThreshold: 3, timeoutSeconds: 5}
EOF
}

s_service() {
  deploy_web v1
  K apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: client, image: busybox, command: [sleep, "3600"]}
EOF
  K rollout status deployment/web --timeout=90s >/dev/null || fail "web not rolled out"
  K wait --for=condition=Ready pod/client --timeout=60s >/dev/null || fail "client not Ready"
  local ip seen="" i out
  ip="$(jp service/web '{.spec.clusterIP}')"
  # CoreDNS answers with the ClusterIP as soon as the Service exists; kube-proxy programs
  # it a moment later. Until then a request would be forwarded like any other address.
  until_ok 30 "kube-proxy's rules for default/web" svc_programmed
  # Both replicas answer through the Service's DNS name (CoreDNS -> ClusterIP -> kube-proxy).
  for i in $(seq 30); do
    out="$(http_from_client web.default.svc.cluster.local)" || true
    echo "$out" | q "200 OK" || { sleep 0.5; continue; }
    seen="$seen $(echo "$out" | awk '/^web v1/ {print $3}')"
    [ "$(echo "$seen" | tr ' ' '\n' | sort -u | grep -c .)" -ge 2 ] && break
  done
  [ "$(echo "$seen" | tr ' ' '\n' | sort -u | grep -c .)" -ge 2 ] ||
    fail "web.default.svc.cluster.local: not both replicas answered (saw:$seen)"
  http_from_client "$ip" | q '^web v1' || fail "ClusterIP $ip did not answer"
  # busybox wget by the short name (search domains); bounded by timeout(1), not wget -T:
  # Debian's busybox < 1.36.1-5 is built without -T support and -T writes through NULL
  # (SIGSEGV, exit 139, on the host too): docs/cluster.md.
  K exec client -- timeout 10 wget -q -O- http://web/ | q '^web v1' || fail "wget http://web/ from the client"
  K exec client -- nslookup web.default.svc.cluster.local | awk -v ip="$ip" '$1 == "Address:" && $2 == ip' | q . ||
    fail "nslookup web.default.svc.cluster.local did not give $ip"
}

# kube-proxy has a KUBE-SVC chain for default/web, reached from KUBE-SERVICES.
svc_programmed() { iptables-save -t nat | q -E -- '^-A KUBE-SERVICES .*"default/web(:[^ ]*)? cluster IP".* -j KUBE-SVC-'; }

EGRESS_RULE=(-s 10.244.0.0/24 ! -d 10.244.0.0/24 -m comment --comment "berth-cluster no egress" -j REJECT)

# Nothing from a pod leaves the machine: a connection to an address that is neither a pod
# nor a Service is refused at once by up's FORWARD rule. 10.0.0.200 is inside this
# cluster's own Service range and has no Service, so even without the rule nothing of
# ours would be answered there, and it is only tried once the rule is in place.
s_no_egress() {
  iptables -C FORWARD "${EGRESS_RULE[@]}" 2>/dev/null || fail "up did not insert the no-egress FORWARD rule"
  local ips
  ips="$(K get services -A -o jsonpath='{range .items[*]}{.spec.clusterIP}{"\n"}{end}')" || fail "listing Services"
  ! echo "$ips" | q -xF 10.0.0.200 || fail "10.0.0.200 is a Service's ClusterIP here; pick another unused address"
  local out rc=0 t=$SECONDS
  out="$(K exec client -- sh -c 'printf x | nc -w 5 10.0.0.200 80' 2>&1)" || rc=$?
  [ "$rc" -ne 0 ] || fail "10.0.0.200:80 answered from a pod: $out"
  echo "$out" | q "Connection refused" || fail "10.0.0.200:80 from a pod: not refused: $out"
  [ $((SECONDS - t)) -lt 5 ] || fail "10.0.0.200:80 refused only after $((SECONDS - t))s"
}

web_endpoint_ready() { # ip -> "true"/"false" in web's EndpointSlices
  K get endpointslices -l kubernetes.io/service-name=web \
    -o 'jsonpath={range .items[*].endpoints[*]}{.addresses[0]} {.conditions.ready}{"\n"}{end}' |
    awk -v ip="$1" '$1 == ip {print $2}'
}
endpoint_not_ready() { [ "$(web_endpoint_ready "$1")" = false ]; }
# kube-proxy no longer DNATs default/web to ip.
not_in_rules() { ! iptables-save -t nat | grep -F '"default/web' | q -F -- " --to-destination $1:80"; }

s_probes() {
  local a b
  read -r a b <<<"$(web_pods)"
  [ -n "$b" ] || fail "two web pods expected"
  # Readiness: without /ready, pod a leaves the Service; the Service answers only from b.
  local aip
  aip="$(jp "pod/$a" '{.status.podIP}')"
  [ -n "$aip" ] || fail "$a has no IP"
  K exec "$a" -- rm /www/ready
  until_ok 30 "$a not Ready after its readiness probe failed" ready_is "$a" False
  until_ok 30 "$a's address not ready in web's EndpointSlice" endpoint_not_ready "$aip"
  until_ok 30 "kube-proxy still sends default/web to unready $a ($aip)" not_in_rules "$aip"
  # From then on, every request is b's.
  only_from "$b" 20 || fail "unready $a served through the Service"
  K exec "$a" -- sh -c 'echo ok > /www/ready'
  until_ok 30 "$a Ready again" K wait --for=condition=Ready "pod/$a" --timeout=2s
  # Liveness: without /healthz, kubelet restarts b's container.
  local base
  base="$(jp "pod/$b" '{.status.containerStatuses[0].restartCount}')"
  K exec "$b" -- rm /www/healthz
  until_ok 60 "$b restarted by its liveness probe" restarts_at_least "$b" $((base + 1))
  until_ok 30 "$b Ready after its restart" K wait --for=condition=Ready "pod/$b" --timeout=2s
}

s_logs() {
  K apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Pod
metadata: {name: ticker}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: ticker, image: busybox, command: [sh, -c, 'i=0; while true; do echo "tick $i"; i=$((i+1)); sleep 0.3; done']}
---
apiVersion: v1
kind: Pod
metadata: {name: crashonce}
spec:
  terminationGracePeriodSeconds: 1
  volumes: [{name: state, emptyDir: {}}]
  containers:
  - name: crashonce
    image: busybox
    volumeMounts: [{name: state, mountPath: /state}]
    command: [sh, -c, 'if [ -f /state/ran ]; then echo "second run"; exec sleep 3600; fi; touch /state/ran; echo "first run"; exit 3']
EOF
  K wait --for=condition=Ready pod/ticker --timeout=60s >/dev/null || fail "ticker not Ready"
  until_ok 20 "ticker logged" logs_have ticker "tick 2"
  # -f follows: lines written after it started arrive, and it keeps running.
  local before after rc=0
  before="$(K logs ticker | tail -n1 | awk '{print $2}')"
  timeout 15 $KBIN logs -f --tail=1 ticker > "$TMP/follow" || rc=$?
  [ "$rc" = 124 ] || fail "kubectl logs -f ended by itself ($rc)"
  after="$(tail -n1 "$TMP/follow" | awk '{print $2}')"
  [ "$(wc -l < "$TMP/follow")" -ge 5 ] && [ "${after:-0}" -gt "$((before + 4))" ] ||
    fail "logs -f did not follow (last before: $before, followed: $(wc -l < "$TMP/follow") lines up to ${after:-none})"
  # --previous: the crashed first run's output, and why it ended.
  until_ok 90 "crashonce restarted and Ready" sh -c \
    "[ \"\$(timeout 10 $KBIN get pod crashonce -o 'jsonpath={.status.containerStatuses[0].restartCount}/{.status.containerStatuses[0].ready}')\" = 1/true ]"
  [ "$(K logs crashonce --previous)" = "first run" ] || fail "logs --previous: $(K logs crashonce --previous)"
  [ "$(K logs crashonce)" = "second run" ] || fail "logs: $(K logs crashonce)"
  [ "$(jp pod/crashonce '{.status.containerStatuses[0].lastState.terminated.exitCode}')" = 3 ] ||
    fail "lastState exit code is not 3"
}

s_exec_tty() {
  # kubectl exec -it needs a terminal on its own stdin: script(1) gives it a pty.
  local rc=0
  printf 'tty\necho product-$((6*7))\nexit 7\n' |
    timeout 30 script -qec "$KBIN exec -it client -- sh" "$TMP/exec.typescript" >/dev/null || rc=$?
  [ "$rc" = 7 ] || fail "kubectl exec -it: exit code $rc, not the shell's 7"
  grep -q "/dev/pts/" "$TMP/exec.typescript" || fail "exec -it: the shell had no terminal: $(cat "$TMP/exec.typescript")"
  grep -q "product-42" "$TMP/exec.typescript" || fail "exec -it: no output of the typed command"
  # Without -t: plain pipes, stdin reaches the command, exit code comes back.
  [ "$(echo abc | K exec -i client -- sh -c 'tr a-z A-Z; exit 0')" = ABC ] || fail "exec -i stdin"
  rc=0; K exec client -- sh -c 'exit 5' || rc=$?
  [ "$rc" = 5 ] || fail "exec exit code $rc, not 5"
}

s_attach() {
  K apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Pod
metadata: {name: reader}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: reader, image: busybox, stdin: true, command: [sh, -c, 'echo reading; while read l; do echo "got $l"; done; sleep 3600']}
EOF
  K wait --for=condition=Ready pod/reader --timeout=60s >/dev/null || fail "reader not Ready"
  until_ok 20 "reader started" logs_have reader reading
  # attach -i: our line reaches the container's stdin; its answer comes back through attach.
  # attach's stdin is a FIFO this shell holds open (no feeder process to leak).
  mkfifo "$TMP/attach.in"
  $KBIN attach -i reader < "$TMP/attach.in" > "$TMP/attach" 2>&1 &
  BG+=($!)
  exec 7> "$TMP/attach.in"
  sleep 2
  echo hello-attach >&7
  until_ok 30 "the attached line reached the container" logs_have reader "got hello-attach"
  until_ok 15 "attach's output stream" grep -q "got hello-attach" "$TMP/attach"
  exec 7>&-
  stop_bg
}

# Stops the last background job: killed, reaped, forgotten (finish must not signal a pid
# that may have been reused since).
stop_bg() {
  local p="${BG[-1]}"
  kill "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  unset 'BG[-1]'
}

s_port_forward() {
  local port
  port=$((20000 + RANDOM % 10000))
  while [ -n "$(ss -Htln "sport = :$port")" ]; do port=$((port + 1)); done
  $KBIN port-forward deployment/web "$port:80" > "$TMP/pf" 2>&1 &
  BG+=($!)
  until_ok 30 "port-forward 127.0.0.1:$port -> web:80" sh -c "curl -sf --max-time 2 http://127.0.0.1:$port/ | grep '^web v1'"
  stop_bg
}

s_cp() {
  head -c 300000 /dev/urandom > "$TMP/up.bin"
  K cp "$TMP/up.bin" default/client:/tmp/up.bin
  [ "$(K exec client -- md5sum /tmp/up.bin | cut -d' ' -f1)" = "$(md5sum < "$TMP/up.bin" | cut -d' ' -f1)" ] ||
    fail "cp to the pod: contents differ"
  K exec client -- sh -c 'mkdir -p /tmp/out && echo made-in-pod > /tmp/out/a && head -c 100000 /dev/urandom > /tmp/out/b'
  K cp default/client:/tmp/out "$TMP/out" >/dev/null
  [ "$(cat "$TMP/out/a")" = made-in-pod ] || fail "cp from the pod: a"
  [ "$(md5sum < "$TMP/out/b" | cut -d' ' -f1)" = "$(K exec client -- md5sum /tmp/out/b | cut -d' ' -f1)" ] ||
    fail "cp from the pod: b differs"
}

s_rolling_update() {
  local old
  old="$(web_pods)"
  deploy_web v2
  K rollout status deployment/web --timeout=120s >/dev/null || fail "v2 not rolled out"
  local p
  for p in $old; do
    K wait --for=delete "pod/$p" --timeout=30s >/dev/null 2>&1 || ! K get pod "$p" >/dev/null 2>&1 || fail "old pod $p remains"
  done
  until_ok 20 "the Service serves v2" serves v2
  until_ok 20 "one ReplicaSet with pods" one_rs_with_pods
}

s_scale() {
  K scale deployment/web --replicas=0 >/dev/null
  until_ok 60 "web scaled to 0" no_pods -l app=web
  # kube-proxy REJECTs a Service without endpoints: refused, not merely failed (a broken
  # exec or DNS would fail too).
  until_ok 20 "the Service with no replicas refused (kube-proxy's REJECT)" refused_from_client web
  K scale deployment/web --replicas=2 >/dev/null
  K rollout status deployment/web --timeout=90s >/dev/null || fail "web not back at 2"
  until_ok 20 "the Service answers again" serves v2
}

s_oom() {
  K apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Pod
metadata: {name: oom}
spec:
  restartPolicy: Never
  containers:
  - name: oom
    image: busybox
    resources: {limits: {memory: 32Mi}, requests: {memory: 32Mi}}
    # dd is the container's process: its 128 MiB buffer is filled from /dev/zero.
    command: [dd, if=/dev/zero, of=/dev/null, bs=128M, count=1]
EOF
  until_ok 60 "oom terminated" sh -c "timeout 10 $KBIN get pod oom -o 'jsonpath={.status.containerStatuses[0].state.terminated.reason}' | grep ."
  local reason code
  reason="$(jp pod/oom '{.status.containerStatuses[0].state.terminated.reason}')"
  code="$(jp pod/oom '{.status.containerStatuses[0].state.terminated.exitCode}')"
  [ "$reason" = OOMKilled ] || fail "reason $reason (exit $code), not OOMKilled"
  [ "$code" = 137 ] || fail "exit code $code, not 137"
  K delete pod oom --wait=false >/dev/null
}

s_job() {
  K apply -f - >/dev/null <<'EOF'
apiVersion: batch/v1
kind: Job
metadata: {name: count}
spec:
  completions: 2
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: count, image: busybox, command: [sh, -c, 'echo "job pod $(hostname) done"']}
EOF
  K wait --for=condition=complete job/count --timeout=90s >/dev/null || fail "job not complete"
  [ "$(jp job/count '{.status.succeeded}')" = 2 ] || fail "job: succeeded != 2"
  K logs job/count | q "done" || fail "job logs"
  K delete job count --wait=false >/dev/null
}

# name uid containerID restartCount, of every pod that runs, as the API shows it; and
# every running container's id, creation time and state as the runtime itself reports
# them: must not change across a restart.
pod_snapshot() {
  K get pods --field-selector=status.phase=Running -o \
    'jsonpath={range .items[*]}{.metadata.name} {.metadata.uid}{range .status.containerStatuses[*]} {.containerID} {.restartCount}{end}{"\n"}{end}' | sort
  timeout 30 "$TOOLS/crictl" --runtime-endpoint "unix://$DIR/berth.sock" --timeout 20s ps -o json 2> "$TMP/crictl.err" |
    grep -oE '"(id|createdAt|state)": *"[^"]*"' | paste -d' ' - - - | sed 's/^/runtime /' | sort
}

# The node's Ready condition was heartbeated after epoch second $1: kubelet posts the node's
# status when it starts, once it has synced with the runtime (later only every 5 min).
heartbeat_after() {
  local hb
  hb="$(jp "node/$NODE" '{.status.conditions[?(@.type=="Ready")].lastHeartbeatTime}')" || return 1
  [ -n "$hb" ] && [ "$(date -d "$hb" +%s)" -gt "$1" ]
}
# kubelet renewed its node Lease after epoch second $1 (every 10 s): it has been running
# since then, relisting the runtime every second.
lease_after() {
  local r
  r="$(K get lease -n kube-node-lease "$NODE" -o 'jsonpath={.spec.renewTime}')" || return 1
  [ -n "$r" ] && [ "$(date -d "$r" +%s)" -gt "$1" ]
}

all_ready() {
  local out
  out="$(K get pods --field-selector=status.phase=Running -o 'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}')" || return 1
  ! echo "$out" | q -v True
}

restart_component() { # kubelet|berthd
  local before after
  until_ok 30 "every pod Ready before the restart" all_ready
  before="$(pod_snapshot)"
  [ "$(echo "$before" | grep -vc '^runtime ')" -ge 5 ] || fail "expected >= 5 running pods, have: $before"
  [ "$(echo "$before" | grep -c '^runtime ')" -ge 5 ] || fail "expected >= 5 running containers, have: $before"
  local t0
  t0="$(date +%s)"
  "$CLUSTER" restart "$1" >/dev/null
  local t1
  t1="$(date +%s)"
  until_ok 60 "node Ready after restarting $1" node_ready
  # kubelet has synced with the runtime again: a restarted kubelet posts the node's status
  # once it has; after berthd's restart, kubelet renews its Lease at least once more.
  # 180 s: CI runs this beside the fuzz step on 2 cores, where a restarted kubelet once
  # took over 60 s to post its first status (the pods were all still running).
  [ "$1" != kubelet ] || until_ok 180 "a node heartbeat after restarting kubelet" heartbeat_after "$t0"
  until_ok 30 "a node Lease renewal after restarting $1" lease_after "$t1"
  until_ok 30 "every pod Ready after restarting $1" all_ready
  after="$(pod_snapshot)"
  [ "$before" = "$after" ] || fail "pods changed across the $1 restart:
before:
$before
after:
$after"
  # The node still works: exec, logs and the Service.
  [ "$(K exec client -- echo alive)" = alive ] || fail "exec after restarting $1"
  K logs --tail=1 ticker | q tick || fail "logs after restarting $1"
  # A restarted kubelet reports readiness anew (unknown, then ready at the first probe):
  # the EndpointSlice and kube-proxy follow a moment later, so the Service gets a bound.
  until_ok 30 "the Service after restarting $1" serves v2
}

s_restart_kubelet() { restart_component kubelet; }
s_restart_berthd() { restart_component berthd; }

s_drain() {
  K drain "$NODE" --ignore-daemonsets --delete-emptydir-data --force --grace-period=2 --timeout=90s > "$TMP/drain" 2>&1 ||
    fail "drain: $(tail -n 5 "$TMP/drain")"
  [ "$(jp "node/$NODE" '{.spec.unschedulable}')" = true ] || fail "node not cordoned"
  until_ok 60 "every pod gone from the drained node" no_pods --field-selector=status.phase=Running
  until_ok 30 "web without ready replicas on a drained node" no_ready_web
  K uncordon "$NODE" >/dev/null
  K rollout status deployment/web --timeout=90s >/dev/null || fail "web not back after uncordon"
}

s_node() {
  local rt
  rt="$(jp "node/$NODE" '{.status.nodeInfo.containerRuntimeVersion}')"
  case "$rt" in berth://*) ;; *) fail "node's runtime is '$rt', not berth://" ;; esac
  log "node runtime: $rt"
}

# ------------------------------------------------------------------ main

[ "$(id -u)" = 0 ] || { echo "cluster-e2e: run as root" >&2; exit 1; }
for t in script curl iptables-save; do command -v "$t" >/dev/null || { echo "cluster-e2e: $t missing" >&2; exit 1; }; done
alive_in_dir() { # pids recorded in $DIR/pids whose process still names $DIR
  local f p
  for f in "$DIR"/pids/*.pid; do
    [ -f "$f" ] || continue
    p="$(cat "$f")"
    [ -n "$p" ] && [ -r "/proc/$p/cmdline" ] && tr '\0' ' ' < "/proc/$p/cmdline" | q -F -- "$DIR" && echo "$p"
  done
  return 0
}
if [ -e "$DIR" ] && [ "$REPLACE" = 1 ]; then
  # Only a dead cluster: one whose processes still run is someone's (or a run still going).
  alive="$(alive_in_dir)"
  if [ -n "$alive" ]; then
    echo "cluster-e2e: --replace: the cluster in $DIR still runs (pids $(echo $alive)); not touching it" >&2
    exit 1
  fi
  if [ -n "$(ss -Htln "sport = :${BERTH_CLUSTER_API_PORT:-6443}")" ]; then
    echo "cluster-e2e: --replace: another cluster holds the API port; not taking anything down" >&2
    exit 1
  fi
  log "--replace: taking down the dead cluster an earlier run left in $DIR"
  "$CLUSTER" down
fi
if [ -e "$DIR" ]; then
  echo "cluster-e2e: $DIR exists (a cluster is up?): '$CLUSTER down' first" >&2
  exit 1
fi
TMP="$(mktemp -d /tmp/berth-cluster-e2e.XXXXXX)"
trap finish EXIT
trap 'exit 130' INT TERM

CURRENT="up"
t=$SECONDS
"$CLUSTER" up
RESULTS+=("$(printf '%-44s %4ss' "up (to node Ready and CoreDNS)" $((SECONDS - t)))")
until_ok 60 "service account default/default" K get serviceaccount default

scenario "node runtime is berth://"                    s_node
scenario "Deployment+probes+Service by DNS and IP"     s_service
scenario "pods cannot reach outside (REJECTed)"       s_no_egress
scenario "readiness and liveness probes act"           s_probes
scenario "logs, logs -f, logs --previous"              s_logs
scenario "exec -it through a pty, exec -i"             s_exec_tty
scenario "attach -i"                                   s_attach
scenario "port-forward"                                s_port_forward
scenario "cp to and from a pod"                        s_cp
scenario "rolling update v1 -> v2"                     s_rolling_update
scenario "scale to 0 and back to 2"                    s_scale
scenario "OOM-killed pod reported OOMKilled"           s_oom
scenario "Job to completion (2 pods)"                  s_job
scenario "kubelet restarted: no pod lost"              s_restart_kubelet
scenario "berthd restarted: no pod lost"               s_restart_berthd
scenario "node drain and uncordon"                     s_drain
CURRENT="done"
