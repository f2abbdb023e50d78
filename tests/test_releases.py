"""The generator against other Kafka releases, the upgrade diff, and ``generated/`` staleness.

Generating runs black over ~190 modules (~30 s of CPU each time), so the three generator runs
(3.8.0, the 4.0.0 trunk snapshot, and ``--check`` of the pinned release) start together as
subprocesses when the module's first test needs them, and each test waits for its own. Black's
output is cached (codegen/render.py ``format_source``, ``build/codegen-cache``): after
``scripts/regen --check`` (which scripts/test runs first) the ``--check`` run here formats
nothing again.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from codegen.__main__ import main as codegen_main
from codegen.model import snake_case
from kafscale.protocol.message import Message
from tests.conftest import REPO, shared_path
from tests.strategies import filled_message

RELEASES = ("3.8.0", "4.0.0-SNAPSHOT-2024-10-25")
TIMEOUT = 900


@dataclass
class Run:
    process: subprocess.Popen[str]
    out: Path | None
    specs: Path | None
    _result: tuple[int, str, str] | None = None

    def result(self) -> tuple[int, str, str]:
        """(exit status, stdout, stderr), waiting for the process the first time."""
        if self._result is None:
            stdout, stderr = self.process.communicate(timeout=TIMEOUT)
            self._result = (self.process.returncode, stdout, stderr)
            print(f"$ {' '.join(map(str, self.process.args))}\n{stdout}{stderr}")  # type: ignore[arg-type]
        return self._result


def _start(args: list[str]) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "KAFSCALE_KAFKA_SPECS"}
    return subprocess.Popen(
        [sys.executable, "-m", "codegen", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    specs_root = shared_path("kafka-message-specs")
    started: dict[str, Run] = {}
    for release in RELEASES:
        specs = specs_root / release
        out = tmp_path_factory.mktemp(f"generated-{release}")
        started[release] = Run(_start(["--specs", str(specs), "--out", str(out)]), out, specs)
    started["check"] = Run(_start(["--check"]), None, None)
    yield started
    for run in started.values():
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


def definitions(specs: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(specs.glob("*.json")):
        lines = path.read_text(encoding="utf-8").splitlines()
        out[path.stem] = json.loads("\n".join(x for x in lines if not x.lstrip().startswith("//")))
    return out


def load_module(path: Path, name: str) -> ModuleType:
    """Import one generated file under a private name (message modules import only kafscale)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("release", RELEASES)
def test_generate_release(runs: dict[str, Run], release: str) -> None:
    run = runs[release]
    status, stdout, stderr = run.result()
    assert status == 0, stderr
    assert run.out is not None and run.specs is not None
    docs = definitions(run.specs)
    assert len(docs) > 150
    produced = {p.name for p in run.out.glob("*.py")}
    expected = {f"{snake_case(name)}.py" for name in docs} | {"registry.py", "__init__.py"}
    assert produced == expected
    assert len(produced) == len(docs) + 2
    assert f"wrote {len(produced)} files" in stdout
    for path in sorted(run.out.glob("*.py")):
        compile(path.read_text(encoding="utf-8"), str(path), "exec")

    # The registry lists exactly the APIs of the release, with their versions.
    tag = re.sub(r"\W", "_", release)
    reg = load_module(run.out / "registry.py", f"_release_{tag}_registry")
    requests = {d["apiKey"]: d for d in docs.values() if d["type"] == "request"}
    assert set(reg.APIS) == set(requests)
    for key, spec in reg.APIS.items():
        assert spec.name == requests[key]["name"].removesuffix("Request")
        lo, _, hi = requests[key]["validVersions"].partition("-")
        assert spec.valid_versions == (int(lo), int(hi or lo))
    assert set(reg.MESSAGES) == set(docs)

    # Every generated message module works: a fully filled object at every version round-trips.
    pairs = 0
    for name in docs:
        module = load_module(run.out / f"{snake_case(name)}.py", f"_release_{tag}_{name}")
        cls: type[Message] = getattr(module, name)
        lo, hi = cls.VALID_VERSIONS
        for version in range(lo, hi + 1):
            obj = filled_message(cls, version)
            data = obj.encode(version)
            assert cls.decode(data, version) == obj, (name, version)
            pairs += 1
    assert pairs > 500


def test_generated_is_up_to_date(runs: dict[str, Run]) -> None:
    """``python -m codegen --check`` (what scripts/regen --check and scripts/test run)."""
    status, stdout, stderr = runs["check"].result()
    assert status == 0, stderr
    assert "files match" in stdout


