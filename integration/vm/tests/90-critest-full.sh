#!/bin/bash
# vm-lane: full
# vm-lane: timeout 3000
# critest v1.37.0's whole suite on cgroup v2 (except `public image with digest`, which
# needs the real upstream registry): `vm-lane.sh --full --filter critest-full`.
. /mnt/berth/vm/lib.sh
out=$TEST_TMP/critest.out
rc=0
critest --runtime-endpoint unix:///run/berth/berth.sock --image-endpoint unix:///run/berth/berth.sock \
  --ginkgo.skip='public image with digest' --ginkgo.no-color --ginkgo.timeout=2900s >"$out" 2>&1 || rc=$?
grep -E '^\s*\[FAIL\]|Ran [0-9]+ of|Passed \| ' "$out" || true
cp "$out" "$BERTH_VM_OUT/critest-full.out" || true
grep -q ' 0 Failed ' "$out" && [ "$rc" -eq 0 ] || fail "critest exited $rc (full output in out/critest-full.out)"
say "full critest passed"
