"""No import cycles between modules (issue 13): every import counts, at module level, inside a
function or under TYPE_CHECKING, since each is a dependency a reader has to hold in mind. Read
from the source (ast), nothing is imported. Package `__init__` files are left out of the graph:
they only gather their package's public names."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREES = {"pointwear": ROOT / "backend" / "pointwear", "pointwear.link": ROOT / "addon" / "link",
         "addon": ROOT / "addon"}


def modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for prefix, folder in TREES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("").parts
            if prefix == "pointwear" and rel[0] == "link":
                continue
            out[".".join((prefix, *rel))] = path
    return out


def edges(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rsplit(".", 1)[0]
            target = (base + "." + node.module if node.module else base) if node.level else (node.module or "")
            for alias in node.names:
                for cand in (f"{target}.{alias.name}", target):
                    if cand in known:
                        found.add(cand)
                        break
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
    return {t for t in found if known[t].name != "__init__.py" and t != name}


def cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    known = modules()
    graph = {n: edges(n, p, known) for n, p in known.items() if p.name != "__init__.py"}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_checker_sees_an_edge_of_each_kind():
    known = modules()
    fit_edges = edges("pointwear.fit.outfit_fit", known["pointwear.fit.outfit_fit"], known)
    assert {"pointwear.fit.outputs", "pointwear.fit.state", "pointwear.link.protocol"} <= fit_edges
    assert "addon.operators.runtime" in edges("addon.operators.appearance", known["addon.operators.appearance"], known)


def test_no_import_cycles():
    assert cycles() == []
