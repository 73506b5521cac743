"""The import direction of docs/architecture.md, enforced by parsing every module's
imports (lazy ones inside functions included; `if TYPE_CHECKING:` blocks excluded,
since they never run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "runtime"

# package (or module) -> packages it must never import
FORBIDDEN = {
    "runtime.core": ["runtime."],
    "runtime.components": ["runtime."],
    "runtime.config": ["runtime.cache", "runtime.constrained", "runtime.engine", "runtime.layers",
                       "runtime.models", "runtime.server", "runtime.lang", "runtime.cli"],
    "runtime.layers": ["runtime.engine", "runtime.cache", "runtime.models", "runtime.server", "runtime.lang"],
    "runtime.kernels": ["runtime.engine", "runtime.cache", "runtime.models", "runtime.constrained", "runtime.server",
                        "runtime.lang"],
    "runtime.models": ["runtime.engine", "runtime.cache", "runtime.server", "runtime.lang"],
    "runtime.cache": ["runtime.engine", "runtime.models", "runtime.constrained", "runtime.server", "runtime.lang"],
    "runtime.constrained": ["runtime.engine", "runtime.cache", "runtime.models", "runtime.server", "runtime.lang"],
    "runtime.tool_calls": ["runtime.engine", "runtime.server", "runtime.lang"],
    "runtime.engine": ["runtime.server", "runtime.lang", "runtime.cli", "runtime.bench"],
    "runtime.server": ["runtime.cli", "runtime.lang", "runtime.bench"],
    "runtime.lang": ["runtime.server", "runtime.cli", "runtime.bench"],
    "runtime.integrations": ["runtime.cli", "runtime.bench"],
}
# nothing imports the server but the command line that starts it and the agent-framework
# plugins that host it in the caller's process
SERVER_IMPORTERS = ("runtime.server", "runtime.cli", "runtime.integrations")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {name for name in found if name == "runtime" or name.startswith("runtime.")}


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".") or (package.endswith(".") and name.startswith(package))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_one_way(module):
    imported = imports_of(MODULES[module])
    bad = [f"{name} (a {package} module must not import {forbidden})"
           for package, forbids in FORBIDDEN.items() if _within(module, package)
           for forbidden in forbids for name in sorted(imported)
           if _within(name, forbidden.rstrip(".")) and not _within(name, package)]
    if not any(_within(module, importer) for importer in SERVER_IMPORTERS):
        bad += [f"{name} (nothing but the CLI and the integrations import the server)" for name in sorted(imported)
                if _within(name, "runtime.server")]
    assert not bad, f"{module} imports " + "; ".join(bad)


def test_the_checker_sees_lazy_imports_and_skips_type_checking(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import runtime.engine\n"
                      "def f():\n    from runtime.server import app\n")
    assert imports_of(source) == {"runtime.server", "runtime.server.app"}