def run_diff(capsys: pytest.CaptureFixture[str], old: str, new: str) -> list[str]:
    root = shared_path("kafka-message-specs")
    assert codegen_main(["diff", str(root / old), str(root / new)]) == 0
    text = capsys.readouterr().out
    with capsys.disabled():
        print(f"\n{text}")  # visible in the test log
    lines = text.splitlines()
    assert lines[0].startswith(f"# {old} -> {new}:")
    return lines


def check_diff(lines: list[str], old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[str]]:
    """What any diff must say, computed from the definitions; returns the ``~`` sections."""
    added = {line.split()[1] for line in lines if line.startswith("+ ")}
    removed = {line.split()[1].rstrip(":") for line in lines if line.startswith("- ")}
    assert added == new.keys() - old.keys()
    assert removed == old.keys() - new.keys()
    for line in lines:
        if line.startswith("+ ") and "API key" in line:
            name = line.split()[1]
            assert f"(API key {new[name]['apiKey']})" in line
    sections = _sections(lines)
    for name in old.keys() & new.keys():
        changes = sections.get(name, [])
        # A changed validVersions is reported with the old and new range.
        before, after = old[name]["validVersions"], new[name]["validVersions"]
        if before != after:
            assert any(c.startswith(f"versions {before} -> {after}") for c in changes), name
        # A field is reported as changed exactly when a key that shapes the wire changed in
        # its declaration (a "0+" field is not "changed" just because validVersions grew).
        before_fields, after_fields = _declared(old[name]), _declared(new[name])
        expected = {
            path
            for path in before_fields.keys() & after_fields.keys()
            if before_fields[path] != after_fields[path]
        }
        reported = {
            c.removeprefix("field changed: ").split(": ")[0]
            for c in changes
            if c.startswith("field changed: ")
        }
        assert reported == expected, name
        fields_added = {
            c.removeprefix("field added: ").split()[0]
            for c in changes
            if c.startswith("field added: ")
        }
        assert fields_added == after_fields.keys() - before_fields.keys(), name
        fields_removed = {
            c.removeprefix("field removed: ") for c in changes if c.startswith("field removed: ")
        }
        assert fields_removed == before_fields.keys() - after_fields.keys(), name
    return sections


def test_upgrade_diff_3_8_to_3_9(capsys: pytest.CaptureFixture[str]) -> None:
    lines = run_diff(capsys, "3.8.0", "3.9.1")
    root = shared_path("kafka-message-specs")
    old, new = definitions(root / "3.8.0"), definitions(root / "3.9.1")
    sections = check_diff(lines, old, new)
    added = {line.split()[1] for line in lines if line.startswith("+ ")}
    assert len(added) == 24 and "ShareFetchRequest" in added and "AddRaftVoterResponse" in added
    assert "versions 0-3 -> 0-4 (added 4)" in sections["ApiVersionsRequest"]
    # Flexible-version changes are reported too (BeginQuorumEpoch became flexible in 3.9).
    assert "flexible versions none -> 1+" in sections["BeginQuorumEpochRequest"]
    assert any(c.startswith("field added: VoterId") for c in sections["BeginQuorumEpochRequest"])


def test_upgrade_diff_3_9_to_4_0_snapshot(capsys: pytest.CaptureFixture[str]) -> None:
    snapshot = RELEASES[1]
    lines = run_diff(capsys, "3.9.1", snapshot)
    root = shared_path("kafka-message-specs")
    sections = check_diff(lines, definitions(root / "3.9.1"), definitions(root / snapshot))
    assert "latestVersionUnstable False -> True" in sections["EndTxnRequest"]


WIRE_KEYS = ("type", "versions", "nullableVersions", "taggedVersions", "tag", "flexibleVersions")


def _declared(doc: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Dotted field path -> the wire-shaping keys as declared (common structs followed)."""
    commons = {c["name"]: c["fields"] for c in doc.get("commonStructs", [])}
    out: dict[str, dict[str, str]] = {}

    def walk(fields: list[dict[str, Any]], prefix: str) -> None:
        for f in fields:
            path = prefix + f["name"]
            out[path] = {k: str(f[k]) for k in WIRE_KEYS if k in f}
            inner = f.get("fields") or commons.get(f["type"].removeprefix("[]"))
            if inner:
                walk(inner, path + ".")

    walk(doc["fields"], "")
    return out


def _sections(lines: list[str]) -> dict[str, list[str]]:
    """``~ Name:`` headings -> their indented change lines."""
    out: dict[str, list[str]] = {}
    current: list[str] = []
    for line in lines:
        if line.startswith("~ "):
            current = out.setdefault(line[2:].rstrip(":"), [])
        elif line.startswith("    "):
            current.append(line.strip())
    return out
