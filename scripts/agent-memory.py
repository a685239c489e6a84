#!/usr/bin/env python3
"""Where an agent's memory goes (docs/benchmarks.md, "Memory: where the 23 MiB go").

  agent-memory.py smaps PID      PSS by mapping of a running agent: the
                                 binary's code and data, anonymous memory,
                                 the heap, shared libraries
  agent-memory.py text BINARY    the binary's code by symbol, grouped by the
                                 first path segment of each (demangled) name

For the per-node agent at N = 100, run beside the benchmark, during its
per-node window:
  cargo xtask bench --quick --scenarios direct --pods 100 --nodeward BIN &
  python3 scripts/agent-memory.py smaps \
      "$(pgrep -f 'nodeward[^ ]* run --config .*per-node-100/node.yaml' | head -n 1)"
"""
import collections
import re
import subprocess
import sys

MIB = 1024 * 1024


def smaps(pid):
    rows = []
    cur = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                parts = line.split()
                cur = {"perm": parts[1], "name": parts[5] if len(parts) > 5 else "", "pss": 0, "size": 0}
                rows.append(cur)
            elif line.startswith("Pss:"):
                cur["pss"] = int(line.split()[1])
            elif line.startswith("Size:"):
                cur["size"] = int(line.split()[1])
    exe = subprocess.run(["readlink", f"/proc/{pid}/exe"], capture_output=True, text=True).stdout.strip()
    groups = collections.Counter()
    mapped = collections.Counter()
    for r in rows:
        if r["name"] == exe:
            key = "the binary's code" if "x" in r["perm"] else "the binary's data (read-only and relocated)"
        elif r["name"] == "":
            key = "anonymous"
        elif r["name"] == "[heap]":
            key = "the main heap"
        else:
            key = "libraries, stacks, the rest"
        groups[key] += r["pss"]
        mapped[key] += r["size"]
    total = sum(groups.values())
    print(f"agent {pid} ({exe}): PSS {total / 1024:.1f} MiB")
    print("| mapping | PSS MiB | mapped MiB |")
    print("|---|---|---|")
    for key, kb in groups.most_common():
        print(f"| {key} | {kb / 1024:.1f} | {mapped[key] / 1024:.1f} |")
    anon = [r["pss"] for r in rows if r["name"] == "" and r["pss"] >= 1024]
    print("anonymous mappings of 1 MiB or more (PSS MiB):", ", ".join(f"{kb / 1024:.1f}" for kb in sorted(anon, reverse=True)))


def text(binary):
    out = subprocess.run(["nm", "--size-sort", "-S", "-C", binary], capture_output=True, text=True, check=True).stdout
    by = collections.Counter()
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) < 4 or parts[2] not in "tTwW":
            continue
        size, name = int(parts[1], 16), parts[3].lstrip("<&*").replace("dyn ", "")
        m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)::", name)
        by[m.group(1) if m else "(C, assembly: aws-lc, libc glue)"] += size
    print(f"{binary}: {sum(by.values()) / MIB:.2f} MiB of code in symbols")
    for crate, size in by.most_common(25):
        print(f"{size / MIB:7.2f} MiB  {crate}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("smaps", "text"):
        sys.exit(__doc__)
    {"smaps": smaps, "text": text}[sys.argv[1]](sys.argv[2])
