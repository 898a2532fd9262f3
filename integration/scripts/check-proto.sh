#!/usr/bin/env bash
# Proves that proto/proto/api.proto is byte-for-byte the api.proto that the Go module
# k8s.io/cri-api publishes at the pinned version (downloaded from the Go module proxy).
set -euo pipefail
cd "$(dirname "$0")/../.."
CRI_API_VERSION=v0.37.2
dir=$(go mod download -json "k8s.io/cri-api@$CRI_API_VERSION" \
      | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
upstream="$dir/pkg/apis/runtime/v1/api.proto"
[ -f "$upstream" ] || { echo "check-proto: $upstream missing" >&2; exit 1; }
if ! cmp -s "$upstream" proto/proto/api.proto; then
  echo "check-proto: proto/proto/api.proto differs from k8s.io/cri-api@$CRI_API_VERSION:" >&2
  diff -u "$upstream" proto/proto/api.proto | head -40 >&2 || true
  exit 1
fi
grep -q "CRI_API_VERSION: &str = \"$CRI_API_VERSION\"" proto/src/lib.rs \
  || { echo "check-proto: proto/src/lib.rs does not say $CRI_API_VERSION" >&2; exit 1; }
echo "check-proto: api.proto is k8s.io/cri-api@$CRI_API_VERSION"
