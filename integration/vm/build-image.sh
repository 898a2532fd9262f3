#!/usr/bin/env bash
# Builds (once) the VM lane's guest image and prints its cache directory, which holds
#   rootfs.img  an ext4 image of a Debian root (made with `mkfs.ext4 -d`: no loop mounts)
#   vmlinuz, initrd.img  the guest's own kernel and initrd, for qemu -kernel/-initrd.
# Cached in /var/cache/berth/vm/<key>, the key being the hash of this script and of the
# guest files baked into the image (integration/vm/guest/): a change to the package
# list or to those files builds a new image. The image is booted with snapshot=on, so
# a boot never modifies the cache. Images not used for two days are removed.
# Needs root and debootstrap. Everything debootstrap mounts lives in a private mount
# and PID namespace that vanishes with it.
set -euo pipefail
{
CACHE=${BERTH_VM_CACHE:-/var/cache/berth/vm}
IMAGE_SIZE=6G
# What the guest has: a systemd + D-Bus + AppArmor node with pure cgroup v2 (Debian's
# defaults), berthd's runtime needs (install-deps.sh --runtime, without the build tools:
# the binaries come from the host's build), and the test tools.
PACKAGES=(
  linux-image-amd64 initramfs-tools kmod udev
  systemd systemd-sysv dbus libpam-systemd
  apparmor apparmor-utils
  containernetworking-plugins iproute2 iptables util-linux ca-certificates libseccomp2
  busybox docker-registry procps psmisc
)
log() { printf '[vm-image] %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
here=$(cd "$(dirname "$0")" && pwd -P)

suite() { . /etc/os-release && echo "$VERSION_CODENAME"; }
mirror() {
  if [ -n "${BERTH_DEBIAN_MIRROR:-}" ]; then echo "$BERTH_DEBIAN_MIRROR"; return; fi
  apt-cache policy 2>/dev/null | awk -v s="$(suite)/main" \
    '$2 ~ /^https?:\/\// && $3 == s { print $2; exit }'
}

# Inside the private namespaces: debootstrap (cached as base-<key>, keyed by the suite,
# the mirror and the package list) ...
ns_debootstrap() { # ROOT SUITE MIRROR
  local inc; inc=$(IFS=,; echo "${PACKAGES[*]}")
  debootstrap --variant=minbase --include="$inc" "$2" "$1" "$3" >&2
}
# ... and the guest's configuration, in a copy of the base.
ns_build() { # ROOT GUESTDIR
  local root=$1 guest=$2
  # Base configuration: root on the virtio disk, a hostname, no password prompts needed
  # (nobody logs in: the runner unit does the work and powers off).
  echo 'berth-vm' > "$root/etc/hostname"
  printf '127.0.0.1 localhost berth-vm\n' > "$root/etc/hosts"
  printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' > "$root/etc/fstab"
  printf '9p\n9pnet\n9pnet_virtio\nvirtio_blk\nvirtio_pci\next4\n' >> "$root/etc/initramfs-tools/modules"
  printf '9p\n9pnet_virtio\noverlay\nbr_netfilter\n' > "$root/etc/modules-load.d/berth-vm.conf"
  # The lane's runner unit and its bootstrap script.
  install -m 0755 "$guest/berth-vm-run" "$root/usr/local/sbin/berth-vm-run"
  install -m 0644 "$guest/berth-vm-run.service" "$root/etc/systemd/system/berth-vm-run.service"
  ln -sf /etc/systemd/system/berth-vm-run.service \
    "$root/etc/systemd/system/multi-user.target.wants/berth-vm-run.service"
  # Nothing the tests do not need starts at boot (the in-guest registry is started by
  # the tests that use it, on 127.0.0.1 only).
  for u in docker-registry.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    fstrim.timer man-db.timer systemd-timesyncd.service; do
    rm -f "$root"/etc/systemd/system/*.wants/"$u"
    ln -sf /dev/null "$root/etc/systemd/system/$u"
  done
  # Journald keeps logs in memory (the disk is a throw-away snapshot anyway).
  mkdir -p "$root/etc/systemd/journald.conf.d"
  printf '[Journal]\nStorage=volatile\n' > "$root/etc/systemd/journald.conf.d/berth-vm.conf"
  # Initrd with the virtio and 9p modules (MODULES=dep would look at the build host).
  printf 'MODULES=most\n' > "$root/etc/initramfs-tools/conf.d/berth-vm"
  mount -t proc proc "$root/proc"
  chroot "$root" update-initramfs -u -k all >&2
  umount "$root/proc"
  chroot "$root" apt-get clean
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
}

main() {
  case "${1:-}" in
    --ns-debootstrap) shift; ns_debootstrap "$@"; return ;;
    --ns-build) shift; ns_build "$@"; return ;;
  esac
  [ "$(id -u)" -eq 0 ] || die "needs root (debootstrap)"
  command -v debootstrap >/dev/null || die "debootstrap is missing (install-deps.sh installs it)"
  local s m key dir tmp base_key base
  s=$(suite); m=$(mirror)
  [ -n "$m" ] || die "no Debian mirror for $s in apt's sources (set BERTH_DEBIAN_MIRROR)"
  base_key=$(printf '%s\n' "$s" "$m" "${PACKAGES[@]}" | sha256sum | cut -c1-16)
  base=$CACHE/base-$base_key
  key=$( { echo "$s $m"; cat "$0"; cat "$here"/guest/*; } | sha256sum | cut -c1-16)
  dir=$CACHE/$key
  mkdir -p "$CACHE"
  # One build at a time: two checkouts (or CI runs) share the cache and its temp dirs.
  exec 9>"$CACHE/.build-image.lock"
  flock 9
  if [ ! -f "$dir/rootfs.img" ]; then
    local started=$SECONDS
    if [ ! -d "$base" ]; then
      log "debootstrap $s from $m with the guest's packages (once per list, several minutes)"
      tmp=$CACHE/.base-$base_key
      rm -rf --one-file-system "$tmp"
      unshare --mount --pid --fork --kill-child --propagation private \
        "$0" --ns-debootstrap "$tmp" "$s" "$m"
      mv "$tmp" "$base"
    fi
    log "building the guest image $key"
    tmp=$CACHE/.build-$key
    rm -rf --one-file-system "$tmp"
    mkdir -p "$tmp"
    cp -a "$base" "$tmp/root"
    unshare --mount --pid --fork --kill-child --propagation private \
      "$0" --ns-build "$tmp/root" "$here/guest"
    cp "$(ls "$tmp"/root/boot/vmlinuz-* | sort -V | tail -n1)" "$tmp/vmlinuz"
    cp "$(ls "$tmp"/root/boot/initrd.img-* | sort -V | tail -n1)" "$tmp/initrd.img"
    mkfs.ext4 -q -F -L berth-vm -d "$tmp/root" "$tmp/rootfs.img" "$IMAGE_SIZE" >&2
    rm -rf --one-file-system "$tmp/root"
    rm -rf "$dir"; mv "$tmp" "$dir"
    log "image built in $((SECONDS - started))s"
  fi
  touch "$dir"
  touch "$base"
  find "$CACHE" -mindepth 1 -maxdepth 1 \( -name '[0-9a-f]*' -o -name 'base-*' \) -mtime +2 -exec rm -rf --one-file-system {} +
  echo "$dir"
}
main "$@"
exit $?
}
