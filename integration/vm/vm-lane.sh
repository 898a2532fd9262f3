#!/usr/bin/env bash
# The VM lane (issue 19): runs integration/vm/tests/*.sh as root inside a Debian
# bookworm guest booted under QEMU's software emulation (TCG; no KVM here) — a node with
# systemd as PID 1, pure cgroup v2, D-Bus and AppArmor, which this host is not.
#
#   vm-lane.sh [--full] [--filter REGEX] [--timeout SECONDS] [--keep-out DIR]
#
#   --full      also the long tests (files marked `# vm-lane: full`); default: the CI subset
#   --filter    only tests whose name (e.g. 10-cgroup-limits) matches the grep -E REGEX
#   --timeout   the whole run, boot included (default 900 s; 3600 s with --full)
#   --keep-out  copy the guest's out/ (per-test logs, exit codes, journal) to DIR
#
# 1. The guest image (build-image.sh, cached in /var/cache/berth/vm/<key>).
# 2. A run directory with two 9p shares: `berthin`, read-only — the host's
#    target/debug/{berthd,berth-monitor,berth-runtime}, crictl, critest, kubelet and
#    grpcurl (for CRI calls crictl has no command for) from /var/cache/berth/tools/bin,
#    integration/vm (runner, lib.sh, tests) and deploy/;
#    `berthreg`, read-only: a registry storage with critest's images (berth-vm-images,
#    cached in /var/cache/berth/vm/registry-<key>); and `berthout`, where the guest
#    writes its results.
# 3. qemu-system-x86_64 -accel tcg, the image as snapshot=on (the cache is never
#    modified), no network device, serial console to a log file. The guest's unit runs
#    run-guest.sh and powers off.
# Whatever happens (failure, timeout, Ctrl-C), the QEMU process is killed and the run
# directory removed. Exit code: the number of failed tests (or 1 if the run did not
# finish). Logs of failed tests and the console's tail are printed on failure.
# Needs root (debootstrap for the image), qemu-system-x86 and the cargo build of the
# workspace's binaries (`cargo build --workspace --bins`).
set -euo pipefail
{
here=$(cd "$(dirname "$0")" && pwd -P)
checkout=$(cd "$here/../.." && pwd -P)
TOOLS_BIN=${BERTH_TOOLS_DIR:-/var/cache/berth/tools}/bin
TARGET=$(realpath -m "${CARGO_TARGET_DIR:-$checkout/target}")/debug
CACHE=${BERTH_VM_CACHE:-/var/cache/berth/vm}
mode=ci filter="" timeout="" keep_out=""
log() { printf '[vm-lane %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
while (($#)); do
  case "$1" in
    --full) mode=full ;;
    --filter) filter=$2; shift ;;
    --timeout) timeout=$2; shift ;;
    --keep-out) keep_out=$2; shift ;;
    *) die "usage: $0 [--full] [--filter REGEX] [--timeout SECONDS] [--keep-out DIR]" ;;
  esac
  shift
done
[ -n "$timeout" ] || { [ "$mode" = full ] && timeout=3600 || timeout=900; }
[ "$(id -u)" -eq 0 ] || die "needs root"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing (install-deps.sh installs qemu-system-x86)"

started=$SECONDS
image=$("$here/build-image.sh") || die "building the guest image"
log "guest image $image (ready after $((SECONDS - started))s)"

