#!/bin/bash
# critest v1.37.0 on cgroup v2, the CI subset: the specs on resources (OOMKilled,
# container and pod stats, metrics) and on security (privileged, capabilities, read-only
# rootfs and paths, NoNewPrivs, seccomp). Images come from the in-guest registry.
# The full suite is 90-critest-full.sh (--full).
# vm-lane: timeout 420
. /mnt/berth/vm/lib.sh
focus='Container OOM|runtime should support listing (container )?stats|metrics|runtime should support (Privileged|adding capability|dropping capability|dropping ALL|that ReadOnlyRootfs|ReadonlyPaths)|NoNewPrivs|seccomp (unconfined|default) on the container'
out=$TEST_TMP/critest.out
rc=0
critest --runtime-endpoint unix:///run/berth/berth.sock --image-endpoint unix:///run/berth/berth.sock \
  --ginkgo.focus="$focus" --ginkgo.skip='public image with digest' --ginkgo.no-color \
  --ginkgo.timeout=390s >"$out" 2>&1 || rc=$?
grep -E '^\s*\[FAIL\]|Ran [0-9]+ of|Passed \| ' "$out" || true
grep -q ' 0 Failed ' "$out" && [ "$rc" -eq 0 ] || { tail -n 120 "$out"; fail "critest exited $rc"; }
ran=$(grep -o 'Ran [0-9]* of' "$out" | grep -o '[0-9]*')
[ "${ran:-0}" -ge 10 ] || { tail -n 40 "$out"; fail "critest ran only ${ran:-0} specs: the focus matches too little"; }
say "critest subset: $ran specs passed"
