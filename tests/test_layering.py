"""The layering of the code: the broker never reaches up into the command line.

``kafscale/cli.py`` starts a broker (``kafscale serve``); the broker reports what it cannot start
with as its own :class:`~kafscale.broker.startup.BrokerStartError`, which the command line maps to
its exit status and message. An import of ``kafscale.cli`` under ``kafscale/broker/`` would point
the arrow the wrong way (and drag the inspector and every subcommand into the server).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

BROKER = REPO / "kafscale" / "broker"


def imported_modules(path: Path, package: str | None = None) -> set[str]:
    """Every module ``path`` imports (``from a import b`` counts as ``a`` and ``a.b``; relative
    imports resolved against the file's package, by default its place in the repository)."""
    if package is None:
        package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_nothing_under_broker_imports_the_command_line() -> None:
    offenders = [
        str(path.relative_to(REPO))
        for path in sorted(BROKER.rglob("*.py"))
        if any(m == "kafscale.cli" or m.startswith("kafscale.cli.") for m in imported_modules(path))
    ]
    assert offenders == []


def test_nothing_under_broker_imports_the_admin_commands() -> None:
    """kafscale/admin (the admin commands' Kafka client) sits beside the command line, above
    the broker: the server never needs it."""
    offenders = [
        str(path.relative_to(REPO))
        for path in sorted(BROKER.rglob("*.py"))
        if any(
            m == "kafscale.admin" or m.startswith("kafscale.admin.") for m in imported_modules(path)
        )
    ]
    assert offenders == []


def test_the_check_sees_every_form(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    forms = [
        "import kafscale.cli",
        "from kafscale.cli import CliError",
        "from kafscale import cli",
        "from .. import cli",
        "def f():\n    from kafscale.cli import main",
    ]
    for form in forms:
        probe.write_text(form + "\n")
        assert "kafscale.cli" in imported_modules(probe, "kafscale.broker"), form
    probe.write_text("from kafscale.client import x\nimport kafscale.clinic\n")
    assert not {"kafscale.cli"} & imported_modules(probe, "kafscale.broker")


def test_importing_the_broker_loads_no_command_line() -> None:
    """At run time too: the server, its handlers and ``kafscale serve``'s entry point."""
    code = (
        "import sys, pkgutil, importlib, kafscale.broker, kafscale.broker.handlers\n"
        "for pkg in (kafscale.broker, kafscale.broker.handlers):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "import kafscale.broker.main\n"
        "assert 'kafscale.cli' not in sys.modules, 'kafscale.cli was imported'\n"
        "assert 'kafscale.admin' not in sys.modules, 'kafscale.admin was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
