#!/usr/bin/env bash
# Builds the previous release's berthd, berth-monitor and berth-runtime from git
# history, for the upgrade test (integration/tests/privileged_upgrade.rs): an upgrade
# from that release with running containers must keep them running.
#
# The release commit is in integration/previous-release. The binaries land in
#   ${BERTH_PREV_RELEASE_DIR:-/var/cache/berth/prev-release}/<commit>/bin
# keyed by the commit, so a second run returns at once; the build's own target dir is
# deleted afterwards (only the binaries are kept). Works in a clean clone: the source
# comes from `git archive <commit>` (fetched first if a shallow clone lacks it).
# Prints the bin directory as its last line.
set -euo pipefail
cd "$(dirname "$0")/../.."

commit=$(tr -d '[:space:]' < integration/previous-release)
cache="${BERTH_PREV_RELEASE_DIR:-/var/cache/berth/prev-release}/$commit"
bins=(berthd berth-monitor berth-runtime)
log() { printf '[build-previous-release] %s\n' "$*" >&2; }

have_all() { for b in "${bins[@]}"; do [ -x "$cache/bin/$b" ] || return 1; done; }
if have_all; then
  echo "$cache/bin"
  exit 0
fi

# One build per commit at a time (two checkouts' CI runs may share the cache).
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if have_all; then
  echo "$cache/bin"
  exit 0
fi

if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
  log "fetching $commit (not in this clone)"
  git fetch --quiet --depth=1 origin "$commit"
fi

log "building the previous release $commit into $cache"
rm -rf "$cache/src" "$cache/target" "$cache/bin.tmp"
mkdir -p "$cache/src" "$cache/bin.tmp"
git archive "$commit" | tar -x -C "$cache/src"

start=$(date +%s)
# Only the binaries berthd runs (it finds berth-monitor and berth-runtime next to its
# own executable); no debug info, so the build and the kept binaries stay small.
(
  cd "$cache/src"
  CARGO_PROFILE_DEV_DEBUG=0 CARGO_TARGET_DIR="$cache/target" \
    nice -n 10 cargo build --locked --bins -p berth-server -p berth-runtime-core
)
for b in "${bins[@]}"; do cp "$cache/target/debug/$b" "$cache/bin.tmp/$b"; done
rm -rf "$cache/target" "$cache/src" "$cache/bin"
mv -T "$cache/bin.tmp" "$cache/bin"
log "built in $(($(date +%s) - start)) s"
echo "$cache/bin"
