# Sourced by build-kubelet.sh and build-kube.sh (not run on its own).
#
# k8s.io/kubernetes requires its staging modules (k8s.io/api, k8s.io/client-go, ...) at
# v0.0.0 and replaces them with ./staging/... paths that do not exist in the module zip.
# The usual way to build it elsewhere: a throwaway module that requires
# k8s.io/kubernetes vX.Y.Z and replaces every staging module with its published v0.Y.Z
# release.
#
# With BERTH_GO_MOD_ONLY=DIR set, both scripts write their throwaway go.mod into DIR and
# stop there (no download beyond k8s.io/kubernetes' go.mod, no build): how a change to
# this set-up is checked without a 25-60 minute build.

# kube_throwaway_module MODULE VERSION: in the current (empty) directory, a go.mod named
# MODULE requiring k8s.io/kubernetes@VERSION with those replaces. The staging modules are
# the replace directives of k8s.io/kubernetes' own go.mod that point into ./staging; the
# list comes from the module proxy so it follows the version. Exits the (sub)shell with a
# message when that go.mod has none.
kube_throwaway_module() {
  local module="$1" version="$2"
  local staging_version="v0.${version#v1.}"
  go mod init "$module" >/dev/null 2>&1
  go mod edit -require="k8s.io/kubernetes@$version"
  local modfile; modfile="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$version.mod"
  [ -f "$modfile" ] || go mod download -json "k8s.io/kubernetes@$version" >/dev/null
  local staging m
  staging="$(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$modfile")"
  if [ -z "$staging" ]; then
    echo "$(basename "$0"): no staging replace directives found in $modfile" >&2
    exit 1
  fi
  for m in $staging; do go mod edit -replace="$m=$m@$staging_version"; done
}
