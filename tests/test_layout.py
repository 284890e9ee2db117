"""The architecture the design promises: no import cycles in either package, momos above kcomplexity, and
constriction imported in one module."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imports(package: str) -> dict[str, set[str]]:
    """module -> the package's modules it imports (at any depth of the file: lazy imports count too)."""
    graph: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        here = name if rel.name == "__init__" else name.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = here.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                for alias in node.names:
                    targets.add(f"{base}.{alias.name}" if base else alias.name)
                    targets.add(base)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[name] = {t for t in targets if t.split(".")[0] in ("kcomplexity", "momos")}
    modules = set(graph)
    # a "from pkg import module" names the module; "from pkg.mod import func" names pkg.mod
    return {m: {t if t in modules else t.rsplit(".", 1)[0] for t in ts} & modules - {m} for m, ts in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if t.startswith(m + ".") or m.startswith(t + ".") and graph.get(t) is not None and t == m.rsplit(".", 1)[0]:
                continue  # a package and its own submodules
            if state.get(t) == 1:
                found.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def test_no_import_cycles_and_momos_sits_above_kcomplexity():
    for package in ("kcomplexity", "momos"):
        graph = imports(package)
        assert not cycles(graph), f"{package} has import cycles: {cycles(graph)}"
    for path in (ROOT / "kcomplexity").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            assert not any(n.split(".")[0] == "momos" for n in names), f"{path} imports momos"


def test_constriction_is_imported_in_one_module():
    users = [p.relative_to(ROOT).as_posix() for pkg in ("kcomplexity", "momos") for p in (ROOT / pkg).rglob("*.py")
             if "import constriction" in p.read_text() or "from constriction" in p.read_text()]
    assert users == ["kcomplexity/codecs/ans.py"]
