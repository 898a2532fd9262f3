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

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
cargo build --workspace --bins --locked

step "tests"
cargo nextest run --workspace --locked --profile "${NEXTEST_PROFILE:-ci}" "$@"

step "fuzz targets, briefly (BERTH_FUZZ_SECONDS per target; 0 skips)"
if [ "${BERTH_FUZZ_SECONDS:-20}" != 0 ]; then
  integration/scripts/fuzz.sh "${BERTH_FUZZ_SECONDS:-20}"
fi
