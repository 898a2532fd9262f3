#!/usr/bin/env bash
# Berth's whole test suite, exactly as CI runs it (`.ci/run` calls this script).
# Run it as root on a Debian/Ubuntu machine with Rust and Go: it installs what is
# missing (Debian packages, crictl/critest/grpcurl, cargo-nextest), then checks the
# vendored proto, formatting and lints, builds, and runs every test (the ones that
# need root one at a time).
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" -ne 0 ]; then
  echo "run-tests: Berth's tests create namespaces, mounts and cgroups: run as root" >&2
  exit 1
fi

step() { printf '\n=== %s\n' "$*"; }

step "installing dependencies"
# shellcheck source=install-deps.sh
source integration/scripts/install-deps.sh --all

# The VM lane's guest image (Debian packages, debootstrap: mostly download and unpack) is
# built in the background while the Rust build runs; cached, so usually instant.
vm_image_pid="" vm_lane_pid="" vm_image_log="" vm_lane_log=""
cluster_pid="" cluster_log="" cluster_go=""
# A failed step ends the script: stop what still runs in the background. Each job runs in
# its own session (setsid), so the whole group is signalled — debootstrap, mkfs, QEMU —
# not only the script at its head (vm-lane.sh's own trap then removes its files). What a
# stopped job had written is printed (its tail) before its log is removed.
stop_background() {
  local p f
  for p in $vm_image_pid $vm_lane_pid $cluster_pid; do kill -TERM -- "-$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for f in "$vm_image_log" "$vm_lane_log" "$cluster_log"; do
    [ -s "$f" ] || continue
    printf '\n=== last lines of %s\n' "$f" >&2
    tail -n 30 "$f" >&2
  done
  rm -f "$vm_image_log" "$vm_lane_log" "$cluster_log"
  [ -z "$cluster_go" ] || rm -rf "$cluster_go"
}
trap stop_background EXIT
if [ "$#" -eq 0 ] && [ "${BERTH_VM_LANE:-1}" != 0 ]; then
  vm_image_log=$(mktemp /tmp/berth-vm-image.XXXXXX.log)
  setsid integration/vm/build-image.sh > "$vm_image_log" 2>&1 < /dev/null &
  vm_image_pid=$!
