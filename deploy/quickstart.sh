#!/usr/bin/env bash
# Builds berthd and starts it in the foreground with its built-in defaults
# (socket /run/berth/berth.sock, state in /var/lib/berth and /run/berth). Installs
# the Debian packages berthd needs on a node (CNI plugins, iproute2, iptables) first.
# Extra arguments go to berthd, e.g. `deploy/quickstart.sh --log-level debug`.
# BERTH_PROFILE=dev builds a debug build instead of the release one (what CI's
# fresh-machine check, integration/scripts/fresh-root-check.sh, runs).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "quickstart: berthd creates namespaces, mounts and cgroups: run as root" >&2
  exit 1
fi
# Debian packages for building and running berthd, and crictl (built from the Go
# module proxy into /var/cache/berth/tools/bin) to talk to it.
tools_bin=$(integration/scripts/install-deps.sh --runtime | tail -n1)
# berthd runs containers through berth-monitor and berth-runtime, found next to it.
profile=${BERTH_PROFILE:-release}
cargo build --profile "$profile" --locked -p berth-server -p berth-runtime-core --bins
out_dir=${CARGO_TARGET_DIR:-target}/$([ "$profile" = dev ] && echo debug || echo "$profile")
cat >&2 <<EOF

berthd is starting on unix:///run/berth/berth.sock (Ctrl-C stops it). In another shell:
  export PATH=$tools_bin:\$PATH
  crictl --runtime-endpoint unix:///run/berth/berth.sock version
  crictl --runtime-endpoint unix:///run/berth/berth.sock info

EOF
exec "$out_dir/berthd" "$@"
