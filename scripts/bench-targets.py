#!/usr/bin/env python3
"""Issue 14's target rows from a `cargo xtask bench` results.json.

The harness prints these rows itself since branch perf14 (xtask/src/bench/
report.rs, `targets`); this recomputes them, by the same formulas, for a
results.json written by an older harness. Usage: bench-targets.py RESULTS.json
"""
import json
import statistics
import sys

d = json.load(open(sys.argv[1]))
runs = d["runs"]
sums = {s["name"]: s for s in d["scenarios"]}


def paired(a, b, f):
    out = []
    for ra in runs:
        if ra["scenario"] != a:
            continue
        for rb in runs:
            if rb["scenario"] == b and rb["repeat"] == ra["repeat"] and f(rb) > 0:
                out.append(f(ra) / f(rb))
    return out


def show(name, vals, ok):
    if not vals:
        print(f"| {name} | not measured in this run | n/a |")
        return
    m = statistics.median(vals)
    print(f"| {name} | {m:.2f}× (min {min(vals):.2f}, max {max(vals):.2f}) | {'met' if ok(m) else 'MISSED'} |")


cpu = lambda r: (r.get("proxy") or {}).get("cpu_s_per_10k", 0.0)
rps = lambda r: r["wrk"]["rps"]
p99 = lambda r: r["wrk"]["latency_us"]["p99"]
print("| target | measured | verdict |\n|---|---|---|")
show("cached token: agent CPU per request ≤ 1.2× the bare NGINX hop's", paired("nodeward-cached", "nginx-proxy", cpu), lambda m: m <= 1.2)
show("cached token: throughput ≥ 0.85× the bare NGINX hop", paired("nodeward-cached", "nginx-proxy", rps), lambda m: m >= 0.85)
show("cached token: p99 ≤ 1.0× the bare NGINX hop", paired("nodeward-cached", "nginx-proxy", p99), lambda m: m <= 1.0)
for alg, sc in [("RS256", "nodeward-miss-rs256"), ("ES256", "nodeward-miss-es256"), ("EdDSA", "nodeward-miss-eddsa")]:
    raw = d["raw_verify_us"].get(alg)
    if sc in sums and "nodeward-cached" in sums and raw:
        miss = sums[sc]["proxy_cpu_s_per_10k"]["median"] * 100
        hit = sums["nodeward-cached"]["proxy_cpu_s_per_10k"]["median"] * 100
        ratio = (miss - hit) / raw
        print(f"| cache-miss {alg}: what a miss adds ≤ 1.2× the raw signature verify | {ratio:.2f}×: {miss:.1f} µs/request on a miss vs {hit:.1f} µs on a hit = {miss - hit:.1f} µs added; raw aws-lc-rs {alg} {raw:.1f} µs (same run) | {'met' if ratio <= 1.2 else 'MISSED'} |")
show("eBPF-steered cached path: throughput ≥ 0.95× the reverse-proxy cached path", paired("nodeward-steered-cached", "nodeward-cached", rps), lambda m: m >= 0.95)
nodes = [p for p in d["pernode"] if p["model"] == "per-node"]
if nodes:
    n = max(nodes, key=lambda p: p["pods"])
    pss = n["pss_kb"] / 1024
    print(f"| N = {n['pods']}: agent PSS ≤ 12 MiB | {pss:.1f} MiB | {'met' if pss <= 12 else 'MISSED'} |")
