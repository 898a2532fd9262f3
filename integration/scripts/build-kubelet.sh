#!/usr/bin/env bash
# Builds kubelet from the Go module proxy, outside the kubernetes tree, and caches it.
#
# A throwaway module that requires k8s.io/kubernetes vX.Y.Z and replaces every staging
# module with its published v0.Y.Z release (kube-module.sh). The binary lands in $BERTH_TOOLS_DIR/bin/kubelet-vX.Y.Z (and a `kubelet`
# symlink); a second run only checks that it is there.
#
#   integration/scripts/build-kubelet.sh            # builds KUBELET_VERSION (default below)
#   KUBELET_VERSION=v1.34.4 integration/scripts/build-kubelet.sh   # the older-version check
#   BERTH_GO_MOD_ONLY=DIR integration/scripts/build-kubelet.sh     # only write DIR/go.mod
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/kube-module.sh"

KUBELET_VERSION="${KUBELET_VERSION:-v1.37.2}"  # privileged_kubelet.rs KUBELET_VERSION
TOOLS="${BERTH_TOOLS_DIR:-/var/cache/berth/tools}"
BIN="$TOOLS/bin/kubelet-$KUBELET_VERSION"

if [ -n "${BERTH_GO_MOD_ONLY:-}" ]; then
  mkdir -p "$BERTH_GO_MOD_ONLY" && cd "$BERTH_GO_MOD_ONLY"
  kube_throwaway_module berth.local/kubelet-build "$KUBELET_VERSION"
  exit 0
fi

if [ -x "$BIN" ]; then
  ln -sfn "kubelet-$KUBELET_VERSION" "$TOOLS/bin/kubelet"
  echo "build-kubelet: $BIN (cached)"
  exit 0
fi

mkdir -p "$TOOLS/bin"
work="$(mktemp -d /tmp/berth-kubelet-build.XXXXXX)"
trap 'rm -rf "$work"' EXIT
cd "$work"

kube_throwaway_module berth.local/kubelet-build "$KUBELET_VERSION"

cat > main.go <<'GO'
// Package main only exists to build kubelet from this throwaway module.
package main

import _ "k8s.io/kubernetes/cmd/kubelet/app"

func main() {}
GO
go mod tidy >/dev/null
echo "build-kubelet: building kubelet $KUBELET_VERSION (several minutes the first time)"
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$KUBELET_VERSION -X k8s.io/client-go/pkg/version.gitVersion=$KUBELET_VERSION" \
  -o "$BIN.tmp" k8s.io/kubernetes/cmd/kubelet
mv "$BIN.tmp" "$BIN"
ln -sfn "kubelet-$KUBELET_VERSION" "$TOOLS/bin/kubelet"
"$BIN" --version
