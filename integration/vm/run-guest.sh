#!/bin/bash
# The VM lane's runner inside the guest (started as root by the baked berth-vm-run unit
# once the guest is up; its output goes to out/runner.log). Read-only share at
# /mnt/berth (bin/, vm/, deploy/, lane.env), the registry storage at /mnt/berth-registry, results in /mnt/berth-out:
#   out/<test>.log   the test's output     out/<test>.rc   its exit code
#   out/summary      one line per test: PASS|FAIL|SKIP <test> <seconds>s
#   out/journal.log, out/berthd.log  the guest's journal and berthd's unit log, at the end
# The node is set up once (setup_node below); tests run in name order, each with a
# time limit; a test file whose head says `# vm-lane: full` runs only in --full mode.
set -uo pipefail
IN=/mnt/berth
OUT=/mnt/berth-out
# shellcheck source=/dev/null
. "$IN/lane.env"     # LANE_MODE (ci|full), LANE_FILTER (a grep -E regex or empty)
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export BERTH_VM_IN=$IN BERTH_VM_OUT=$OUT
log() { printf '[guest %s] %s\n' "$(date +%T)" "$*"; }

log "kernel $(uname -r); cgroup: $(stat -fc %T /sys/fs/cgroup); controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
log "apparmor: $(cat /sys/module/apparmor/parameters/enabled 2>/dev/null || echo absent); PID 1: $(cat /proc/1/comm)"

setup_node() {
  # The host's build, where deploy/berthd.service expects it, and the test tools:
  # symlinks into the share (~500 MB of debug binaries are not copied; 9p with
  # cache=loose keeps what was read). berthd finds berth-monitor and berth-runtime
  # next to its resolved path, in the share.
  for b in "$IN"/bin/*; do ln -sf "$b" "/usr/local/bin/${b##*/}"; done
  mkdir -p /etc/berth /etc/berth/certs.d
  install -m 0644 "$IN/deploy/config.toml" /etc/berth/config.toml
  # Every upstream registry critest and kubelet name is served by the in-guest registry.
  for h in registry.k8s.io gcr.io k8s.gcr.io docker.io; do
    mkdir -p "/etc/berth/certs.d/$h"
    printf 'server = "http://127.0.0.1:5000"\n' > "/etc/berth/certs.d/$h/hosts.toml"
  done
  # The in-guest registry, on the storage built on the host (read-only share).
  mkdir -p /etc/berth-vm /mnt/berth-registry
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,ro,cache=loose berthreg /mnt/berth-registry || return 1
  cat > /etc/berth-vm/registry.yml <<REG
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: /mnt/berth-registry
  maintenance:
    readonly:
      enabled: true
  redirect:
    disable: true
http:
  addr: 127.0.0.1:5000
REG
  systemd-run --unit=berth-vm-registry --property=Type=exec \
    /usr/bin/docker-registry serve /etc/berth-vm/registry.yml || return 1
  # berthd as the node runs it: deploy/berthd.service, started by systemd.
  install -m 0644 "$IN/deploy/berthd.service" /etc/systemd/system/berthd.service
  systemctl daemon-reload
  systemctl enable --now berthd.service || { systemctl status berthd --no-pager; return 1; }
  # crictl's default 2 s timeout is too short for a first call under TCG on a busy host.
  printf 'runtime-endpoint: unix:///run/berth/berth.sock\nimage-endpoint: unix:///run/berth/berth.sock\ntimeout: 300\n' > /etc/crictl.yaml
  crictl version || return 1
  for _ in $(seq 1 50); do
    curl_ok=$(busybox wget -q -O- http://127.0.0.1:5000/v2/ 2>/dev/null && echo y)
    [ -n "$curl_ok" ] && break
    sleep 0.2
  done
  [ -n "$curl_ok" ] || { log "the in-guest registry does not answer"; journalctl -u berth-vm-registry --no-pager | tail -20; return 1; }
  # Every test uses the busybox image: pulled once here (slow under TCG).
  local t=$SECONDS
  crictl pull registry.k8s.io/e2e-test-images/busybox:1.29-2 || return 1
  log "busybox pulled in $((SECONDS - t))s"
}

# berthd's journal as it is written, for looking in while the guest runs (the
# host's run dir out/berthd.live.log; `--keep-out` keeps it).
journalctl -u berthd -f --no-pager -o short-precise >"$OUT/berthd.live.log" 2>&1 &
follower=$!
fails=0
t0=$SECONDS
if ! setup_node >"$OUT/00-setup.log" 2>&1; then
  log "node setup failed:"; cat "$OUT/00-setup.log"
  echo "FAIL setup $((SECONDS - t0))s" >> "$OUT/summary"
  fails=1
else
  echo "PASS setup $((SECONDS - t0))s" >> "$OUT/summary"
  log "node set up in $((SECONDS - t0))s"
  # Each test starts from the node's own berthd config: a test that changes it restores
  # it itself, but one killed by its time limit cannot, and the next would run on it.
  cp /etc/berth/config.toml /run/berth-lane-config.toml
  for t in "$IN"/vm/tests/[0-9][0-9]-*.sh; do
    name=$(basename "$t" .sh)
    if [ -n "${LANE_FILTER:-}" ] && ! grep -Eq -- "$LANE_FILTER" <<<"$name"; then continue; fi
    if [ "${LANE_MODE:-ci}" != full ] && head -n 5 "$t" | grep -q '^# vm-lane: full'; then
      echo "SKIP $name 0s (--full only)" >> "$OUT/summary"; continue
    fi
    limit=$(sed -n 's/^# vm-lane: timeout \([0-9]*\).*/\1/p' "$t" | head -n1)
    limit=${limit:-300}
    log "running $name (limit ${limit}s)"
    start=$SECONDS; start_epoch=$(date +%s); rc=0
    (cd /tmp && timeout --kill-after=10 "$limit" bash "$t") >"$OUT/$name.log" 2>&1 || rc=$?
    echo "$rc" > "$OUT/$name.rc"
    if [ "$rc" -eq 0 ]; then r=PASS; else r=FAIL; fails=$((fails + 1)); fi
    [ "$rc" -ne 124 ] || echo "timed out after ${limit}s" >> "$OUT/$name.log"
    if [ "$rc" -ne 0 ]; then
      { echo "--- berthd's journal during the test (tail) ---"
        journalctl -u berthd --no-pager -o short-precise --since "@$start_epoch" | tail -n 40; } >> "$OUT/$name.log" 2>&1
    fi
    echo "$r $name $((SECONDS - start))s" >> "$OUT/summary"
    log "$r $name in $((SECONDS - start))s"
    if ! cmp -s /run/berth-lane-config.toml /etc/berth/config.toml; then
      log "$name left berthd's config changed: restoring it"
      cp /run/berth-lane-config.toml /etc/berth/config.toml
      systemctl restart berthd || log "berthd did not restart on the node's config"
    fi
  done
fi
kill "$follower" 2>/dev/null
journalctl -u berthd --no-pager > "$OUT/berthd.log" 2>&1
journalctl -b --no-pager > "$OUT/journal.log" 2>&1
log "done: $fails failed"
exit "$fails"
