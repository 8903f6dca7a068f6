"""The package's imports flow one way: no module hides a cycle behind an import inside a
function (the one deliberate exception is the scheme registry loading its plugins)."""

from __future__ import annotations

import ast
import collections
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lorap_dist"
ALLOWED = {("lorap_dist.quant.api", "lorap_dist.quant.schemes")}  # registry loads plugins


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names[name] = path
    return names


def import_graphs() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``(top, inner)``: for each module, the package modules it imports at its top level
    and those it imports inside functions."""
    names = module_names()

    def resolve(target: str) -> str | None:
        while target and target not in names:
            target = target.rpartition(".")[0]
        return target or None

    top: dict[str, set[str]] = collections.defaultdict(set)
    inner: dict[str, set[str]] = collections.defaultdict(set)
    for name, path in names.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lorap_dist"):
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("lorap_dist")]
            else:
                continue
            for target in targets:
                found = resolve(target)
                if found and found != name:
                    (top if node.col_offset == 0 else inner)[name].add(found)
    return top, inner


def reaches(start: str, goal: str, graph: dict[str, set[str]]) -> bool:
    seen, stack = set(), [start]
    while stack:
        name = stack.pop()
        if name == goal:
            return True
        if name not in seen:
            seen.add(name)
            stack.extend(graph.get(name, ()))
    return False


def test_no_import_inside_a_function_hides_a_cycle():
    top, inner = import_graphs()
    assert top["lorap_dist.train"]  # the scan sees the package
    hidden = [
        (name, target)
        for name, targets in inner.items()
        for target in targets
        if target not in top[name]
        and not name.startswith(target + ".")  # a package's own __init__
        and reaches(target, name, top)
        and (name, target) not in ALLOWED
    ]
    assert not hidden, f"imports inside functions that close a cycle: {hidden}"


def test_top_level_imports_have_no_cycle():
    top, _ = import_graphs()
    cycles = [
        (name, target)
        for name, targets in top.items()
        for target in targets
        if not name.startswith(target + ".")
        and not target.startswith(name + ".")
        and reaches(target, name, top)
    ]
    assert not cycles, f"top-level import cycles: {cycles}"