fi
# kubectl end to end on a local cluster on Berth (integration/scripts/cluster-e2e.sh,
# docs/cluster.md), one background job started now: first the cluster's Kubernetes
# binaries (build-kube.sh: control plane, kubectl, etcd, CoreDNS; kubelet comes with
# install-deps.sh; cached in /var/cache/berth/tools/bin, so usually instant, on a fresh
# machine ~15-20 CPU-minutes of Go builds at nice 19), then it waits for the go-ahead
# file (made once the bins are built and the tests ran), then the end to end (~4 min).
# Nothing waits for it before the end, so a fresh machine's Go builds overlap everything.
# CI's cluster lives in its own directories: --replace there never touches a cluster
# someone started by hand in the default ones. Skipped when a test filter was given, or
# with BERTH_CLUSTER_E2E=0.
if [ "$#" -eq 0 ] && [ "${BERTH_CLUSTER_E2E:-1}" != 0 ]; then
  cluster_log=$(mktemp /tmp/berth-cluster-e2e.XXXXXX.log)
  cluster_go=$(mktemp -d /tmp/berth-cluster-go.XXXXXX)
  BERTH_CLUSTER_DIR=/var/lib/berth-cluster-ci BERTH_CLUSTER_RUN=/run/berthci \
    setsid bash -c '
      integration/scripts/build-kube.sh || { echo "run-tests: building the local cluster'"'"'s Kubernetes binaries failed"; exit 1; }
      while [ ! -e "$1/go" ]; do sleep 2; done
      exec integration/scripts/cluster-e2e.sh --replace' cluster-e2e "$cluster_go" > "$cluster_log" 2>&1 < /dev/null &
  cluster_pid=$!
fi
wait_vm_image() {
  [ -n "$vm_image_pid" ] || return 0
  if ! wait "$vm_image_pid"; then
    cat "$vm_image_log" >&2
    echo "run-tests: building the VM lane's guest image failed" >&2
    exit 1
  fi
  vm_image_pid=""
  rm -f "$vm_image_log"
}

step "vendored CRI proto"
integration/scripts/check-proto.sh

step "cargo fmt"
cargo fmt --all -- --check

# The debug build under test has berthd's fault-injection hooks (the `test-hooks`
# feature, never in a release build). Every cargo call below names the same features,
# so the bins the tests run are built once.
TEST_FEATURES=(--features berth-server/test-hooks)

step "cargo clippy"
cargo clippy --workspace --all-targets --locked "${TEST_FEATURES[@]}" -- -D warnings

step "build"
cargo build --workspace --bins --locked "${TEST_FEATURES[@]}"

# The previous release's binaries, for the upgrade test (privileged_upgrade): built
# from git history once per release commit and cached (a few minutes the first time).
step "previous release's binaries (upgrade test)"
integration/scripts/build-previous-release.sh

step "tests"
cargo nextest run --workspace --locked "${TEST_FEATURES[@]}" --profile "${NEXTEST_PROFILE:-ci}" "$@"

# The VM lane (integration/vm, docs/hosts.md): the CI host is cgroup v1 (hybrid) without
# systemd as its init, so the cgroup v2 + systemd + AppArmor node is a Debian guest under QEMU
# (TCG), booted once with the bins just built, running the CI subset of
# integration/vm/tests (~10 minutes here). The guest takes one core; it runs beside the
# benchmark smoke run, the package check and the fuzz step below (which are not timed),
# and its result is collected at the end. Skipped when a test filter was given, or with
# BERTH_VM_LANE=0.
if [ "$#" -eq 0 ] && [ "${BERTH_VM_LANE:-1}" != 0 ]; then
  wait_vm_image
  step "VM lane: cgroup v2 + systemd + AppArmor guest (CI subset), in the background"
  vm_lane_log=$(mktemp /tmp/berth-vm-lane.XXXXXX.log)
  setsid integration/vm/vm-lane.sh > "$vm_lane_log" 2>&1 < /dev/null &
  vm_lane_pid=$!
fi

# kubectl end to end (started above): the bins are built and the tests are done, so it
# may start its cluster now (once build-kube.sh is done), beside the steps below; its
# result is collected at the end. Run alone: integration/scripts/cluster-e2e.sh.
if [ -n "$cluster_go" ]; then
  step "kubectl end to end on a local cluster, in the background"
  touch "$cluster_go/go"
fi

# A few iterations of the berthd-vs-containerd benchmark (debug build), so the harness
# cannot rot; the full run is `cargo bench -p berth-integration --bench pod_start`
# (docs/benchmarks.md). Skipped when a test filter was given.
if [ "$#" -eq 0 ]; then
  step "benchmark smoke run (pod_start, a few iterations)"
  BENCH_SAMPLES=3 BENCH_PODS=2 BENCH_SCALE=4 BENCH_CLIENTS=2 \
    BENCH_CHART_DIR="$(realpath -m "${CARGO_TARGET_DIR:-target}")/bench-charts" \
    cargo test --locked -p berth-integration --bench pod_start
fi

# The Debian package, built from the debug binaries (no release build in CI), and the
# fresh-machine check: in a debootstrap root holding only what `install-deps.sh
# --runtime` installs, quickstart builds and starts berthd and crictl reaches it; then
# the package installs, serves and uninstalls there. Skipped when a test filter was given.
if [ "$#" -eq 0 ]; then
  step "Debian package and fresh-machine check"
  deb=$(deploy/build-deb.sh --profile dev | tail -n1)
  integration/scripts/fresh-root-check.sh --deb "$deb"
fi

step "fuzz targets, briefly (BERTH_FUZZ_SECONDS per target; 0 skips)"
if [ "${BERTH_FUZZ_SECONDS:-20}" != 0 ]; then
  integration/scripts/fuzz.sh "${BERTH_FUZZ_SECONDS:-20}"
fi

# Collected before the VM lane's, so both results are printed; a failure ends the run after.
cluster_failed=""
if [ -n "$cluster_pid" ]; then
  step "kubectl end to end: result"
  rc=0
  wait "$cluster_pid" || rc=$?
  cluster_pid=""
  cat "$cluster_log"
  rm -f "$cluster_log"
  cluster_log=""
  rm -rf "$cluster_go"
  cluster_go=""
  [ "$rc" -eq 0 ] || cluster_failed=$rc
fi

if [ -n "$vm_lane_pid" ]; then
  step "VM lane: result"
  rc=0
  wait "$vm_lane_pid" || rc=$?
  vm_lane_pid=""
  cat "$vm_lane_log"
  rm -f "$vm_lane_log"
  vm_lane_log=""
  if [ "$rc" -ne 0 ]; then
    echo "run-tests: the VM lane failed ($rc)" >&2
    exit 1
  fi
fi

if [ -n "$cluster_failed" ]; then
  echo "run-tests: kubectl end to end failed ($cluster_failed)" >&2
  exit 1
fi
