#!/usr/bin/env bash
# Installs what building and testing Berth needs, when it is missing:
#   - Debian packages (CNI plugins, registry, busybox, libseccomp, ...);
#   - Go-based clients from the Go module proxy: crictl and critest (cri-tools),
#     grpcurl; built once into a cache directory and reused;
#   - cargo-nextest and cargo-fuzz.
# Idempotent and quiet when everything is present. Source it or run it; it prints
# the tools directory to add to PATH as its last line when run.
# With --runtime it installs only what building and running berthd needs (Debian
# packages) plus crictl, to talk to it: what deploy/quickstart.sh uses.
set -euo pipefail

CRI_TOOLS_VERSION=v1.37.0
GRPCURL_VERSION=v1.9.4   # v1.9.3 ignores -unix and dials TCP
NEXTEST_VERSION=0.9.143
CARGO_FUZZ_VERSION=0.13.2  # integration/scripts/fuzz.sh (needs a nightly toolchain)
: "${BERTH_TOOLS_DIR:=/var/cache/berth/tools}"
TOOLS_BIN="$BERTH_TOOLS_DIR/bin"
mkdir -p "$TOOLS_BIN"

log() { printf '[install-deps] %s\n' "$*" >&2; }

# --- Debian packages -------------------------------------------------------------
# What berthd itself needs on a node, and what building it needs (quickstart builds it).
RUNTIME_PACKAGES=(
  containernetworking-plugins   # bridge, host-local, portmap, loopback
  iproute2 iptables util-linux  # CNI's iptables rules, ip netns, unshare
  ca-certificates
  libseccomp-dev pkg-config     # seccomp filters (runtime-core links libseccomp)
  build-essential               # cc and the linker for crates with C parts
)
# What testing needs on top.
TEST_PACKAGES=(
  docker-registry               # the local registry tests pull from
  busybox-static                # test rootfs and images
  containerd                    # the image-pull benchmark compares against it
  curl                          # local-cluster.sh and cluster-e2e.sh (health checks, port-forward)
  bc                            # cluster-scale.sh (times)
  nginx apache2-bin             # critest's nginx/httpd test images (integration/src/forge/)
  runc                          # the runc runtime handler test (privileged_runtime_handlers)
  criu                          # CheckpointContainer's `criu check` probe (privileged_checkpoint)
  debootstrap                   # the fresh-machine check's root (fresh-root-check.sh), the VM lane's image
  qemu-system-x86 qemu-utils    # the VM lane (integration/vm/vm-lane.sh): a cgroup v2 + systemd guest under TCG
  git
)
APT_PACKAGES=("${RUNTIME_PACKAGES[@]}")
if [ "${1:-}" != "--runtime" ]; then APT_PACKAGES+=("${TEST_PACKAGES[@]}"); fi
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing packages ${missing[*]}; run as root to install them"; exit 1
  fi
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- dynamically linked busybox for critest's images ----------------------------
# Debian's `busybox` conflicts with busybox-static, so it is downloaded and unpacked
# into the cache instead of installed; forge/ builds critest's busybox image from
# it (its sh execs commands, the static one runs applets in-process).
BUSYBOX_DIR=/var/cache/berth/busybox
if [ "${1:-}" != "--runtime" ] && [ ! -x "$BUSYBOX_DIR/bin/busybox" ]; then
  debs=/var/cache/berth/debs
  mkdir -p "$debs"
  if ! ls "$debs"/busybox_*.deb >/dev/null 2>&1; then
    log "downloading Debian's busybox package"
    (cd "$debs" && apt-get download -qq busybox 2>/dev/null) \
      || { apt-get update -qq && (cd "$debs" && apt-get download -qq busybox); }
  fi
  tmp=$(mktemp -d)
  dpkg-deb -x "$(ls "$debs"/busybox_*.deb | tail -n1)" "$tmp"
  chmod 755 "$tmp"; rm -rf "$BUSYBOX_DIR"; mv "$tmp" "$BUSYBOX_DIR"
fi

# --- toolchains ------------------------------------------------------------------
for t in cargo go; do
  command -v "$t" >/dev/null || { log "$t is required (Rust via rustup, Go >= 1.26)"; exit 1; }
done

