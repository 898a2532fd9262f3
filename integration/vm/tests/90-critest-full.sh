#!/bin/bash
# vm-lane: full
# vm-lane: timeout 3000
# critest v1.37.0's whole suite on cgroup v2 (except `public image with digest`, which
# needs the real upstream registry): `vm-lane.sh --full --filter critest-full`.
# critest writes straight to out/critest-full.out, so a run cut short by the lane's
# time limit still shows how far it got.
. /mnt/berth/vm/lib.sh
# critest's AppArmor specs load their test profiles with `sudo apparmor_parser`; the
# guest has no sudo and the runner is root already: a sudo that just runs the command
# (dropping flags such as -n or -E).
mkdir -p "$TEST_TMP/bin"
printf '#!/bin/sh\nwhile [ "${1#-}" != "$1" ]; do shift; done\nexec "$@"\n' > "$TEST_TMP/bin/sudo"
chmod 0755 "$TEST_TMP/bin/sudo"
export PATH=$TEST_TMP/bin:$PATH
out=$BERTH_VM_OUT/critest-full.out
rc=0
critest --runtime-endpoint unix:///run/berth/berth.sock --image-endpoint unix:///run/berth/berth.sock \
  --ginkgo.skip='public image with digest' --ginkgo.no-color --ginkgo.v --ginkgo.timeout=2900s >"$out" 2>&1 || rc=$?
grep -E '^\s*\[FAIL\]|Ran [0-9]+ of|Passed \| ' "$out" || true
grep -q ' 0 Failed ' "$out" && [ "$rc" -eq 0 ] || fail "critest exited $rc (full output in out/critest-full.out)"
say "full critest passed"
