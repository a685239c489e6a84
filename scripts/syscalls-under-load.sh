#!/bin/bash
# System calls per request of NGINX's bare hop and of nodeward's cached path,
# under the throughput harness's load (docs/benchmarks.md, "System calls per
# request"). Needs perf with the syscalls tracepoints (root).
#
#   bash scripts/syscalls-under-load.sh [NODEWARD_BIN]    # ~1 min
#
# `cargo xtask bench --quick` runs the two scenarios; two watchers attach
# `perf stat -e 'syscalls:sys_enter_*'` for 2 s to NGINX's worker processes
# and to the agent, inside each one's measured window. perf slows every
# system call it counts, so the request rate in the window is not wrk's: the
# counts are divided by the requests the proxy itself read, which on both is
# half its recvfrom calls (one read of the client's request and one of the
# upstream's response per request: recvfrom and writev come in equal numbers).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-}
out=$PWD/target/syscalls
rm -rf "$out" && mkdir -p "$out"

# $1: pgrep -f pattern (bracketed so it does not match this script); $2: file;
# $3: "workers" to count the matched master's children.
watch() {
    local pat=$1 file=$2 pids=""
    for _ in $(seq 1 1500); do
        master=$(pgrep -f "$pat" | head -n 1 || true)
        if [ -n "$master" ]; then
            sleep 1.5
            if [ "${3:-}" = workers ]; then pids=$(pgrep -d, -P "$master"); else pids=$master; fi
            perf stat -e 'syscalls:sys_enter_*' -p "$pids" -o "$file" -- sleep 2 >/dev/null 2>&1
            return
        fi
        sleep 0.1
    done
}
watch "[n]ginx-proxy/" "$out/nginx.txt" workers &
watch "[r]un --config .*nodeward-cached" "$out/nodeward.txt" &
args=(--quick --scenarios nginx-proxy,nodeward-cached --no-pernode --out "$out/bench")
[ -n "$bin" ] && args+=(--nodeward "$bin")
cargo xtask bench "${args[@]}" >"$out/bench.log" 2>&1
wait
python3 - "$out" <<'PY'
import re, sys
out = sys.argv[1]
table = {}
for who in ("nginx", "nodeward"):
    counts = {}
    for line in open(f"{out}/{who}.txt"):
        m = re.match(r"\s*([\d,]+)\s+syscalls:sys_enter_(\w+)", line)
        if m and int(m.group(1).replace(",", "")):
            counts[m.group(2)] = int(m.group(1).replace(",", ""))
    requests = counts["recvfrom"] / 2
    table[who] = {k: v / requests for k, v in counts.items()}
names = sorted(set(table["nginx"]) | set(table["nodeward"]), key=lambda n: -max(t.get(n, 0) for t in table.values()))
print("| system call | NGINX per request | nodeward per request |")
print("|---|---|---|")
for n in names:
    if max(t.get(n, 0) for t in table.values()) >= 0.005:
        print(f"| `{n}` | {table['nginx'].get(n, 0):.2f} | {table['nodeward'].get(n, 0):.2f} |")
print(f"| all | {sum(table['nginx'].values()):.2f} | {sum(table['nodeward'].values()):.2f} |")
PY