# --- Go tools (versioned stamps so a version bump rebuilds) ---------------------
stamp_ok() { [ -x "$TOOLS_BIN/$1" ] && [ "$(cat "$TOOLS_BIN/.$1.version" 2>/dev/null)" = "$2" ]; }
stamp() { echo "$2" > "$TOOLS_BIN/.$1.version"; }
LDF="-X sigs.k8s.io/cri-tools/pkg/version.Version=${CRI_TOOLS_VERSION#v}"

if ! stamp_ok crictl "$CRI_TOOLS_VERSION"; then
  log "building crictl $CRI_TOOLS_VERSION"
  CGO_ENABLED=0 GOBIN="$TOOLS_BIN" go install -trimpath -ldflags "$LDF" \
    "sigs.k8s.io/cri-tools/cmd/crictl@$CRI_TOOLS_VERSION"
  stamp crictl "$CRI_TOOLS_VERSION"
fi
if [ "${1:-}" = "--runtime" ]; then
  if [ "${BASH_SOURCE[0]}" = "$0" ]; then echo "$TOOLS_BIN"; exit 0; else return 0; fi
fi
if ! stamp_ok critest "$CRI_TOOLS_VERSION"; then
  log "building critest $CRI_TOOLS_VERSION"
  dir=$(go mod download -json "sigs.k8s.io/cri-tools@$CRI_TOOLS_VERSION" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  src=$(mktemp -d)
  cp -r "$dir"/. "$src"; chmod -R u+w "$src"   # the module cache is read-only
  (cd "$src" && CGO_ENABLED=0 go test -c -trimpath -ldflags "$LDF" -o "$TOOLS_BIN/critest" ./cmd/critest)
  rm -rf "$src"
  stamp critest "$CRI_TOOLS_VERSION"
fi
if ! stamp_ok ginkgo "$CRI_TOOLS_VERSION"; then
  # critest --parallel execs the ginkgo CLI; use the version cri-tools pins.
  moddir=$(go mod download -json "sigs.k8s.io/cri-tools@$CRI_TOOLS_VERSION" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  gv=$(awk '$1 == "github.com/onsi/ginkgo/v2" { print $2; exit }' "$moddir/go.mod")
  log "building ginkgo $gv"
  GOBIN="$TOOLS_BIN" go install "github.com/onsi/ginkgo/v2/ginkgo@$gv"
  stamp ginkgo "$CRI_TOOLS_VERSION"
fi
if ! stamp_ok grpcurl "$GRPCURL_VERSION"; then
  log "building grpcurl $GRPCURL_VERSION"
  GOBIN="$TOOLS_BIN" go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION"
  stamp grpcurl "$GRPCURL_VERSION"
fi
# kubelet for the end-to-end test (privileged_kubelet): built outside the kubernetes
# tree from the Go module proxy, ~5 minutes once, then cached.
BERTH_TOOLS_DIR="$BERTH_TOOLS_DIR" "$(dirname "${BASH_SOURCE[0]}")/build-kubelet.sh" >&2
# containerd 2.x for the pod_start benchmark's second peer (Debian's containerd is
# 1.6): built from the Go module proxy, a few minutes once, then cached.
BERTH_TOOLS_DIR="$BERTH_TOOLS_DIR" "$(dirname "${BASH_SOURCE[0]}")/build-containerd2.sh" >&2

# --- cargo-nextest ---------------------------------------------------------------
if ! stamp_ok cargo-nextest "$NEXTEST_VERSION"; then
  log "building cargo-nextest $NEXTEST_VERSION (once; a few minutes)"
  cargo install --locked --quiet --root "$BERTH_TOOLS_DIR" cargo-nextest --version "$NEXTEST_VERSION"
  stamp cargo-nextest "$NEXTEST_VERSION"
fi

# --- cargo-fuzz (the fuzz/ targets; run on nightly by fuzz.sh) --------------------
if ! stamp_ok cargo-fuzz "$CARGO_FUZZ_VERSION"; then
  log "building cargo-fuzz $CARGO_FUZZ_VERSION (once)"
  cargo install --locked --quiet --root "$BERTH_TOOLS_DIR" cargo-fuzz --version "$CARGO_FUZZ_VERSION"
  stamp cargo-fuzz "$CARGO_FUZZ_VERSION"
fi

export PATH="$TOOLS_BIN:$PATH"
if [ "${BASH_SOURCE[0]}" = "$0" ]; then echo "$TOOLS_BIN"; fi
