#!/usr/bin/env python3
"""Fails when the modules of server/ use each other in a cycle.

A module is a source file and its header (server/routes.c and
server/routes.h are the module server/routes; a header without a source, as
server/daemon.h, is a module of its own). A module uses another when its
source or its header includes the other's header. Two rules:
- a header declares only functions that its own source defines (a header
  without a source declares none: types, macros and data only), so that an
  include is a use of the module that owns the functions;
- the modules and their uses form a DAG.
Every breach is printed, and the exit status is 1.

Usage: tools/check_includes.py [DIR ...]   (default: server)
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def module_graph(root: Path, dirs: list[str]) -> dict[str, set[str]]:
    """{module: modules it uses}, for the modules under dirs."""
    graph: dict[str, set[str]] = {}
    for d in dirs:
        for path in sorted((root / d).rglob("*")):
            if path.suffix not in (".c", ".h"):
                continue
            module = str(path.relative_to(root).with_suffix(""))
            uses = graph.setdefault(module, set())
            for target in INCLUDE.findall(path.read_text()):
                other = str(Path(target).with_suffix(""))
                if other != module and any(other.startswith(x + "/") for x in dirs):
                    uses.add(other)
    return graph


PROTOTYPE = re.compile(r"^(?!typedef|static|extern|#|/|\s|})[^;{}()]*?\b(\w+)\s*\([^;{}]*\)"
                       r"[^;{}]*;", re.M)


def foreign_declarations(root: Path, dirs: list[str]) -> list[str]:
    """Functions declared in a header that its own source does not define."""
    bad = []
    for d in dirs:
        for header in sorted((root / d).rglob("*.h")):
            source = header.with_suffix(".c")
            text = source.read_text() if source.exists() else ""
            for name in PROTOTYPE.findall(header.read_text()):
                defined = re.search(r"^(?!static)[^;{}\n]*\b" + name + r"\([^;{}]*\)\s*\{", text,
                                    re.M)
                if not defined:
                    bad.append(f"{header.relative_to(root)} declares {name}, which "
                               f"{source.relative_to(root)} does not define")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    dirs = sys.argv[1:] or ["server"]
    graph = module_graph(root, dirs)
    foreign = foreign_declarations(root, dirs)
    for line in foreign:
        print(line)
    bad = cycles(graph)
    for component in bad:
        print("include cycle among: " + ", ".join(component))
        for m in component:
            inside = sorted(graph[m] & set(component))
            print(f"    {m} -> {', '.join(inside)}")
    if not bad and not foreign:
        print(f"no include cycle among the {len(graph)} modules of {', '.join(dirs)}, and each "
              "header declares its own source's functions")
    return 1 if bad or foreign else 0


if __name__ == "__main__":
    sys.exit(main())