run=$(mktemp -d "$CACHE/run.XXXXXX")
qemu_pid=""
cleanup() {
  if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
    kill -KILL "$qemu_pid" 2>/dev/null || true
    wait "$qemu_pid" 2>/dev/null || true
  fi
  rm -rf --one-file-system "$run"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in=$run/in out=$run/out
mkdir -p "$in/bin" "$in/vm" "$in/deploy" "$out"
chmod 0777 "$out"
# Hard links where possible (same filesystem), copies otherwise; the share is read-only.
share() { ln -f "$1" "$2" 2>/dev/null || cp "$1" "$2"; }
for b in berthd berth-monitor berth-runtime; do
  [ -x "$TARGET/$b" ] || die "$TARGET/$b missing: cargo build --workspace --bins"
  share "$TARGET/$b" "$in/bin/$b"
done
for t in crictl critest kubelet-v1.37.2 grpcurl; do
  [ -x "$TOOLS_BIN/$t" ] || die "$TOOLS_BIN/$t missing: integration/scripts/install-deps.sh"
  share "$(realpath "$TOOLS_BIN/$t")" "$in/bin/${t%-v*}"
done
cp -r "$here/run-guest.sh" "$here/lib.sh" "$here/tests" "$in/vm/"
cp "$checkout/deploy/berthd.service" "$checkout/deploy/config.toml" "$checkout/deploy/kubelet-config.yaml" "$in/deploy/"
# The registry storage with critest's images: built by berth-vm-images (minutes on a
# loaded host), cached by the inputs that decide its content — the image recipes
# (integration/src/forge/), the builder, and the Debian packages whose binaries go in.
reg_key=$( { cat "$checkout"/integration/src/forge/*.rs "$checkout/integration/src/bin/berth-vm-images.rs"
  dpkg-query -W busybox-static nginx apache2-bin procps util-linux 2>/dev/null
  ls -l /var/cache/berth/busybox/bin/busybox 2>/dev/null; } | sha256sum | cut -c1-16)
registry=$CACHE/registry-$reg_key
if [ ! -d "$registry" ]; then
  [ -x "$TARGET/berth-vm-images" ] || die "$TARGET/berth-vm-images missing: cargo build --workspace --bins"
  t0=$SECONDS
  rm -rf "$CACHE/.registry-$reg_key"
  "$TARGET/berth-vm-images" "$CACHE/.registry-$reg_key" || die "building the registry storage"
  mv "$CACHE/.registry-$reg_key" "$registry"
  log "registry storage built in $((SECONDS - t0))s"
fi
touch "$registry"
find "$CACHE" -maxdepth 1 -name 'registry-*' -mtime +2 -exec rm -rf --one-file-system {} +
printf 'LANE_MODE=%q\nLANE_FILTER=%q\n' "$mode" "$filter" > "$in/lane.env"

log "booting the guest (TCG, 1 vCPU, 4 GiB; mode $mode${filter:+, filter $filter}; limit ${timeout}s)"
boot=$SECONDS
qemu-system-x86_64 -accel tcg -machine q35 -cpu max -m 4G -smp 1 \
  -nographic -serial "file:$run/console.log" -monitor none -no-reboot \
  -kernel "$image/vmlinuz" -initrd "$image/initrd.img" \
  -append "root=/dev/vda rw console=ttyS0 quiet systemd.show_status=0 apparmor=1 security=apparmor" \
  -drive "file=$image/rootfs.img,format=raw,if=virtio,snapshot=on,cache=unsafe" \
  -virtfs "local,path=$in,mount_tag=berthin,security_model=none,readonly=on" \
  -virtfs "local,path=$out,mount_tag=berthout,security_model=none" \
  -virtfs "local,path=$registry,mount_tag=berthreg,security_model=none,readonly=on" \
  -nic none </dev/null >"$run/qemu.log" 2>&1 &
qemu_pid=$!
deadline=$((SECONDS + timeout))
while kill -0 "$qemu_pid" 2>/dev/null; do
  if ((SECONDS >= deadline)); then
    log "the run took longer than ${timeout}s: killing QEMU"
    kill -KILL "$qemu_pid" 2>/dev/null || true
    break
  fi
  sleep 2
done
wait "$qemu_pid" 2>/dev/null || true
qemu_pid=""
log "guest ran for $((SECONDS - boot))s"

[ -z "$keep_out" ] || { mkdir -p "$keep_out"; cp -r "$out/." "$keep_out/"; cp "$run/console.log" "$keep_out/" 2>/dev/null || true; }
[ -f "$out/summary" ] && cat "$out/summary" >&2
if [ ! -f "$out/runner.rc" ]; then
  log "the guest runner did not finish; console tail:"
  tail -n 60 "$run/console.log" >&2 || true
  cat "$run/qemu.log" >&2 || true
  [ -f "$out/runner.log" ] && tail -n 40 "$out/runner.log" >&2
  for f in "$out"/[0-9]*.log; do [ -f "$f" ] && { log "---- $(basename "$f") (tail) ----"; tail -n 30 "$f" >&2; }; done
  [ -f "$out/berthd.live.log" ] && { log "---- berthd's journal (tail) ----"; tail -n 30 "$out/berthd.live.log" >&2; }
  exit 1
fi
rc=$(cat "$out/runner.rc")
if [ "$rc" -ne 0 ]; then
  for f in "$out"/*.rc; do
    [ "$(cat "$f")" = 0 ] && continue
    log "---- $(basename "$f" .rc) (exit $(cat "$f")) ----"
    tail -n 80 "${f%.rc}.log" >&2
  done
  [ -f "$out/00-setup.log" ] && grep -q '^FAIL setup' "$out/summary" && cat "$out/00-setup.log" >&2
  log "---- berthd's journal (tail) ----"; tail -n 40 "$out/berthd.log" >&2 || true
fi
log "$rc failed; total $((SECONDS - started))s"
exit "$rc"
}
