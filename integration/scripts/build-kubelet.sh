#!/usr/bin/env bash
# Builds kubelet from the Go module proxy, outside the kubernetes tree, and caches it.
#
# k8s.io/kubernetes requires its staging modules (k8s.io/api, k8s.io/client-go, ...) at
# v0.0.0 and replaces them with ./staging/... paths that do not exist in the module zip.
# The usual way to build it elsewhere: a throwaway module that requires
# k8s.io/kubernetes vX.Y.Z and replaces every staging module with its published
# v0.Y.Z release. The binary lands in $BERTH_TOOLS_DIR/bin/kubelet-vX.Y.Z (and a `kubelet`
# symlink); a second run only checks that it is there.
#
#   integration/scripts/build-kubelet.sh            # builds KUBELET_VERSION (default below)
#   KUBELET_VERSION=v1.34.4 integration/scripts/build-kubelet.sh   # the older-version check
set -euo pipefail

KUBELET_VERSION="${KUBELET_VERSION:-v1.37.2}"  # privileged_kubelet.rs KUBELET_VERSION
TOOLS="${BERTH_TOOLS_DIR:-/var/cache/berth/tools}"
BIN="$TOOLS/bin/kubelet-$KUBELET_VERSION"

if [ -x "$BIN" ]; then
  ln -sfn "kubelet-$KUBELET_VERSION" "$TOOLS/bin/kubelet"
  echo "build-kubelet: $BIN (cached)"
  exit 0
fi

mkdir -p "$TOOLS/bin"
work="$(mktemp -d /tmp/berth-kubelet-build.XXXXXX)"
trap 'rm -rf "$work"' EXIT
cd "$work"

staging_version="v0.${KUBELET_VERSION#v1.}"
go mod init berth.local/kubelet-build >/dev/null 2>&1
go mod edit -require="k8s.io/kubernetes@$KUBELET_VERSION"

# The staging modules are the replace directives of k8s.io/kubernetes' own go.mod that
# point into ./staging; take the list from the module proxy so it follows the version.
modfile="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$KUBELET_VERSION.mod"
if [ ! -f "$modfile" ]; then
  go mod download -json "k8s.io/kubernetes@$KUBELET_VERSION" >/dev/null
fi
staging="$(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$modfile")"
if [ -z "$staging" ]; then
  echo "build-kubelet: no staging replace directives found in $modfile" >&2
  exit 1
fi
for m in $staging; do
  go mod edit -replace="$m=$m@$staging_version"
done

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
