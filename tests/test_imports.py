"""The import rules, read from the source with `ast` (imports inside functions included).

`trainables` and `eval` never import each other and neither imports `sweep`; `common` imports none of the
project's other packages; the space file's room (`sweep.space`) never imports the readers of a finished sweep
(`sweep.results`); no package has an import cycle among its own modules (docs/architecture.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "trainables", "eval", "sweep", "organism", "smollm2")
FORBIDDEN = {
    "trainables": {"eval", "sweep"},
    "eval": {"trainables", "sweep"},
    "common": {"trainables", "eval", "sweep", "organism", "smollm2"},
    "sweep.space": {"sweep.results"},
}
ACYCLIC = ("common", "eval", "trainables", "organism", "smollm2", "sweep")


def imported_names(module: str, source: str, is_package: bool = False) -> set[str]:
    """Every module name an import statement anywhere in `source` may load; `from a import b` gives a and a.b."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: strip the module's own name (not a package's), then level - 1 more
                parts = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join(parts + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def project_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    files = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return {m: {n for n in imported_names(m, p.read_text(), p.name == "__init__.py") if n in files and n != m}
            for m, p in files.items()}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n, path + [n])):
                return found
        state[m] = 2
        return None

    return next((c for m in sorted(graph) if m not in state and (c := visit(m, [m]))), None)


def test_the_scanner_sees_function_level_and_relative_imports():
    source = "def f():\n    from eval import generate\n    import sweep.run\nfrom .data import x\n"
    assert {"eval.generate", "sweep.run", "trainables.data"} <= imported_names("trainables.r2mu", source)
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_packages_keep_the_import_rule():
    def within(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    bad = [f"{m} imports {n}" for m, deps in project_graph().items() for n in sorted(deps)
           for owner, banned in FORBIDDEN.items() if within(m, owner) and any(within(n, b) for b in banned)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("package", ACYCLIC)
def test_no_import_cycle(package):
    graph = project_graph()
    inside = {m: {n for n in deps if n.split(".")[0] == package} for m, deps in graph.items()
              if m.split(".")[0] == package}
    found = cycle(inside)
    assert found is None, " -> ".join(found)
