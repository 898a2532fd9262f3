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
# Debian packages for building and running berthd, and crictl (built from the Go
# module proxy into /var/cache/berth/tools/bin) to talk to it.
tools_bin=$(integration/scripts/install-deps.sh --runtime | tail -n1)
# berthd runs containers through berth-monitor and berth-runtime, found next to it.
cargo build --release --locked -p berth-server -p berth-runtime-core --bins
cat >&2 <<EOF

berthd is starting on unix:///run/berth/berth.sock (Ctrl-C stops it). In another shell:
  export PATH=$tools_bin:\$PATH
  crictl --runtime-endpoint unix:///run/berth/berth.sock version
  crictl --runtime-endpoint unix:///run/berth/berth.sock info

EOF
exec target/release/berthd "$@"
