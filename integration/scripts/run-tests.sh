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
# integration/vm/tests (~10 minutes here). Skipped when a test filter was given, or
# with BERTH_VM_LANE=0.
if [ "$#" -eq 0 ] && [ "${BERTH_VM_LANE:-1}" != 0 ]; then
  step "VM lane: cgroup v2 + systemd + AppArmor guest (CI subset)"
  integration/vm/vm-lane.sh
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
