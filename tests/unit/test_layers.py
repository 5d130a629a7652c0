"""The packages are layers, and every import points down them (docs/architecture.md, "Layers").

Each module's imports are read with :mod:`ast` — top-level and function-level (lazy) imports alike,
relative ones resolved — together with the modules it starts as ``[..., "-m", "<module>", ...]``, a
dependency as real as an import. Every one of our modules it names must lie in its own unit or in
one the table below allows. A new top-level package fails :func:`test_every_package_has_a_layer`
until it is given its place here and in the docs.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[2]

CORE: Final = "streaming_analytics"
PRODUCTION: Final = frozenset({CORE, "models", "transforms", "pipelines", "push_server"})
TRAINER: Final = "models.train"  # offline tooling inside models/: trains on the generator's events
TOOLING: Final = "devstack"
OURS: Final = PRODUCTION | {TRAINER, TOOLING, "tests", "benchmarks"}

#: unit -> the other units it may import (a unit may always import itself). A unit is a top-level
#: package, or a module given a row of its own; a module belongs to the longest unit naming it.
ALLOWED: Final[dict[str, frozenset[str]]] = {
    CORE: frozenset(),
    "models": frozenset({CORE}),
    "transforms": frozenset({CORE, "models"}),
    "pipelines": frozenset({CORE, "models", "transforms"}),
    "push_server": frozenset({CORE}),
    TRAINER: frozenset({CORE, "models", TOOLING}),
    TOOLING: PRODUCTION | {TRAINER},
    "benchmarks": OURS,  # it drives the real thing, with the tests' helpers (tests/support)
    "tests": OURS,
}


def unit_of(module: str) -> str | None:
    """The unit ``module`` belongs to (None when it is not ours)."""
    matches = [u for u in ALLOWED if module == u or module.startswith(u + ".")]
    return max(matches, key=len) if matches else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, *, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, module) for every module ``source`` imports or starts with ``-m``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            yield node.lineno, base
            for alias in node.names:  # `from models import train` imports the module models.train
                yield node.lineno, f"{base}.{alias.name}"
        elif isinstance(node, ast.List | ast.Tuple):
            for flag, target in pairwise(node.elts):
                if (isinstance(flag, ast.Constant) and flag.value == "-m"
                        and isinstance(target, ast.Constant) and isinstance(target.value, str)):
                    yield node.lineno, target.value


def violations(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """The imports of ``module`` (given as ``source``) that go against :data:`ALLOWED`."""
    own = unit_of(module)
    assert own is not None, f"{module} is in no layer"
    found: dict[tuple[int, str], str] = {}  # one report per statement and unit
    for line, target in imported_modules(source, module, is_package=is_package):
        other = unit_of(target)
        if other is not None and other != own and other not in ALLOWED[own]:
            found.setdefault((line, other), f"{module}:{line} ({own}) imports {target} ({other})")
    return list(found.values())


def our_modules() -> Iterator[Path]:
    for top in sorted(OURS - {TRAINER}):
        yield from sorted((ROOT / top).rglob("*.py"))


def test_every_package_has_a_layer() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages == OURS - {TRAINER}, "give each top-level package a row in ALLOWED and in docs"


def test_every_import_points_down_the_layers() -> None:
    offenders = []
    modules = list(our_modules())
    assert len(modules) > 100  # the walk found the tree
    for path in modules:
        offenders += violations(path.read_text(), module_name(path), is_package=path.name == "__init__.py")
    assert not offenders, "imports against the layers (docs/architecture.md):\n" + "\n".join(offenders)


def test_the_check_sees_each_kind_of_upward_import() -> None:
    upward = {
        "streaming_analytics.settings": "from pipelines.runners import runner_args",
        "streaming_analytics.db.migrate": "def f():\n    from ...devstack import sandbox",
        "push_server.app": "import transforms.parse",
        "pipelines.runners": "from devstack.stack.process import wait_until",
        "transforms.scoring": "from models import train",
        "models.handler": "import tests.support.waiting",
        "pipelines.job_jar": "ARGV = [sys.executable, '-m', 'devstack.generator']",
        "devstack.sandbox": "from tests.support import waiting",
    }
    for module, source in upward.items():
        assert violations(source, module), f"{module}: `{source}` went unnoticed"


def test_downward_and_foreign_imports_pass() -> None:
    allowed = {
        "pipelines.analytics_pipeline": "from streaming_analytics import settings\nimport apache_beam",
        "models.train": "from devstack.generator import EventGenerator",
        "devstack.stack.components": "from pipelines.runners import runner_args",
        "push_server.node": "from . import hub\nfrom .hub import Hub",
        "tests.unit.test_x": "from devstack import sandbox\nfrom benchmarks import common",
    }
    for module, source in allowed.items():
        assert not violations(source, module), module
