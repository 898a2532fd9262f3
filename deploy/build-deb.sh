#!/usr/bin/env bash
# Builds the Debian package berth_<version>_<arch>.deb: berthd, berth-monitor and
# berth-runtime in /usr/bin (berthd finds its helpers next to itself), the default
# configuration as a conffile (/etc/berth/config.toml), the systemd unit
# (/lib/systemd/system/berthd.service, Type=notify), the man page berthd(8), and
# maintainer scripts that enable/restart/stop the unit only when systemd runs.
#
#   deploy/build-deb.sh [--profile release|dev] [--out DIR]
#
# The default is a release build (`cargo build --release`); `--profile dev` packages the
# debug binaries as they are (what CI does, to test the package without a release
# build). Needs only dpkg-deb and dpkg-shlibdeps (dpkg-dev). Prints the package's path
# as its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
out=target/deb
while (($#)); do
  case "$1" in
    --profile) profile=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: $0 [--profile release|dev] [--out DIR]" >&2; exit 2 ;;
  esac
done

log() { printf '[build-deb] %s\n' "$*" >&2; }

# The workspace version, from [workspace.package] in the root Cargo.toml.
version=$(awk '/^\[workspace\.package\]/ { p = 1; next } /^\[/ { p = 0 }
  p && $1 == "version" { gsub(/"/, "", $3); print $3; exit }' Cargo.toml)
[ -n "$version" ] || { log "no version in Cargo.toml [workspace.package]"; exit 1; }
arch=$(dpkg --print-architecture)

cargo build --profile "$profile" --locked -p berth-server -p berth-runtime-core --bins >&2
bin_dir=${CARGO_TARGET_DIR:-target}/$([ "$profile" = dev ] && echo debug || echo "$profile")

pkg=$(mktemp -d)
trap 'rm -rf "$pkg"' EXIT
install -d -m 0755 "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/etc/berth" \
  "$pkg/lib/systemd/system" "$pkg/usr/share/man/man8" "$pkg/usr/share/doc/berth"
for bin in berthd berth-monitor berth-runtime; do
  install -m 0755 "$bin_dir/$bin" "$pkg/usr/bin/$bin"
done
if [ "$profile" != dev ]; then
  strip --strip-unneeded "$pkg"/usr/bin/*
fi
install -m 0644 deploy/config.toml "$pkg/etc/berth/config.toml"
# The unit as shipped in deploy/, minus its manual-install header, with the packaged path.
{
  echo "# berthd.service from the berth Debian package. Local changes: systemctl edit berthd"
  sed -e '1,/^\[Unit\]/{/^\[Unit\]/!d}' \
    -e 's|^ExecStart=/usr/local/bin/berthd|ExecStart=/usr/bin/berthd|' deploy/berthd.service
} > "$pkg/lib/systemd/system/berthd.service"
chmod 0644 "$pkg/lib/systemd/system/berthd.service"
grep -q '^ExecStart=/usr/bin/berthd ' "$pkg/lib/systemd/system/berthd.service" \
  || { log "deploy/berthd.service: ExecStart is not /usr/local/bin/berthd any more"; exit 1; }
gzip -9n < deploy/berthd.8 > "$pkg/usr/share/man/man8/berthd.8.gz"
chmod 0644 "$pkg/usr/share/man/man8/berthd.8.gz"
cat > "$pkg/usr/share/doc/berth/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: berth
Source: https://example.invalid/berth

Files: *
Copyright: The Berth developers
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF

# Shared-library dependencies of the binaries as dpkg computes them (libc6,
# libseccomp2, ...), from the shlibs files of the packages this host has installed.
shlibs_dir=$(mktemp -d)
mkdir "$shlibs_dir/debian"
printf 'Source: berth\n\nPackage: berth\nArchitecture: any\n' > "$shlibs_dir/debian/control"
depends=$(cd "$shlibs_dir" && dpkg-shlibdeps -O "$pkg"/usr/bin/* 2>/dev/null \
  | sed -n 's/^shlibs:Depends=//p')
rm -rf "$shlibs_dir"
[ -n "$depends" ] || { log "dpkg-shlibdeps found no dependencies"; exit 1; }

installed_size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat > "$pkg/DEBIAN/control" <<EOF
Package: berth
Version: $version
Architecture: $arch
Maintainer: Berth developers <berth@example.invalid>
Installed-Size: $installed_size
Depends: $depends
Recommends: containernetworking-plugins, iptables, iproute2
Section: admin
Priority: optional
Homepage: https://example.invalid/berth
Description: Kubernetes container runtime (CRI runtime.v1)
 Berth is a CRI gRPC server: kubelet points --container-runtime-endpoint at
 unix:///run/berth/berth.sock. It builds containers itself from namespaces,
 cgroups, overlayfs, pivot_root, capabilities and seccomp (berth-monitor, one
 per container), and keeps them running across restarts of berthd.
EOF
echo /etc/berth/config.toml > "$pkg/DEBIAN/conffiles"

# systemd is the unit's manager only when it runs (`/run/systemd/system` exists, as
# sd_booted(3) checks); in a chroot or a container without it, say what to do instead.
cat > "$pkg/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    if [ -z "$2" ]; then
      # First install: enable and start, as a node component should be.
      systemctl enable --now berthd.service
    else
      # Upgrade: the new berthd takes over; KillMode=process keeps containers running.
      systemctl try-restart berthd.service
    fi
  else
    echo "berth: systemd is not running here; berthd.service was not enabled or started." >&2
    echo "berth: start it yourself: berthd --config /etc/berth/config.toml" >&2
  fi
fi
exit 0
EOF
cat > "$pkg/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
# On removal stop berthd (its containers keep running: KillMode=process); on upgrade
# leave it to postinst's restart.
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl disable --now berthd.service || true
fi
exit 0
EOF
cat > "$pkg/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
exit 0
EOF
chmod 0755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/prerm" "$pkg/DEBIAN/postrm"

mkdir -p "$out"
deb=$out/berth_${version}_${arch}.deb
# Debug binaries are large: compress them fast; a release package gets xz.
if [ "$profile" = dev ]; then compress=(-Zgzip -z1); else compress=(-Zxz); fi
dpkg-deb --root-owner-group "${compress[@]}" --build "$pkg" "$deb" >&2
log "built $deb"
realpath "$deb"
