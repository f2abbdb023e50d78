"""Fixtures of the fault tests: a report section with each scenario's counts."""

from __future__ import annotations

from collections.abc import Callable

import pytest

_REPORT_LINES: list[str] = []


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """``report("...")`` prints a line under "kafscale faults" at the end of the run."""

    def add(line: str) -> None:
        _REPORT_LINES.append(f"{request.node.name}: {line}")
        print(line)

    return add


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _REPORT_LINES:
        terminalreporter.section("kafscale faults")
        for line in _REPORT_LINES:
            terminalreporter.write_line(line)
