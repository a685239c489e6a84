#!/usr/bin/env python3
"""The dependency graph of the agent's top-level modules, and its cycles.

Reads every product file under agent/src (test modules and `tests.rs` files
aside), maps each `crate::NAME` reference (in `use` lines and in paths) to an
edge from the file's top-level module to NAME, and prints the edges and the
strongly connected components with more than one module. Also lists product
files over the line budget. Exit status 1 when there is a cycle or an
oversized file: CI runs it (see .ci/run).

usage: scripts/module-graph.py [--max-lines N] [--quiet]
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "agent" / "src"
# Binaries and the crate root are the top, not modules in the graph.
SKIP = {"main.rs", "lib.rs", "bin"}


def top_module(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".rs")


def product_text(path: Path) -> str:
    """The file without its `#[cfg(test)] mod tests { ... }` block."""
    text = path.read_text()
    m = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text)
    if m:
        text = text[: m.start()]
    return text


def main() -> int:
    max_lines = 500
    quiet = "--quiet" in sys.argv
    if "--max-lines" in sys.argv:
        max_lines = int(sys.argv[sys.argv.index("--max-lines") + 1])
    modules = {p.name.removesuffix(".rs") for p in ROOT.iterdir() if p.name not in SKIP}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    oversized = []
    for path in sorted(ROOT.rglob("*.rs")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in SKIP or path.name == "tests.rs" or "tests" in rel.parts[:-1]:
            continue
        text = product_text(path)
        lines = text.count("\n")
        if lines > max_lines:
            oversized.append((str(rel), lines))
        src = top_module(path)
        for dst in re.findall(r"\bcrate::(\w+)", text):
            if dst != src and dst in modules:
                edges[src].add(dst)
        # `use crate::{a, b::c}` groups.
        for group in re.findall(r"\bcrate::\{([^}]*)\}", text, re.S):
            for dst in re.findall(r"(?:^|,)\s*(\w+)", group):
                if dst != src and dst in modules:
                    edges[src].add(dst)
    sccs = strongly_connected(edges)
    cycles = [c for c in sccs if len(c) > 1]
    if not quiet:
        for src in sorted(edges):
            print(f"{src} -> {', '.join(sorted(edges[src])) or '(nothing)'}")
    for c in cycles:
        print(f"cycle: {' <-> '.join(sorted(c))}")
    for rel, n in oversized:
        print(f"over {max_lines} lines: {rel} ({n})")
    if not cycles and not oversized:
        print(f"no module cycle; no product file over {max_lines} lines")
    return 1 if cycles or oversized else 0


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


if __name__ == "__main__":
    sys.exit(main())
