#!/usr/bin/env python3
"""Where an agent's memory goes (docs/benchmarks.md, "Memory: where the 23 MiB go").

  agent-memory.py smaps PID      PSS by mapping of a running agent: the
                                 binary's code and data, anonymous memory,
                                 the heap, shared libraries
  agent-memory.py text BINARY    the binary's code by symbol, grouped by the
                                 first path segment of each (demangled) name
  agent-memory.py heap MASSIF    the heap by allocation site, from a massif
                                 file (scripts/nodeward-under-massif), at a
                                 detailed snapshot in the middle of the window

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


# Frames that only say how the memory was allocated, not what for.
PLUMBING = re.compile(
    r"^(UnknownInlinedFun|alloc|alloc_impl\w*|allocate|try_allocate\w*|with_capacity\w*|new<|box_new\w*|grow\w*"
    r"|reserve\w*|do_reserve\w*|finish_grow|malloc|exchange_malloc|\{closure|unwrap_or_else|try_new_uninit\w*"
    r"|new_uninit\w*|__rust\w*|alloc::|<alloc|core::|spec_\w*|to_vec|clone|from<|into)\b"
)


def heap(path):
    snapshots, cur, tree = [], None, None
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("snapshot="):
                cur = {"heap": 0, "lines": []}
                snapshots.append(cur)
            elif line.startswith("mem_heap_B="):
                cur["heap"] = int(line.split("=")[1])
            elif line.startswith("heap_tree="):
                tree = cur["lines"] if line != "heap_tree=empty" else None
            elif line.startswith("#"):
                tree = None
            elif tree is not None and line.strip():
                tree.append(line)
    peak = max(s["heap"] for s in snapshots)
    steady = [i for i, s in enumerate(snapshots) if s["lines"] and s["heap"] >= 0.9 * peak]
    pick = snapshots[steady[len(steady) // 2]]
    # Parse the indented tree: each node "nID: BYTES LOCATION", children indented one more.
    roots, stack = [], []
    for line in pick["lines"]:
        depth = len(line) - len(line.lstrip(" "))
        m = re.match(r"\s*n\d+: (\d+) (.*)", line)
        node = {"bytes": int(m.group(1)), "loc": re.sub(r"0x[0-9A-Fa-f]+: ", "", m.group(2)), "kids": []}
        while stack and stack[-1][0] >= depth:
            stack.pop()
        (stack[-1][1]["kids"] if stack else roots).append(node)
        stack.append((depth, node))
    print(f"{path}: snapshot {steady[len(steady) // 2]} of {len(snapshots)}, heap {pick['heap'] / MIB:.2f} MiB (peak {peak / MIB:.2f})")
    print("| KiB | allocated by (innermost meaningful frames first) |")
    print("|---|---|")
    for site in roots[0]["kids"]:
        frames, node = [], site
        while True:
            name = node["loc"].split(" (")[0]
            if not PLUMBING.match(name):
                frames.append(node["loc"][:120])
            if len(frames) == 3 or len(node["kids"]) != 1:
                break
            node = node["kids"][0]
        print(f"| {site['bytes'] / 1024:.0f} | {' <- '.join(frames) or site['loc'][:120]} |")


if __name__ == "__main__":
    commands = {"smaps": smaps, "text": text, "heap": heap}
    if len(sys.argv) != 3 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](sys.argv[2])
