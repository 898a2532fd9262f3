#!/usr/bin/env bash
# Runs Berth's cargo-fuzz targets (fuzz/) for a while each; fails on the first crash,
# panic, hang or out-of-memory, printing how to reproduce it.
#   integration/scripts/fuzz.sh              # 20 s per target (what CI runs)
#   integration/scripts/fuzz.sh 600          # 10 min per target, by hand
#   integration/scripts/fuzz.sh 300 unpack_tar spdy_frames
# Needs a nightly toolchain and cargo-fuzz (install-deps.sh installs cargo-fuzz).
# The corpus grows in fuzz/corpus/<target> (not committed) and is reused next run;
# crashing inputs land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../../fuzz"

seconds=${1:-20}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
  targets=(image_reference unpack_tar spdy_frames cri_log config_parse cri_requests)
fi
: "${BERTH_TOOLS_DIR:=/var/cache/berth/tools}"
export PATH="$BERTH_TOOLS_DIR/bin:$PATH"
command -v cargo-fuzz >/dev/null || { echo "fuzz.sh: cargo-fuzz is missing; run integration/scripts/install-deps.sh" >&2; exit 1; }
rustup run nightly rustc --version >/dev/null 2>&1 || { echo "fuzz.sh: a nightly toolchain is needed (rustup toolchain install nightly)" >&2; exit 1; }

# Built outside the checkout so a fresh clone (as CI makes) reuses the last build.
export CARGO_TARGET_DIR="${BERTH_FUZZ_TARGET_DIR:-/var/cache/berth/fuzz-target}"
cargo +nightly fuzz build -O
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log=$(mktemp)
  # -timeout: one input taking longer is a hang; -rss_limit_mb: unbounded allocation.
  if cargo +nightly fuzz run -O "$t" "corpus/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    printf 'fuzz %-16s ok   %s runs in %s s\n' "$t" "${runs:-?}" "$seconds"
    rm -f "$log"
  else
    printf 'fuzz %-16s FAILED\n' "$t"
    grep -E 'panicked|ERROR|SUMMARY|Test unit written|^Reproduce' -A3 "$log" | head -n 40 >&2 || tail -n 40 "$log" >&2
    echo "full output: $log; reproduce: (cd fuzz && cargo +nightly fuzz run -O $t fuzz/artifacts/$t/<file>)" >&2
    exit 1
  fi
done
