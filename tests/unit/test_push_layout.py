"""The push server package says what it holds: its docstring names every module, and it ships
production code only (test support lives in tests/support)."""

from __future__ import annotations

import ast
import pkgutil
import re
from pathlib import Path

import push_server

PACKAGE = Path(push_server.__file__).parent


def _modules() -> set[str]:
    return {info.name for info in pkgutil.iter_modules([str(PACKAGE)])} | {"__main__"}


def test_the_package_docstring_names_every_module_and_no_other() -> None:
    named = set(re.findall(r"``([a-z_]+)``", push_server.__doc__ or ""))  # module names are lowercase
    assert _modules() <= named, f"modules missing from push_server/__init__.py: {_modules() - named}"
    assert named <= _modules(), f"push_server/__init__.py names missing modules: {named - _modules()}"


def test_no_production_module_imports_test_support() -> None:
    offenders = []
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {name}" for name in names if name.split(".")[0] == "tests"]
    assert not offenders
