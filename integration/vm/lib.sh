# Helpers for the VM lane's guest tests (integration/vm/tests/*.sh): source it first.
# The node is set up by run-guest.sh: berthd runs as the systemd unit berthd.service
# on /run/berth/berth.sock (crictl is configured for it in /etc/crictl.yaml), and the
# in-guest registry serves critest's images under their upstream names.
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
say() { printf '[%s %s] %s\n' "$(date +%T)" "${0##*/}" "$*"; }
fail() { say "FAIL: $*"; exit 1; }
BUSYBOX=registry.k8s.io/e2e-test-images/busybox:1.29-2

# Cleanup of what a test made, whatever happens: `on_exit CMD...` adds a command (also
# from inside $(...): the list is a file); they run in reverse order at exit.
TEST_TMP=$(mktemp -d /tmp/vmtest.XXXXXX)
on_exit() { printf '%s\n' "$*" >> "$TEST_TMP/cleanup"; }
_run_cleanups() {
  if [ -f "$TEST_TMP/cleanup" ]; then
    tac "$TEST_TMP/cleanup" | while IFS= read -r c; do eval "$c" </dev/null >/dev/null 2>&1 || true; done
  fi
  rm -rf "$TEST_TMP"
}
trap _run_cleanups EXIT

# pod_json NAME [EXTRA_LINUX_JSON]: a pod sandbox config; the extra goes in "linux".
pod_json() {
  local f=$TEST_TMP/pod-$1.json
  cat > "$f" <<JSON
{ "metadata": { "name": "$1", "namespace": "vmlane", "uid": "$1-uid", "attempt": 0 },
  "log_directory": "$TEST_TMP/logs-$1",
  "linux": { ${2:-} } }
JSON
  echo "$f"
}
# ctr_json NAME IMAGE CMD_JSON [EXTRA_LINUX_JSON]
ctr_json() {
  local f=$TEST_TMP/ctr-$1.json
  cat > "$f" <<JSON
{ "metadata": { "name": "$1" }, "image": { "image": "$2" }, "command": $3,
  "log_path": "$1.log",
  "linux": { ${4:-} } }
JSON
  echo "$f"
}
# run_pod NAME [EXTRA_LINUX_JSON] -> pod id (removed at exit)
run_pod() {
  local f id; f=$(pod_json "$@")
  id=$(crictl runp "$f") || fail "runp $1"
  on_exit crictl rmp -f "$id"
  ln -s "$f" "$TEST_TMP/podcfg-$id"
  echo "$id"
}
# run_ctr POD NAME IMAGE CMD_JSON [EXTRA_LINUX_JSON] -> started container id
run_ctr() {
  local pod=$1 name=$2; shift 2
  local f id; f=$(ctr_json "$name" "$@")
  id=$(crictl create "$pod" "$f" "$TEST_TMP/podcfg-$pod") || fail "create $name"
  crictl start "$id" >/dev/null || fail "start $name"
  echo "$id"
}
# ctr_cgroup ID: the container's cgroup v2 directory.
ctr_cgroup() {
  local pid; pid=$(crictl inspect -o go-template --template '{{.info.pid}}' "$1")
  [ -n "$pid" ] && [ "$pid" != "<no value>" ] || fail "no pid for $1"
  echo "/sys/fs/cgroup$(cut -d: -f3 "/proc/$pid/cgroup")"
}
# wait_for SECONDS CMD...: until CMD succeeds or the time is up.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do ((SECONDS < deadline)) || return 1; sleep 0.5; done
}
