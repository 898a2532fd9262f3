#!/bin/sh
# Benchmark: `run` and `create`+`start`+`delete -f` of a busybox /bin/true bundle with
# berth-runtime, runc and crun, alternating, in one run (compare ratios, not absolutes).
# Usage: sudo runtime-core/scripts/bench-oci.sh [samples] [path/to/berth-runtime]
# Runs inside a private mount namespace with /sys/fs/cgroup/unified unmounted, because
# crun refuses hybrid cgroups (see /work/shared/reference/lab-containerd.md).
set -eu
N=${1:-40}
BERTH=${2:-$(dirname "$0")/../../target/release/berth-runtime}
BERTH=$(readlink -f "$BERTH")
if [ "${BENCH_INNER:-}" != 1 ]; then
    exec env BENCH_INNER=1 unshare -m sh -c "umount /sys/fs/cgroup/unified 2>/dev/null || true; exec \"$0\" $N \"$BERTH\""
fi
T=$(mktemp -d)
# berth-runtime's default cgroup parent is /berth: remove it afterwards if left empty.
trap 'rm -rf "$T"; for c in /sys/fs/cgroup/*/berth; do rmdir "$c" 2>/dev/null || true; done' EXIT
mkdir -p "$T/b/rootfs/bin" "$T/b/rootfs/proc" "$T/b/rootfs/sys" "$T/b/rootfs/dev"
cp /bin/busybox "$T/b/rootfs/bin/" && ln "$T/b/rootfs/bin/busybox" "$T/b/rootfs/bin/true"
(cd "$T/b" && "$BERTH" spec)
python3 - "$T/b/config.json" <<'PY'
import json, sys
p = sys.argv[1]; c = json.load(open(p))
c["process"]["terminal"] = False; c["process"]["args"] = ["/bin/true"]
json.dump(c, open(p, "w"))
PY
now() { date +%s%N; }
runtimes="berth:$BERTH"
command -v runc >/dev/null && runtimes="$runtimes runc:$(command -v runc)"
command -v crun >/dev/null && runtimes="$runtimes crun:$(command -v crun)"
cd "$T/b"
i=0
while [ $i -lt "$N" ]; do
    for rt in $runtimes; do
        name=${rt%%:*}; bin=${rt#*:}
        s=$(now); "$bin" --root "$T/root-$name" run "r$i" >/dev/null; e=$(now)
        echo "$name run $(( (e - s) / 1000 ))" >> "$T/samples"
        s=$(now)
        "$bin" --root "$T/root-$name" create "c$i" >/dev/null
        "$bin" --root "$T/root-$name" start "c$i"
        "$bin" --root "$T/root-$name" delete -f "c$i"
        e=$(now)
        echo "$name create+start+delete $(( (e - s) / 1000 ))" >> "$T/samples"
    done
    i=$((i + 1))
done
python3 - "$T/samples" <<'PY'
import sys, statistics, collections
d = collections.defaultdict(list)
for line in open(sys.argv[1]):
    rt, op, us = line.split(); d[(rt, op)].append(int(us) / 1000)
print(f"{'runtime':8} {'operation':22} {'min':>7} {'median':>7} {'max':>7}  (ms, n={len(next(iter(d.values())))})")
for (rt, op), v in sorted(d.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    print(f"{rt:8} {op:22} {min(v):7.1f} {statistics.median(v):7.1f} {max(v):7.1f}")
PY
