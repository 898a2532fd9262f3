#!/usr/bin/env bash
# Builds berthd and starts it in the foreground with its built-in defaults
# (socket /run/berth/berth.sock, state in /var/lib/berth and /run/berth). Installs
# the Debian packages berthd needs on a node (CNI plugins, iproute2, iptables) first.
# Extra arguments go to berthd, e.g. `deploy/quickstart.sh --log-level debug`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "quickstart: berthd creates namespaces, mounts and cgroups: run as root" >&2
  exit 1
fi
integration/scripts/install-deps.sh --runtime
# berthd runs containers through berth-monitor and berth-runtime, found next to it.
cargo build --release --locked -p berth-server -p berth-runtime-core --bins
exec target/release/berthd "$@"
