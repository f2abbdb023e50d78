"""The optional accelerated (mypyc-compiled) codecs: selection, fallback, staleness.

The codec tests themselves (test_golden, test_roundtrip_hypothesis, test_corners, test_framing)
run against the compiled build with ``KAFSCALE_ACCELERATE=require`` after ``scripts/accelerate``;
here: that the pure modules are the default, that a missing or stale build is refused (a
warning and the pure modules, or an ImportError under ``require``), and that the compiled
modules really are in use when required.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kafscale.protocol import accelerated

ROOT = Path(__file__).resolve().parent.parent

PROBE = (
    "import warnings; warnings.simplefilter('always')\n"
    "import generated.metadata_response as m, kafscale.protocol.wire as w\n"
    "from kafscale.protocol import accelerated as a\n"
    "print(a.active, m.__file__.endswith('.py'), w.__file__.endswith('.py'))\n"
)


def probe(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KAFSCALE_ACCELERATE")}
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pure_modules_by_default() -> None:
    done = probe({})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "True"]


def fake_build(tmp_path: Path, sources: dict[str, str]) -> Path:
    (tmp_path / accelerated.MANIFEST).write_text(
        json.dumps(
            {
                "interpreter": accelerated.interpreter_tag(),
                "generator": accelerated.generator_hash(),
                "sources": sources,
            }
        )
    )
    return tmp_path


def test_missing_build_falls_back_or_fails(tmp_path: Path) -> None:
    env = {accelerated.DIR_ENV: str(tmp_path / "none")}
    done = probe({**env, accelerated.ENV: "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "True"]
    assert "no accelerated build" in done.stderr
    done = probe({**env, accelerated.ENV: "require"})
    assert done.returncode != 0
    assert "ImportError" in done.stderr and "no accelerated build" in done.stderr


def test_stale_build_is_refused(tmp_path: Path) -> None:
    build = fake_build(tmp_path, {"generated.metadata_response": "0" * 64})
    with pytest.raises(ValueError, match=r"generated\.metadata_response is stale"):
        accelerated.check(build)
    done = probe({accelerated.DIR_ENV: str(build), accelerated.ENV: "auto"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "True"]
    assert "stale" in done.stderr


def test_build_older_than_the_generator_is_refused(tmp_path: Path) -> None:
    """The compiled flavor of the generated modules comes from codegen/: a build made before
    codegen/ (or the pinned definitions) changed is stale, whatever the committed files say."""
    module = "generated.metadata_response"
    build = fake_build(tmp_path, {module: accelerated.source_hash(module)})
    manifest = json.loads((build / accelerated.MANIFEST).read_text())
    manifest["generator"] = "0" * 64
    (build / accelerated.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="older than codegen"):
        accelerated.check(build)


def test_build_for_another_interpreter_is_refused(tmp_path: Path) -> None:
    (tmp_path / accelerated.MANIFEST).write_text(json.dumps({"interpreter": "cpython-10"}))
    with pytest.raises(ValueError, match="is for cpython-10"):
        accelerated.check(tmp_path)


def test_current_manifest_without_files_is_refused(tmp_path: Path) -> None:
    module = "generated.metadata_response"
    build = fake_build(tmp_path, {module: accelerated.source_hash(module)})
    with pytest.raises(ValueError, match="lacks"):
        accelerated.check(build)


def test_unknown_mode_is_an_error() -> None:
    done = probe({accelerated.ENV: "fast"})
    assert done.returncode != 0 and "expected pure, auto or require" in done.stderr


@pytest.mark.skipif(
    os.environ.get(accelerated.ENV) != "require", reason="the suite runs the pure modules"
)
def test_compiled_modules_in_use() -> None:
    """Under KAFSCALE_ACCELERATE=require every module of the build is the compiled one."""
    import importlib

    assert accelerated.active
    for name in accelerated.MODULES:
        module = importlib.import_module(name)
        assert not (module.__file__ or "").endswith(".py"), name


def test_pure_copy_decodes_the_same() -> None:
    """The benchmark's private pure copy (whatever this process imported) agrees byte for
    byte with the imported module, and is pure Python."""
    import generated.metadata_response as imported

    pure = accelerated.load_pure("generated.metadata_response")
    assert pure.__file__ is not None and pure.__file__.endswith(".py")
    for shared in ("wire", "message"):
        copy = sys.modules[f"_kafscale_pure.kafscale.protocol.{shared}"]
        assert copy.__file__ is not None and copy.__file__.endswith(".py")
    base = pure.MetadataResponse.__mro__[-3]  # Message
    assert base.__module__ == "_kafscale_pure.kafscale.protocol.message"
    msg = pure.MetadataResponse(
        brokers=[pure.MetadataResponseBroker(node_id=1, host="h", port=9092)],
        topics=[
            pure.MetadataResponseTopic(
                name="t",
                partitions=[pure.MetadataResponsePartition(replica_nodes=[1], isr_nodes=[1])],
            )
        ],
    )
    data = msg.encode(12)
    again = imported.MetadataResponse.decode(data, 12)
    assert again.encode(12) == data
    assert pure.MetadataResponse.decode(data, 12) == msg


def test_compiled_flavor_reads_what_the_committed_modules_read(tmp_path: Path) -> None:
    """codegen's flavor for mypyc (what scripts/accelerate compiles), run here as plain Python:
    every golden message of the compiled modules decodes to equal values and re-encodes to the
    same bytes, and each truncation of it is refused with the same located error."""
    import importlib.util

    from codegen.render import render_native
    from kafscale.protocol.errors import ProtocolError
    from tests.golden import all_golden

    names = [m.split(".", 1)[1] for m in accelerated.MODULES if m.startswith("generated.")]
    flavors = {}
    for name, text in render_native(names).items():
        path = tmp_path / f"{name}.py"
        path.write_text(text)
        spec = importlib.util.spec_from_file_location(f"_kafscale_native.{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        flavors[f"generated.{name}"] = module
    checked = set()
    for golden in all_golden():
        committed = golden.cls
        if committed.__module__ not in flavors:
            continue
        native = getattr(flavors[committed.__module__], committed.__name__)
        got = native.decode(golden.data, golden.version)
        assert got.to_dict() == committed.decode(golden.data, golden.version).to_dict()
        assert got.encode(golden.version) == golden.data
        for cut in range(0, len(golden.data), max(1, len(golden.data) // 16)):
            errors = []
            for cls in (native, committed):
                with pytest.raises(ProtocolError) as refused:
                    cls.decode(golden.data[:cut], golden.version)
                errors.append(str(refused.value))
            assert errors[0] == errors[1], golden.id
        checked.add(committed.__module__)
    assert checked == set(flavors), set(flavors) - checked  # every compiled codec was exercised


def test_messages_copy_and_are_unhashable() -> None:
    """Compiled (native classes) or not, messages copy and pickle (the ACL rules narrow a copy
    of a request) and are unhashable (mutable), as the pure classes are."""
    import copy
    import pickle

    from generated.create_topics_request import CreatableTopic, CreateTopicsRequest
    from generated.metadata_response import MetadataResponse, MetadataResponseTopic

    for msg in (
        MetadataResponse(topics=[MetadataResponseTopic(name="t")], cluster_id="c"),
        CreateTopicsRequest(topics=[CreatableTopic(name="t", num_partitions=3)]),
    ):
        shallow, deep = copy.copy(msg), copy.deepcopy(msg)
        assert shallow == msg and deep == msg and shallow is not msg
        assert shallow.topics is msg.topics and deep.topics is not msg.topics
        assert pickle.loads(pickle.dumps(msg)) == msg
        with pytest.raises(TypeError, match="unhashable"):
            hash(msg)
