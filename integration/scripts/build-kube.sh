#!/usr/bin/env bash
# Builds the control plane of a local cluster on Berth from the Go module proxy and caches
# it next to kubelet: kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy
# and kubectl (k8s.io/kubernetes), etcd (go.etcd.io/etcd/server/v3) and CoreDNS
# (github.com/coredns/coredns, with only the plugins a cluster DNS needs).
#
# Same trick as build-kubelet.sh (kube-module.sh): a throwaway module that requires
# k8s.io/kubernetes and replaces every staging module with its published v0.Y.Z
# release. The five Kubernetes
# binaries are ONE `go build` so they share compilation (and kubelet's build cache).
# Binaries land in $BERTH_TOOLS_DIR/bin/<name>-<version> with a <name> symlink; a second
# run only checks that they are there.
#
#   integration/scripts/build-kube.sh            # everything, versions below
#   integration/scripts/build-kube.sh k8s|etcd|coredns
#   BERTH_GO_MOD_ONLY=DIR integration/scripts/build-kube.sh k8s   # only write DIR/go.mod
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/kube-module.sh"

KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"      # the kubelet's version (build-kubelet.sh)
ETCD_VERSION="${ETCD_VERSION:-v3.7.0}"       # what k8s.io/kubernetes v1.37.2 itself requires
COREDNS_VERSION="${COREDNS_VERSION:-v1.14.7}"
TOOLS="${BERTH_TOOLS_DIR:-/var/cache/berth/tools}"
KUBE_BINS="kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl"
mkdir -p "$TOOLS/bin"

# Go builds share two cores with everything else: be the last in line.
GO=(nice -n 19 ionice -c3 go)

cached() { # name version -> 0 if $TOOLS/bin/name-version exists (and refreshes the symlink)
  if [ -x "$TOOLS/bin/$1-$2" ]; then ln -sfn "$1-$2" "$TOOLS/bin/$1"; return 0; fi
  return 1
}

build_k8s() {
  if [ -n "${BERTH_GO_MOD_ONLY:-}" ]; then
    mkdir -p "$BERTH_GO_MOD_ONLY"
    cd "$BERTH_GO_MOD_ONLY" && kube_throwaway_module berth.local/kube-build "$KUBE_VERSION"
    exit 0
  fi
  local all=1 b
  for b in $KUBE_BINS; do cached "$b" "$KUBE_VERSION" || all=0; done
  if [ "$all" = 1 ]; then echo "build-kube: kubernetes $KUBE_VERSION (cached)"; return; fi
  local work; work="$(mktemp -d /tmp/berth-kube-build.XXXXXX)"
  (
    trap 'rm -rf "$work"' EXIT
    cd "$work"
    kube_throwaway_module berth.local/kube-build "$KUBE_VERSION"
    cat > main.go <<'GO'
// Package main only exists so that `go mod tidy` pulls in what the binaries need.
package main

import (
	_ "k8s.io/component-base/cli"
	_ "k8s.io/kubectl/pkg/cmd"
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	_ "k8s.io/kubernetes/cmd/kube-proxy/app"
	_ "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

func main() {}
GO
    "${GO[@]}" mod tidy >/dev/null
    echo "build-kube: building $KUBE_BINS $KUBE_VERSION (many minutes the first time)"
    mkdir out
    local ld="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION"
    local pkgs=() b
    for b in $KUBE_BINS; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
    CGO_ENABLED=0 "${GO[@]}" build -trimpath -ldflags "$ld" -o out/ "${pkgs[@]}"
    # A plain mv from /tmp to another file system is a copy: killed half-way, it would
    # leave a truncated binary that cached() accepts. Copy next to the target, rename.
    for b in $KUBE_BINS; do
      cp "out/$b" "$TOOLS/bin/$b-$KUBE_VERSION.tmp"
      mv "$TOOLS/bin/$b-$KUBE_VERSION.tmp" "$TOOLS/bin/$b-$KUBE_VERSION"
      ln -sfn "$b-$KUBE_VERSION" "$TOOLS/bin/$b"
    done
  )
  "$TOOLS/bin/kube-apiserver" --version
}

build_etcd() {
  if cached etcd "$ETCD_VERSION"; then echo "build-kube: etcd $ETCD_VERSION (cached)"; return; fi
  local work; work="$(mktemp -d /tmp/berth-etcd-build.XXXXXX)"
  (
    trap 'rm -rf "$work"' EXIT
    cd "$work"
    go mod init berth.local/etcd-build >/dev/null 2>&1
    go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    # The server module's root is the etcd binary's main package (etcdmain.Main).
    printf 'package main\n\nimport _ "go.etcd.io/etcd/server/v3/etcdmain"\n\nfunc main() {}\n' > main.go
    "${GO[@]}" mod tidy >/dev/null
    echo "build-kube: building etcd $ETCD_VERSION"
    CGO_ENABLED=0 "${GO[@]}" build -trimpath -ldflags "-s -w" -o "$TOOLS/bin/etcd-$ETCD_VERSION.tmp" go.etcd.io/etcd/server/v3
    mv "$TOOLS/bin/etcd-$ETCD_VERSION.tmp" "$TOOLS/bin/etcd-$ETCD_VERSION"
    ln -sfn "etcd-$ETCD_VERSION" "$TOOLS/bin/etcd"
  )
  # sed, not head: head would exit after one line and etcd, still writing, would die of
  # SIGPIPE, which pipefail turns into a silent failure of the whole script.
  "$TOOLS/bin/etcd" --version | sed -n 1p
}

build_coredns() {
  if cached coredns "$COREDNS_VERSION"; then echo "build-kube: coredns $COREDNS_VERSION (cached)"; return; fi
  local work; work="$(mktemp -d /tmp/berth-coredns-build.XXXXXX)"
  (
    trap 'rm -rf "$work"' EXIT
    cd "$work"
    go mod init berth.local/coredns-build >/dev/null 2>&1
    go mod edit -require="github.com/coredns/coredns@$COREDNS_VERSION"
    # CoreDNS' own main links every plugin (cloud DNS providers included). A cluster DNS
    # needs a handful; CoreDNS documents this way of choosing them: set
    # dnsserver.Directives (in plugin.cfg order) and import the plugins.
    cat > main.go <<'GO'
// Package main is CoreDNS with only the plugins a local cluster's DNS uses.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
	_ "github.com/coredns/coredns/plugin/whoami"
)

func init() {
	dnsserver.Directives = []string{
		"reload", "bind", "ready", "health", "errors", "log", "cache", "kubernetes", "loop", "whoami",
	}
}

func main() { coremain.Run() }
GO
    "${GO[@]}" mod tidy >/dev/null
    echo "build-kube: building coredns $COREDNS_VERSION"
    CGO_ENABLED=0 "${GO[@]}" build -trimpath -ldflags "-s -w" -o "$TOOLS/bin/coredns-$COREDNS_VERSION.tmp" .
    mv "$TOOLS/bin/coredns-$COREDNS_VERSION.tmp" "$TOOLS/bin/coredns-$COREDNS_VERSION"
    ln -sfn "coredns-$COREDNS_VERSION" "$TOOLS/bin/coredns"
  )
  "$TOOLS/bin/coredns" -version | sed -n 1p
}

case "${1:-all}" in
  k8s) build_k8s ;;
  etcd) build_etcd ;;
  coredns) build_coredns ;;
  all) build_k8s; build_etcd; build_coredns ;;
  *) echo "usage: $0 [all|k8s|etcd|coredns]" >&2; exit 2 ;;
esac
