"""Shared test fixtures: the ../shared data directory and hypothesis profiles."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# CI: deterministic (derandomized) and bounded; dev: random, so local runs explore more.
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "dev",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


# --- opt-in scenarios: deselected unless their script asks for them -------------------------

SOAK = "KAFSCALE_SOAK"
"""``KAFSCALE_SOAK=1`` (set by scripts/soak) selects the tests marked ``soak``: long scenarios
that CI's time budget cannot hold, covered there by shorter relatives. Without it they are
deselected (reported as such, never counted as passed or skipped)."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"soak: an opt-in scenario, run only with {SOAK}=1 (scripts/soak)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(SOAK) == "1":
        return
    opt_in = [item for item in items if item.get_closest_marker("soak") is not None]
    if opt_in:
        config.hook.pytest_deselected(items=opt_in)
        items[:] = [item for item in items if item.get_closest_marker("soak") is None]


def shared_path(*parts: str) -> Path:
    """A path under ../shared; skip visibly when it is absent, fail when ``CI`` is set."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        reason = f"{path} is absent (the shared data directory next to the repository)"
        if os.environ.get("CI"):
            pytest.fail(f"CI: {reason}")
        pytest.skip(reason)
    return path


# --- a summary section of numbers the tests want seen (acked vs read, checker counts) --------

_REPORT_LINES: list[str] = []


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """``report("...")`` prints a line under "kafscale report" at the end of the run."""

    def add(line: str) -> None:
        _REPORT_LINES.append(f"{request.node.name}: {line}")
        print(line)

    return add


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _REPORT_LINES:
        terminalreporter.section("kafscale report")
        for line in _REPORT_LINES:
            terminalreporter.write_line(line)
