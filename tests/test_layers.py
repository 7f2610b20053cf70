"""The architecture, held by a test: layers only look down, packages never import each other,
no module imports another package's private module, and no import circle exists anywhere.

The layers (ARCHITECTURE.md), bottom first::

    dccore  ->  dcz  ->  compression  ->  exporters -> android_export, ios_export ; device_harness
                                                        ->  deepcompress (the application)

Every import is read from the source (module level and inside functions alike), so a lazy
import that runs back up a layer is caught too.
"""
from __future__ import annotations

import ast
import functools
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# package -> the project packages it may import (besides itself)
ALLOWED = {
    "dccore": set(),
    "dcz": {"dccore"},
    "compression": {"dccore", "dcz"},
    "exporters": {"dccore"},
    "android_export": {"dccore", "exporters"},
    "ios_export": {"dccore", "exporters"},
    "device_harness": {"dccore"},
    "deepcompress": {"dccore", "dcz", "compression", "exporters", "android_export", "ios_export",
                     "device_harness"},
}
# what each package may import from outside the project at module level is not this test's
# business, except the bottom: the core stays free of torch and the converters (numpy is fine)
HEAVY = {"torch", "coremltools", "litert_torch", "ai_edge_litert", "tensorflow"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[str]:
    """Absolute names of every module ``path`` imports."""
    tree = ast.parse(path.read_text(), str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from pkg import mod`` needs pkg.mod; ``from pkg import name`` needs pkg
            subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in _all_modules()]
            out += subs if len(subs) == len(node.names) else [mod, *subs]
    return out


@functools.lru_cache(maxsize=None)
def _all_modules() -> frozenset[str]:
    return frozenset(_module_name(p) for package in ALLOWED for p in (ROOT / package).rglob("*.py"))


def _project_modules() -> dict[str, Path]:
    mods = {}
    for package in ALLOWED:
        for path in (ROOT / package).rglob("*.py"):
            mods[_module_name(path)] = path
    return mods


MODULES = _project_modules()


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in MODULES.items():
        for imported in _imports(path):
            # the longest project module that the imported name is, or is inside of
            target = imported
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges[name].add(target)
    return edges


def test_every_package_is_known():
    found = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert found == set(ALLOWED), "a new top-level package needs its place in ALLOWED and " \
                                  "ARCHITECTURE.md"


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_only_look_down(package):
    bad = []
    for name, path in MODULES.items():
        if name.split(".")[0] != package:
            continue
        for imported in _imports(path):
            top = imported.split(".")[0]
            if top in ALLOWED and top != package and top not in ALLOWED[package]:
                bad.append(f"{name} imports {imported}")
            if package == "dccore" and top in HEAVY:
                bad.append(f"{name} imports {imported} (the core stays free of it)")
    assert not bad, "imports that run back up a layer:\n" + "\n".join(bad)


def test_no_private_module_is_imported_from_another_package():
    bad = []
    for name, path in MODULES.items():
        mine = name.split(".")[0]
        for imported in _imports(path):
            parts = imported.split(".")
            if parts[0] in ALLOWED and parts[0] != mine and any(p.startswith("_") for p in parts[1:]):
                bad.append(f"{name} imports {imported}")
    assert not bad, "private modules used across packages:\n" + "\n".join(bad)


def test_no_import_circle():
    edges = _edges()
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [])
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_the_test_sees_imports(tmp_path):
    """The walker itself: a relative import two levels up resolves to the right module."""
    names = _imports(ROOT / "deepcompress" / "commands" / "export.py")
    assert "deepcompress.exporting" in names or "deepcompress.exporting.load" in names
    assert any(n.startswith("exporters") for n in names)


def test_only_the_cli_imports_the_commands():
    """A command parses flags, calls the library and prints: what another module (or a
    benchmark, or another command) would reuse lives outside ``deepcompress/commands/``. The CLI
    names the commands' modules in ``COMMANDS`` and imports the chosen one by name."""
    scripts = {f"bench.{p.stem}": p for p in (ROOT / "bench").glob("*.py")}
    bad = [f"{name} imports {imported}" for name, path in {**MODULES, **scripts}.items()
           for imported in _imports(path)
           if imported.split(".")[:2] == ["deepcompress", "commands"]
           and name != "deepcompress.cli"]
    assert not bad, "modules that import a command:\n" + "\n".join(bad)
    from deepcompress.cli import COMMANDS

    assert {module for module, _help in COMMANDS.values()} == {
        _module_name(p) for p in (ROOT / "deepcompress" / "commands").glob("[!_]*.py")}


def test_the_commands_use_the_library_by_its_public_names():
    """A command is a front end, as a user's script is: it imports the public names of the
    packages (``deepcompress.qualify``, not ``deepcompress.qualify._gates``), so that what the
    commands need is what the library offers everyone."""
    bad = [f"{name} imports {imported}" for name, path in MODULES.items()
           if name.startswith("deepcompress.commands.")
           for imported in _imports(path)
           if imported.split(".")[0] in ALLOWED
           and any(p.startswith("_") for p in imported.split(".")[1:])]
    assert not bad, "private modules imported by a command:\n" + "\n".join(bad)
