"""Smoke test of the broker benchmark (scripts/bench_broker.py): it parses its arguments and a
200-record round trip against the embedded default completes and verifies. No timings are
asserted (the numbers are for docs/benchmarks.md, not for tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "bench_broker.py"


def test_bench_quick_embedded_round_trip() -> None:
    pytest.importorskip("confluent_kafka")
    done = subprocess.run(
        [
            *(sys.executable, str(SCRIPT), "--quick", "--target", "kafscale-embedded"),
            *("--records", "200", "--runs", "1"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,  # a hang guard, not a performance assertion
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    runs = [r for r in lines if r["kind"] == "run"]
    assert len(runs) == 1, lines
    run = runs[0]
    assert "error" not in run, run
    assert run["target"] == "kafscale-embedded"
    assert run["records"] == 200 and run["consumed"] == 200
    assert run["ok"] and run["exactly_once"], run
    assert lines[-1]["kind"] == "summary"
