#!/bin/bash
# AppArmor on a node that has it (the guest: Debian's kernel, AppArmor enabled). A
# container asking for nothing runs under berth-default (enforce), its init and exec'd
# processes alike, and the profile denies what it must: with CAP_SYS_ADMIN granted,
# `mount -t tmpfs` is refused in the confined container and works in the same
# container asked Unconfined. Privileged
# containers are not confined. A Localhost profile that is not loaded fails the create
# with FailedPrecondition naming it; once loaded it applies (its deny rule holds).
# berth-default is loaded once per boot, however many containers and restarts.
# vm-lane: timeout 300
. /mnt/berth/vm/lib.sh
crictl pull "$BUSYBOX" >/dev/null
grep -q '^Y' /sys/module/apparmor/parameters/enabled || fail "AppArmor is not enabled in the guest"
crictl info | tr -d ' \n' | grep >/dev/null '"apparmor":{[^}]*"enabled":true' \
  || crictl info | grep >/dev/null '\\"enabled\\":true' || fail "Status(verbose) does not say AppArmor is enabled: $(crictl info | grep -i apparmor)"

label() { crictl exec "$1" cat "${2:-/proc/self/attr/current}" | tr -d '\0'; }
sleeper='["sleep", "3600"]'
sysadmin='"capabilities": { "add_capabilities": ["SYS_ADMIN"] }'
pod=$(run_pod aa)

# 1. Nothing asked for: berth-default, enforced, on the init and on exec'd processes.
def=$(run_ctr "$pod" def "$BUSYBOX" "$sleeper" "\"security_context\": { $sysadmin }")
[ "$(label "$def")" = "berth-default (enforce)" ] || fail "exec'd process label: '$(label "$def")'"
# The init, seen from the host (pid 1 of the pod's shared pid namespace is Berth's
# unconfined infra process, not the container).
init=$(crictl inspect -o go-template --template '{{.info.pid}}' "$def")
[ "$(tr -d '\0' < "/proc/$init/attr/current")" = "berth-default (enforce)" ] \
  || fail "init (pid $init) label: '$(tr -d '\0' < "/proc/$init/attr/current")'"
grep -q '^berth-default (enforce)$' /sys/kernel/security/apparmor/profiles || fail "berth-default not listed"
say "default: berth-default (enforce) on the init and exec"

# 2. Denied by the profile, not by anything else: the same container asked Unconfined mounts.
if out=$(crictl exec "$def" sh -c 'mkdir -p /m && mount -t tmpfs t /m && echo mounted' 2>&1); then
  fail "mount worked under berth-default: $out"
fi
grep -qi 'permission denied' <<<"$out" || fail "mount under berth-default failed otherwise: $out"
# `deny` rules are silent (no audit record): the proof that AppArmor refused is the
# same container config mounting once asked Unconfined.
unc=$(run_ctr "$pod" unc "$BUSYBOX" "$sleeper" \
  "\"security_context\": { $sysadmin, \"apparmor\": { \"profile_type\": 1 } }")
[ "$(label "$unc")" = unconfined ] || fail "Unconfined container label: '$(label "$unc")'"
out=$(crictl exec "$unc" sh -c 'mkdir -p /m && mount -t tmpfs t /m && echo mounted' 2>&1) \
  || fail "mount in the Unconfined container: $out"
say "mount with CAP_SYS_ADMIN: denied under berth-default, works Unconfined"

# Deprecated spelling, and privileged containers.
dep=$(run_ctr "$pod" dep "$BUSYBOX" "$sleeper" '"security_context": { "apparmor_profile": "runtime/default" }')
[ "$(label "$dep")" = "berth-default (enforce)" ] || fail "runtime/default label: '$(label "$dep")'"
ppod=$(run_pod aa-priv '"security_context": { "privileged": true }')
priv=$(run_ctr "$ppod" priv "$BUSYBOX" "$sleeper" '"security_context": { "privileged": true }')
[ "$(label "$priv")" = unconfined ] || fail "privileged container label: '$(label "$priv")'"
say "runtime/default confines; privileged is unconfined"

# 3. Localhost: not loaded -> FailedPrecondition naming it; loaded -> applied.
name=berth-vmlane-no-tmp-writes
missing=$(ctr_json missing "$BUSYBOX" "$sleeper" \
  "\"security_context\": { \"apparmor\": { \"profile_type\": 2, \"localhost_ref\": \"$name\" } }")
if out=$(crictl create "$pod" "$missing" "$TEST_TMP/podcfg-$pod" 2>&1); then
  crictl rm -f "$out" >/dev/null 2>&1 || true
  fail "created a container with the unloaded profile $name"
fi
# (crictl prints the message with its quotes escaped)
grep -q 'FailedPrecondition' <<<"$out" && grep -q "$name.\{0,2\} is not loaded" <<<"$out" \
  || fail "unloaded Localhost profile: $out"
cat > "$TEST_TMP/$name" <<PROFILE
#include <tunables/global>
profile $name flags=(attach_disconnected,mediate_deleted) {
  #include <abstractions/base>
  file,
  deny /tmp/** w,
}
PROFILE
apparmor_parser -r "$TEST_TMP/$name" || fail "loading $name"
on_exit "apparmor_parser -R $TEST_TMP/$name"
loc=$(run_ctr "$pod" loc "$BUSYBOX" "$sleeper" \
  "\"security_context\": { \"apparmor\": { \"profile_type\": 2, \"localhost_ref\": \"$name\" } }")
[ "$(label "$loc")" = "$name (enforce)" ] || fail "Localhost label: '$(label "$loc")'"
if crictl exec "$loc" touch /tmp/x 2>/dev/null; then fail "$name let /tmp be written"; fi
crictl exec "$loc" touch /x || fail "$name refused a write it allows"
say "Localhost: unloaded refused (FailedPrecondition), loaded applied ($name denies /tmp writes)"

# 4. Loaded once: one load in berthd's log for this boot (restarts find it loaded).
loads=$(journalctl -u berthd -b --no-pager | grep -c 'AppArmor default profile loaded' || true)
[ "$loads" = 1 ] || fail "berth-default loaded $loads times this boot"
say "berth-default loaded once this boot"
