#!/usr/bin/env bash
# Fresh-machine check (issue 20): proves that what `install-deps.sh --runtime` installs
# is enough to build berthd and run it, the way the README's first command does.
#
#   fresh-root-check.sh [--deb FILE]
#   fresh-root-check.sh --prepare      # only build (or find) the cached root; print its path
#
# 1. A minimal Debian root (`debootstrap --variant=minbase`, from the mirror this host's
#    apt uses) in which `install-deps.sh --runtime` ran, and nothing else was installed.
#    Cached under /var/cache/berth/fresh-root, keyed by the suite, the mirror and the
#    content of install-deps.sh: a change to the runtime list rebuilds it.
# 2. In a throw-away overlay of that root, in private mount, PID and network namespaces,
#    with the host's Rust and Go toolchains and this checkout bind-mounted at their own
#    paths (the checkout, and its target/ with the host's build, as an overlay too, so
#    nothing of the host changes): `BERTH_PROFILE=dev deploy/quickstart.sh`, with the
#    sources of berthd, berth-monitor and berth-runtime touched so that at least their
#    compile and link happen inside the root (against its libseccomp, its C toolchain).
#    Then `crictl version` and `crictl info` must answer through the root's own crictl
#    (RuntimeReady and NetworkReady true), and berthd must stop cleanly on SIGTERM.
# 3. With --deb: the package is installed into that root with dpkg (there is no systemd
#    there: its postinst must say so and succeed), and the installed /usr/bin/berthd,
#    started with the package's /etc/berth/config.toml, must answer crictl the same way.
#
# Everything mounted lives in the private mount namespace and every process in the PID
# namespace: both vanish when the check ends, failed or not; the overlay's upper layer
# is removed after. Needs root, debootstrap and unshare(1).
set -euo pipefail
# The whole script is one brace group: bash reads it completely before running it, so
# editing this file while a check runs cannot change what the running check executes.
{

# Bump to rebuild every cached root when the way roots are made changes.
ROOT_FORMAT=1
CACHE=/var/cache/berth/fresh-root
# Build of the three binaries inside the root, and berthd's start-up.
START_TIMEOUT=${BERTH_FRESH_ROOT_START_TIMEOUT:-600}

log() { printf '[fresh-root] %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# The Debian suite and mirror this host's apt uses (the only mirror reachable in CI).
debian_suite() { . /etc/os-release && echo "$VERSION_CODENAME"; }
debian_mirror() {
  if [ -n "${BERTH_DEBIAN_MIRROR:-}" ]; then echo "$BERTH_DEBIAN_MIRROR"; return; fi
  apt-cache policy 2>/dev/null | awk -v s="$(debian_suite)/main" \
    '$2 ~ /^https?:\/\// && $3 == s { print $2; exit }'
}

# Paths of the toolchains as the host sees them; mounted at the same paths inside.
toolchain_env() {
  CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
  RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}
  GOROOT=$(go env GOROOT)
  GOMODCACHE=$(go env GOMODCACHE)
  GOPROXY=$(go env GOPROXY)
  GOCACHE=$(go env GOCACHE)
  export CARGO_HOME RUSTUP_HOME GOROOT GOMODCACHE GOPROXY GOCACHE
  root_env
}

# What runs inside the root: a clean environment, the toolchains first in PATH.
root_env() {
  ROOT_ENV=(/usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8
    PATH="$CARGO_HOME/bin:$GOROOT/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    CARGO_HOME="$CARGO_HOME" RUSTUP_HOME="$RUSTUP_HOME" GOMODCACHE="$GOMODCACHE" GOCACHE="$GOCACHE"
    GOPROXY="$GOPROXY" GOTOOLCHAIN=local DEBIAN_FRONTEND=noninteractive)
}
in_root() {
  local root=$1; shift
  chroot "$root" "${ROOT_ENV[@]}" "$@"
}
# For `start_in_root ... &`: the background job becomes the command itself, so $! is
# its pid (quickstart execs berthd) and signals reach it.
start_in_root() {
  local root=$1; shift
  exec chroot "$root" "${ROOT_ENV[@]}" "$@"
}

bind() { # bind SRC DST [ro]
  mkdir -p "$2"
  mount --bind "$1" "$2"
  if [ "${3:-}" = ro ]; then mount -o remount,bind,ro "$2"; fi
}

# /proc, /sys, /dev, a private /run and /tmp, and the toolchains, in ROOT. Called
# inside the private mount namespace only.
mount_system() {
  local root=$1
  [ "$$" -eq 1 ] || die "mounts are made only inside the check's own namespaces"
  mount -t proc proc "$root/proc"
  mount -t sysfs -o ro sysfs "$root/sys"
  mount --rbind /dev "$root/dev"
  mount -t tmpfs -o mode=0755 tmpfs "$root/run"
  mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
  bind "$RUSTUP_HOME" "$root$RUSTUP_HOME" ro
  bind "$GOROOT" "$root$GOROOT" ro
  # cargo takes its package-cache lock and go its module locks there.
  bind "$CARGO_HOME" "$root$CARGO_HOME"
  bind "$GOMODCACHE" "$root$GOMODCACHE"
  mkdir -p "$GOCACHE"
  bind "$GOCACHE" "$root$GOCACHE"
}

# --- the cached root ---------------------------------------------------------------

# Inside a private mount and PID namespace: debootstrap mounts /proc in its target, and
# package scripts may start daemons; both must not outlive this.
ns_debootstrap() { # DIR SUITE MIRROR
  debootstrap --variant=minbase "$2" "$1" "$3" >&2
}

ns_install_runtime() { # ROOT CHECKOUT GIT_DIR
  local root=$1 checkout=$2
  mount_system "$root"
  bind "$checkout" "$root$checkout" ro
  # No service may start in the root while packages install.
  printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
  chmod 755 "$root/usr/sbin/policy-rc.d"
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
  # The host's CA bundle, for go's downloads (crictl) on networks whose TLS goes
  # through an intercepting proxy; in the private /run, so not part of the root.
  cp -L "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$root/run/host-ca.crt"
  # The script's own list: exactly what quickstart installs on a fresh machine.
  in_root "$root" SSL_CERT_FILE=/run/host-ca.crt \
    "$checkout/integration/scripts/install-deps.sh" --runtime >&2
  in_root "$root" apt-get clean
  rm -f "$root/usr/sbin/policy-rc.d"
  # Nothing else is removed here: under $root the host's toolchains are mounted.
}

fresh_root() { # CHECKOUT -> prints the cached root's path
  local checkout=$1 suite mirror base_key key base root tmp
  suite=$(debian_suite)
  mirror=$(debian_mirror)
  [ -n "$mirror" ] || die "no Debian mirror for $suite in apt's sources (set BERTH_DEBIAN_MIRROR)"
  base_key=$(printf '%s\n' "$ROOT_FORMAT" "$suite" "$mirror" | sha256sum | cut -c1-16)
  key=$( { echo "$base_key"; cat "$checkout/integration/scripts/install-deps.sh"; } \
    | sha256sum | cut -c1-16)
  base=$CACHE/base-$base_key
  root=$CACHE/root-$key
  mkdir -p "$CACHE"
  if [ ! -d "$root" ]; then
    if [ ! -d "$base" ]; then
      log "debootstrap $suite from $mirror (once, a few minutes)"
      tmp=$CACHE/.base-$base_key.tmp
      rm -rf --one-file-system "$tmp"
      unshare --mount --pid --fork --kill-child --propagation private \
        "$0" --ns-debootstrap "$tmp" "$suite" "$mirror"
      mv "$tmp" "$base"
    fi
    log "installing install-deps.sh --runtime into a copy of the base root (once per list)"
    tmp=$CACHE/.root-$key.tmp
    rm -rf --one-file-system "$tmp"
    cp -a "$base" "$tmp"
    unshare --mount --pid --fork --kill-child --propagation private \
      "$0" --ns-install-runtime "$tmp" "$checkout"
    # Only now that the namespace, and every mount in it, is gone: the empty mount
    # points of go's caches.
    rm -rf --one-file-system "$tmp/root/.cache" "$tmp/root/go"
    mv "$tmp" "$root"
  fi
  # Roots of lists not used for two days (another branch's, an old one's) go.
  touch "$root"
  find "$CACHE" -maxdepth 1 -name 'root-*' -mtime +2 -exec rm -rf --one-file-system {} +
  echo "$root"
}

# --- the package's contents, on the host ---------------------------------------------

check_deb() { # DEB CHECKOUT
  local deb=$1 checkout=$2 info contents f
  info=$(dpkg-deb -I "$deb") || die "dpkg-deb -I $deb failed"
  for f in '^ Package: berth$' '^ Architecture: ' '^ Depends: .*libc6' \
    '^ Depends: .*libseccomp2' ' postinst ' ' prerm ' ' conffiles '; do
    grep -q -- "$f" <<<"$info" || die "package control has no /$f/: $info"
  done
  dpkg-deb -I "$deb" conffiles | grep -qx /etc/berth/config.toml \
    || die "/etc/berth/config.toml is not a conffile"
  contents=$(dpkg-deb -c "$deb") || die "dpkg-deb -c $deb failed"
  for f in usr/bin/berthd usr/bin/berth-monitor usr/bin/berth-runtime; do
    grep -Eq "^-rwxr-xr-x root/root .* \./$f\$" <<<"$contents" || die "no executable /$f: $contents"
  done
  for f in etc/berth/config.toml lib/systemd/system/berthd.service \
    usr/share/man/man8/berthd.8.gz usr/share/doc/berth/copyright; do
    grep -Eq "^-rw-r--r-- root/root .* \./$f\$" <<<"$contents" || die "no /$f: $contents"
  done
  local unit
  unit=$(dpkg-deb --fsys-tarfile "$deb" | tar -xO ./lib/systemd/system/berthd.service)
  grep -qx 'Type=notify' <<<"$unit" || die "the packaged unit is not Type=notify"
  grep -qx 'ExecStart=/usr/bin/berthd --config /etc/berth/config.toml' <<<"$unit" \
    || die "the packaged unit does not start /usr/bin/berthd: $unit"
  dpkg-deb --fsys-tarfile "$deb" | tar -xO ./etc/berth/config.toml \
    | cmp -s - "$checkout/deploy/config.toml" || die "the packaged config is not deploy/config.toml"
  log "package contents: binaries, conffile, Type=notify unit, man page, Depends"
}

# --- the check, inside private mount, PID and network namespaces --------------------

wait_for_socket() { # SOCKET PID LOG WHAT
  local deadline=$((SECONDS + START_TIMEOUT))
  until [ -S "$1" ]; do
    kill -0 "$2" 2>/dev/null || { tail -n 30 "$3" >&2; die "$(basename "$4") exited before berthd served (log above)"; }
    ((SECONDS < deadline)) || { tail -n 30 "$3" >&2; die "no socket $1 after ${START_TIMEOUT}s"; }
    sleep 0.5
  done
}

# crictl version and info through the root's own crictl; both conditions true.
check_crictl() { # ROOT WHAT
  local root=$1 what=$2 crictl=/var/cache/berth/tools/bin/crictl out
  local ep=(--runtime-endpoint unix:///run/berth/berth.sock --timeout 10s)
  out=$(in_root "$root" "$crictl" "${ep[@]}" version) || die "$what: crictl version failed"
  grep -q '^RuntimeName: *berth$' <<<"$out" || die "$what: crictl version said: $out"
  out=$(in_root "$root" "$crictl" "${ep[@]}" info) || die "$what: crictl info failed"
  for cond in RuntimeReady NetworkReady; do
    # One condition object per line, then the one of this type must be true.
    tr -d ' \n' <<<"$out" | tr '{}' '\n\n' | grep "\"type\":\"$cond\"" | grep -q '"status":true' \
      || die "$what: crictl info has no $cond=true: $out"
  done
  log "$what: crictl version and info answer (RuntimeReady, NetworkReady)"
}

stop_berthd() { # PID WHAT LOG
  local rc=0
  kill -TERM "$1"
  wait "$1" || rc=$?
  [ "$rc" -eq 0 ] || { tail -n 20 "$3" >&2; die "$2: berthd exited $rc on SIGTERM"; }
}

ns_check() { # ROOT RUN CHECKOUT GIT_DIR TARGET [DEB]
  local lower=$1 run=$2 checkout=$3 git_dir=$4 target=$5 deb=${6:-}
  local root=$run/merged pid
  # This shell is PID 1 of its own PID namespace: when it exits, however it exits, the
  # kernel kills every process started here (berthd, cargo), and the mount namespace,
  # with every mount below, goes with the last of them. No trap needed.
  [ "$$" -eq 1 ] || die "--ns-check runs only as PID 1 of a new PID namespace"
  ip link set lo up
  mkdir -p "$run"/{upper,work,merged,src-upper,src-work,tgt-upper,tgt-work}
  mount -t overlay overlay -o "lowerdir=$lower,upperdir=$run/upper,workdir=$run/work" "$root"
  mount_system "$root"
  # The checkout and the host's target dir, writable inside but unchanged outside.
  mkdir -p "$root$checkout"
  mount -t overlay overlay \
    -o "lowerdir=$checkout,upperdir=$run/src-upper,workdir=$run/src-work" "$root$checkout"
  if [ "${target#"$checkout"/}" = "$target" ]; then
    mkdir -p "$root$target" "$target"
    mount -t overlay overlay \
      -o "lowerdir=$target,upperdir=$run/tgt-upper,workdir=$run/tgt-work" "$root$target"
  fi
  # server/build.rs watches the git dir's HEAD files: present and unchanged, they do
  # not make it rerun (which would rebuild the whole berth-server crate).
  if [ -n "$git_dir" ] && [ "${git_dir#"$checkout"/}" = "$git_dir" ]; then
    bind "$git_dir" "$root$git_dir" ro
  fi

  # The link (and compile of main) of the three binaries happens here, with the root's
  # libraries and C toolchain: a missing -dev package or linker fails this step.
  touch "$root$checkout/server/src/main.rs" \
    "$root$checkout/runtime-core/src/bin/berth-runtime.rs" \
    "$root$checkout/runtime-core/src/bin/berth-monitor/main.rs"
  local qlog=$run/quickstart.log
  touch "$run/started"
  log "deploy/quickstart.sh in the fresh root (builds the binaries, starts berthd)"
  start_in_root "$root" CARGO_NET_OFFLINE=true CARGO_TARGET_DIR="$target" BERTH_PROFILE=dev \
    "$checkout/deploy/quickstart.sh" >"$qlog" 2>&1 &
  pid=$!
  wait_for_socket "$root/run/berth/berth.sock" "$pid" "$qlog" quickstart.sh
  for bin in berthd berth-monitor berth-runtime; do
    [ "$root$target/debug/$bin" -nt "$run/started" ] || die "$bin was not linked inside the root"
  done
  check_crictl "$root" "quickstart"
  stop_berthd "$pid" quickstart "$qlog"

  [ -n "$deb" ] || return 0
  local dlog=$run/deb-berthd.log
  cp "$deb" "$root/tmp/berth.deb"
  log "dpkg -i $(basename "$deb") in the fresh root (no systemd there)"
  in_root "$root" dpkg -i /tmp/berth.deb >"$run/dpkg.log" 2>&1 \
    || { cat "$run/dpkg.log" >&2; die "dpkg -i failed"; }
  grep -q 'systemd is not running' "$run/dpkg.log" \
    || { cat "$run/dpkg.log" >&2; die "postinst did not say that systemd is not running"; }
  for bin in berthd berth-monitor berth-runtime; do
    in_root "$root" dpkg -S "/usr/bin/$bin" >/dev/null || die "/usr/bin/$bin is not the package's"
  done
  in_root "$root" /usr/bin/berthd --version | grep -q '^CRI API: runtime.v1' \
    || die "the installed berthd --version has no CRI API line"
  # A node start: the packaged config file, no overrides; fresh state dirs.
  rm -rf "$root/run/berth" "$root/var/lib/berth"
  start_in_root "$root" /usr/bin/berthd --config /etc/berth/config.toml >"$dlog" 2>&1 &
  pid=$!
  wait_for_socket "$root/run/berth/berth.sock" "$pid" "$dlog" /usr/bin/berthd
  check_crictl "$root" "installed package"
  stop_berthd "$pid" "installed package" "$dlog"
  in_root "$root" dpkg -r berth >"$run/dpkg-r.log" 2>&1 \
    || { cat "$run/dpkg-r.log" >&2; die "dpkg -r failed"; }
  [ ! -e "$root/usr/bin/berthd" ] || die "dpkg -r left /usr/bin/berthd"
  log "package installs, serves and removes in the fresh root"
}

main() {
  case "${1:-}" in
    --ns-debootstrap) shift; ns_debootstrap "$@"; return ;;
    --ns-install-runtime) shift; toolchain_env; ns_install_runtime "$@"; return ;;
    --ns-check) shift; toolchain_env; ns_check "$@"; return ;;
  esac
  local deb="" prepare=""
  case "${1:-}" in
    --deb) deb=$(realpath "$2"); [ -f "$deb" ] || die "no package $2" ;;
    --prepare) prepare=1 ;;
    "") ;;
    *) die "usage: $0 [--deb FILE | --prepare]" ;;
  esac
  [ "$(id -u)" -eq 0 ] || die "needs root (chroot, mounts, namespaces)"
  command -v debootstrap >/dev/null || die "debootstrap is missing (install-deps.sh installs it)"
  toolchain_env
  local checkout git_dir target root run started=$SECONDS rc=0
  checkout=$(cd "$(dirname "$0")/../.." && pwd -P)
  if [ -n "$prepare" ]; then fresh_root "$checkout"; return; fi
  [ -z "$deb" ] || check_deb "$deb" "$checkout"
  git_dir=$(git -C "$checkout" rev-parse --path-format=absolute --git-common-dir 2>/dev/null || true)
  target=$(realpath -m "${CARGO_TARGET_DIR:-$checkout/target}")
  root=$(fresh_root "$checkout")
  run=$(mktemp -d "$CACHE/run.XXXXXX")
  unshare --mount --pid --net --fork --kill-child --propagation private \
    "$0" --ns-check "$root" "$run" "$checkout" "$git_dir" "$target" "$deb" || rc=$?
  rm -rf --one-file-system "$run"
  [ "$rc" -eq 0 ] || die "see above (exit $rc)"
  log "passed in $((SECONDS - started))s"
}

main "$@"
exit $?
}
