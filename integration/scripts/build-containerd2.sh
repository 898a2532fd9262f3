#!/usr/bin/env bash
# Builds containerd 2.x (`containerd` and `containerd-shim-runc-v2`) from the Go module
# proxy and caches them, for the pod_start benchmark's containerd 2.x peer.
#
# The module zip of github.com/containerd/containerd/v2 has no vendor/ directory, so the
# module is copied out of the read-only module cache and built with -mod=mod (its
# dependencies come from the proxy too). Built static (CGO_ENABLED=0) with the snapshotters
# that need C headers (btrfs, devmapper, zfs) left out: the bench uses overlayfs. runc is
# Debian's. The binaries land in $BERTH_TOOLS_DIR/bin/containerd2-vX.Y.Z/ (plus a
# `containerd2` symlink to that directory); a second run only checks that they are there.
#
#   integration/scripts/build-containerd2.sh     # builds CONTAINERD2_VERSION (default below)
set -euo pipefail

CONTAINERD2_VERSION="${CONTAINERD2_VERSION:-v2.4.2}"
TOOLS="${BERTH_TOOLS_DIR:-/var/cache/berth/tools}"
DIR="$TOOLS/bin/containerd2-$CONTAINERD2_VERSION"

if [ -x "$DIR/containerd" ] && [ -x "$DIR/containerd-shim-runc-v2" ]; then
  ln -sfn "containerd2-$CONTAINERD2_VERSION" "$TOOLS/bin/containerd2"
  echo "build-containerd2: $DIR (cached)"
  exit 0
fi

mkdir -p "$TOOLS/bin"
src="$(mktemp -d /tmp/berth-containerd2-build.XXXXXX)"
trap 'rm -rf "$src"' EXIT

module="github.com/containerd/containerd/v2"
moddir=$(go mod download -json "$module@$CONTAINERD2_VERSION" \
  | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
if [ -z "$moddir" ] || [ ! -d "$moddir" ]; then
  echo "build-containerd2: could not download $module@$CONTAINERD2_VERSION" >&2
  exit 1
fi
cp -r "$moddir"/. "$src"
chmod -R u+w "$src" # the module cache is read-only

echo "build-containerd2: building containerd $CONTAINERD2_VERSION (a few minutes the first time)"
mkdir -p "$DIR.tmp"
ldflags="-s -w -X $module/version.Version=$CONTAINERD2_VERSION -X $module/version.Package=$module"
(
  cd "$src"
  CGO_ENABLED=0 go build -mod=mod -trimpath -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags "$ldflags" -o "$DIR.tmp/" ./cmd/containerd ./cmd/containerd-shim-runc-v2
)
rm -rf "$DIR"
mv "$DIR.tmp" "$DIR"
ln -sfn "containerd2-$CONTAINERD2_VERSION" "$TOOLS/bin/containerd2"
"$DIR/containerd" --version
