#!/usr/bin/env bash
# Builds Kubernetes' node e2e suite (test/e2e_node, the binary `e2e_node.test`), the
# ginkgo CLI and agnhost (the suite's test image program, test/images/agnhost) at the
# kubelet's version from the Go module proxy, and caches them next to kubelet in
# $BERTH_TOOLS_DIR/bin: e2e_node.test-vX.Y.Z, ginkgo-<version k8s requires> and
# agnhost-<its test/images/agnhost/VERSION>. A second run only checks the cache.
#
# Same trick as build-kubelet.sh / build-kube.sh: a throwaway module that requires
# k8s.io/kubernetes vX.Y.Z and replaces every staging module (k8s.io/api, ...) with its
# published v0.Y.Z release. `go get -t` adds the modules the suite's _test.go files need
# (go mod tidy only follows the tests of the main module), then `go test -c` compiles the
# package's tests into one binary, as `make WHAT=test/e2e_node/e2e_node.test` does.
#
#   integration/scripts/build-node-e2e.sh
#   KUBE_VERSION=v1.37.2 integration/scripts/build-node-e2e.sh
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"   # the kubelet's version (build-kubelet.sh)
TOOLS="${BERTH_TOOLS_DIR:-/var/cache/berth/tools}"
E2E_BIN="$TOOLS/bin/e2e_node.test-$KUBE_VERSION"
mkdir -p "$TOOLS/bin"

# Go builds share the machine's cores with everything else: be the last in line.
GO=(nice -n 19 ionice -c3 go)

modfile="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$KUBE_VERSION.mod"
[ -f "$modfile" ] || go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" >/dev/null
# The ginkgo CLI must match the ginkgo library the suite links (it warns otherwise).
GINKGO_VERSION="$(sed -n 's#^[[:space:]]*github.com/onsi/ginkgo/v2 \(v[0-9.]*\).*#\1#p' "$modfile" | head -1)"
if [ -z "$GINKGO_VERSION" ]; then
  echo "build-node-e2e: no github.com/onsi/ginkgo/v2 requirement in $modfile" >&2
  exit 1
fi
GINKGO_BIN="$TOOLS/bin/ginkgo-$GINKGO_VERSION"
kube_src="$(go env GOMODCACHE)/k8s.io/kubernetes@$KUBE_VERSION"
[ -d "$kube_src" ] || go mod download "k8s.io/kubernetes@$KUBE_VERSION"
AGNHOST_VERSION="$(cat "$kube_src/test/images/agnhost/VERSION")"
AGNHOST_BIN="$TOOLS/bin/agnhost-$AGNHOST_VERSION"

if [ -x "$E2E_BIN" ] && [ -x "$GINKGO_BIN" ] && [ -x "$AGNHOST_BIN" ]; then
  echo "build-node-e2e: $E2E_BIN, $GINKGO_BIN, $AGNHOST_BIN (cached)"
  exit 0
fi

work="$(mktemp -d /tmp/berth-node-e2e-build.XXXXXX)"
trap 'rm -rf "$work"' EXIT
cd "$work"

staging_version="v0.${KUBE_VERSION#v1.}"
go mod init berth.local/node-e2e-build >/dev/null 2>&1
go mod edit -require="k8s.io/kubernetes@$KUBE_VERSION"
staging="$(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$modfile")"
if [ -z "$staging" ]; then
  echo "build-node-e2e: no staging replace directives found in $modfile" >&2
  exit 1
fi
for m in $staging; do
  go mod edit -replace="$m=$m@$staging_version"
done
go mod edit -require="github.com/onsi/ginkgo/v2@$GINKGO_VERSION"

cat > main.go <<'GO'
// Package main only exists so that the module graph holds the node e2e suite and ginkgo.
package main

import (
	_ "github.com/onsi/ginkgo/v2/ginkgo/command"
	_ "k8s.io/kubernetes/test/e2e_node"
	_ "k8s.io/kubernetes/test/images/agnhost/netexec"
)

func main() {}
GO
"${GO[@]}" mod tidy >/dev/null
"${GO[@]}" get -t "k8s.io/kubernetes/test/e2e_node@$KUBE_VERSION" >/dev/null 2>&1 || "${GO[@]}" get -t k8s.io/kubernetes/test/e2e_node
# get -t may not re-pin the version tidy chose for ginkgo; keep the one k8s requires.
go mod edit -require="github.com/onsi/ginkgo/v2@$GINKGO_VERSION"

start=$(date +%s)
if [ ! -x "$GINKGO_BIN" ]; then
  echo "build-node-e2e: building ginkgo $GINKGO_VERSION"
  CGO_ENABLED=0 "${GO[@]}" build -mod=mod -trimpath -ldflags "-s -w" -o "$GINKGO_BIN.tmp" github.com/onsi/ginkgo/v2/ginkgo
  mv "$GINKGO_BIN.tmp" "$GINKGO_BIN"
fi
if [ ! -x "$E2E_BIN" ]; then
  echo "build-node-e2e: building e2e_node.test $KUBE_VERSION (many minutes the first time)"
  ld="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION"
  CGO_ENABLED=0 "${GO[@]}" test -mod=mod -c -vet=off -trimpath -ldflags "$ld" -o "$E2E_BIN.tmp" k8s.io/kubernetes/test/e2e_node
  mv "$E2E_BIN.tmp" "$E2E_BIN"
fi
if [ ! -x "$AGNHOST_BIN" ]; then
  echo "build-node-e2e: building agnhost $AGNHOST_VERSION"
  # Static, as upstream's (the image's base has no Go runtime libraries to offer).
  CGO_ENABLED=0 "${GO[@]}" build -mod=mod -trimpath -ldflags "-s -w" -o "$AGNHOST_BIN.tmp" k8s.io/kubernetes/test/images/agnhost
  mv "$AGNHOST_BIN.tmp" "$AGNHOST_BIN"
fi
echo "build-node-e2e: built in $(( $(date +%s) - start )) s"
"$GINKGO_BIN" version
"$E2E_BIN" --help 2>&1 | grep -q -- '-container-runtime-endpoint' || {
  echo "build-node-e2e: $E2E_BIN does not look like the node e2e suite" >&2
  exit 1
}
"$AGNHOST_BIN" --help >/dev/null
echo "build-node-e2e: $E2E_BIN $GINKGO_BIN $AGNHOST_BIN"
