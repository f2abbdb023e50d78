"""The ``kafscale`` command: ``proto decode`` / ``encode`` / ``list``, in-process and as a
real process, and the examples of docs/inspector.md and README.md run exactly as printed."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from generated import registry
from generated.api_versions_response import ApiVersion, ApiVersionsResponse
from generated.create_topics_response import CreatableTopicResult, CreateTopicsResponse
from kafscale.cli import error_name_key, is_error_code, main, parse_hex
from kafscale.protocol.message import Struct
from tests.conftest import REPO, SHARED, shared_path

GOLDEN = SHARED / "protocol-golden"

# RequestHeader v2 {api_key 18, version 3, correlation_id 1, client_id "kcat"} followed by
# ApiVersionsRequest v3 {client_software_name "kafscale-docs", client_software_version "0.1"}.
API_VERSIONS_REQUEST = "001200030000000100046b636174000e6b61667363616c652d646f637304302e3100"


def run(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *argv: str,
    stdin: str = "",
) -> tuple[int, str, str]:
    """main(argv) in-process: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def golden(name: str) -> list[dict[str, Any]]:
    path = shared_path("protocol-golden", name)
    return [json.loads(line) for line in path.read_text().splitlines()]


def golden_hex(api: int, kind: str, version: int, note: str | None = None) -> str:
    """The first golden vector of that API/kind/version (with ``note``: containing it)."""
    for name in ("special-cases-3.9.1.jsonl", "corpus-3.9.1.jsonl"):
        for d in golden(name):
            if (d["api"], d["kind"], d["version"]) == (api, kind, version):
                if note is None or note in d.get("note", ""):
                    return str(d["hex"])
    raise AssertionError(f"no golden vector {api} {kind} v{version}")


def _golden_params() -> list[Any]:
    """Every special case, and the corpus vectors of each API's lowest and highest version."""
    params: list[Any] = []
    special = GOLDEN / "special-cases-3.9.1.jsonl"
    corpus = GOLDEN / "corpus-3.9.1.jsonl"
    if not special.exists() or not corpus.exists():
        return [pytest.param(None, id="protocol-golden-absent")]
    for i, line in enumerate(special.read_text().splitlines()):
        d = json.loads(line)
        if d["kind"] != "header":
            params.append(pytest.param(d, id=f"special{i}-{d['name']}-{d['kind']}-v{d['version']}"))
    seen: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for line in corpus.read_text().splitlines():
        d = json.loads(line)
        if d["kind"] != "header":
            seen.setdefault((d["api"], d["kind"]), []).append(d)
    for (_api, kind), cases in sorted(seen.items()):
        lo = min(cases, key=lambda d: d["version"])
        hi = max(cases, key=lambda d: d["version"])
        for d in (lo, hi) if lo is not hi else (lo,):
            params.append(pytest.param(d, id=f"corpus-{d['name']}-{kind}-v{d['version']}"))
    return params


def _direction(kind: str) -> str:
    return "--request" if kind == "request" else "--response"


# --- decode -> encode round trips --------------------------------------------------------------


@pytest.mark.parametrize("case", _golden_params())
def test_golden_round_trip(
    case: dict[str, Any] | None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shared_path("protocol-golden")
    assert case is not None
    opts = ["--api", str(case["api"]), "--version", str(case["version"]), _direction(case["kind"])]
    status, out, err = run(capsys, monkeypatch, "proto", "decode", *opts, case["hex"])
    assert (status, err) == (0, "")
    assert isinstance(json.loads(out), dict)
    status, hex_out, err = run(capsys, monkeypatch, "proto", "encode", *opts, stdin=out)
    assert (status, err) == (0, "")
    assert hex_out == case["hex"] + "\n"


def test_request_with_header_round_trip(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Golden RequestHeader v2 (key 18, version 3, correlation 7, client id "ab") + a golden
    # ApiVersionsRequest v3 body.
    header = golden_hex(-1, "header", 2, note="key=18 ver=3")
    body = golden_hex(18, "request", 3)
    data = header + body
    opts = ["--api", "ApiVersions", "--version", "3", "--request", "--with-header"]
    status, out, err = run(capsys, monkeypatch, "proto", "decode", *opts, data)
    assert (status, err) == (0, "")
    doc = json.loads(out)
    assert doc["header"] == {
        "request_api_key": 18,
        "request_api_version": 3,
        "correlation_id": 7,
        "client_id": "ab",
    }
    assert set(doc["body"]) == {"client_software_name", "client_software_version"}
    status, hex_out, err = run(capsys, monkeypatch, "proto", "encode", *opts, stdin=out)
    assert (status, hex_out, err) == (0, data + "\n", "")


def test_response_with_header_and_tagged_field_round_trip(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # ApiVersionsResponse v3 with tagged FinalizedFeaturesEpoch=5; ApiVersions responses always
    # use response header v0 (just the correlation id), even in flexible versions.
    body = golden_hex(18, "response", 3, note="FinalizedFeaturesEpoch=5")
    data = "0000002a" + body
    opts = ["--api", "18", "--version", "3", "--response", "--with-header"]
    status, out, err = run(capsys, monkeypatch, "proto", "decode", *opts, data)
    assert (status, err) == (0, "")
    doc = json.loads(out)
    assert doc["header"] == {"correlation_id": 42}
    assert doc["body"]["finalized_features_epoch"] == 5
    status, hex_out, err = run(capsys, monkeypatch, "proto", "encode", *opts, stdin=out)
    assert (status, hex_out, err) == (0, data + "\n", "")


def test_flexible_response_header_v1_round_trip(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # MetadataResponse v12 uses ResponseHeader v1: correlation id, then a tag section.
    data = "00000009" + "00" + golden_hex(3, "response", 12)
    opts = ["--api", "Metadata", "--version", "12", "--response", "--with-header"]
    status, out, err = run(capsys, monkeypatch, "proto", "decode", *opts, data)
    assert (status, err) == (0, "")
    assert json.loads(out)["header"] == {"correlation_id": 9}
    status, hex_out, err = run(capsys, monkeypatch, "proto", "encode", *opts, stdin=out)
    assert (status, hex_out, err) == (0, data + "\n", "")


def test_unknown_tagged_fields_survive_the_round_trip(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # ApiVersionsRequest v3 whose top-level tag section holds tag 7 (2 bytes abcd), unknown in
    # Kafka 3.9.1, and a header whose tag section holds tag 5 (1 byte ff).
    header = "0012000300000001" + "0000" + "01" + "0501ff"
    body = "0e6b61667363616c652d646f637304302e31" + "01" + "0702abcd"
    data = header + body
    opts = ["--api", "ApiVersions", "--version", "3", "--request", "--with-header"]
    status, out, err = run(capsys, monkeypatch, "proto", "decode", *opts, data)
    assert (status, err) == (0, "")
    doc = json.loads(out)
    assert doc["header"]["_unknown_tags"] == [[5, "ff"]]
    assert doc["body"]["_unknown_tags"] == [[7, "abcd"]]
    status, hex_out, err = run(capsys, monkeypatch, "proto", "encode", *opts, stdin=out)
    assert (status, hex_out, err) == (0, data + "\n", "")


def test_encode_fills_request_header_api_and_version(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = {
        "header": {"correlation_id": 1, "client_id": "kcat"},
        "body": {"client_software_name": "kafscale-docs", "client_software_version": "0.1"},
    }
    opts = ["--api", "ApiVersions", "--version", "3", "--request", "--with-header"]
    status, out, err = run(capsys, monkeypatch, "proto", "encode", *opts, stdin=json.dumps(doc))
    assert (status, out, err) == (0, API_VERSIONS_REQUEST + "\n", "")


def test_decode_hex_from_stdin_and_tolerant_hex(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    opts = ["--api", "18", "--version", "3", "--request", "--with-header"]
    status, expected, err = run(capsys, monkeypatch, "proto", "decode", *opts, API_VERSIONS_REQUEST)
    assert (status, err) == (0, "")
    spaced = " ".join(re.findall("..", API_VERSIONS_REQUEST))
    for argv, stdin in (
        (["-"], f"  0x{API_VERSIONS_REQUEST.upper()}\n"),
        (["-"], spaced + "\n"),
        ([f"0x{API_VERSIONS_REQUEST}"], ""),
        ([f"\n{spaced}\t"], ""),
        (spaced.split(), ""),  # pasted without quotes: several arguments
    ):
        status, out, err = run(capsys, monkeypatch, "proto", "decode", *opts, *argv, stdin=stdin)
        assert (status, out, err) == (0, expected, "")


def test_parse_hex() -> None:
    assert parse_hex("") == b""
    assert parse_hex(" 0X0a FF\n") == b"\x0a\xff"


def test_empty_body(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # ApiVersionsRequest v0 has no fields: its body is zero bytes.
    opts = ["--api", "ApiVersions", "--version", "0", "--request"]
    assert run(capsys, monkeypatch, "proto", "decode", *opts, "") == (0, "{}\n", "")
    assert run(capsys, monkeypatch, "proto", "encode", *opts, stdin="{}") == (0, "\n", "")


# --- list --------------------------------------------------------------------------------------


def test_list(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    status, out, err = run(capsys, monkeypatch, "proto", "list")
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["KEY", "NAME", "VERSIONS", "FLEXIBLE"]
    rows = {line.split()[1]: line for line in lines[1:]}
    assert "Metadata" in rows and "ApiVersions" in rows
    assert rows["Metadata"].split()[:4] == ["3", "Metadata", "0-12", "9+"]
    # Every column starts at the same place on every line.
    name_col = lines[0].index("NAME")
    flexible_col = lines[0].index("FLEXIBLE")
    for line in lines[1:]:
        assert line[name_col - 1] == " " and line[name_col] != " "
        assert line[flexible_col - 1] == " " and line[flexible_col] != " "
    # Header versions per API version, including the special cases.
    assert "1 (0-8), 2 (9-12)" in rows["Metadata"]
    assert "0 (0), 1 (1-2), 2 (3)" in rows["ControlledShutdown"]
    assert rows["ApiVersions"].split()[-1] == "0"  # always response header v0
    # The latestVersionUnstable mark.
    unstable_col = lines[0].index("UNSTABLE")
    assert rows["ShareFetch"][unstable_col:].strip() == "v0"
    assert len(rows["Metadata"]) <= unstable_col


# --- errors ------------------------------------------------------------------------------------

_REQ = ["--api", "ApiVersions", "--version", "3", "--request"]
_HDR = [*_REQ, "--with-header"]


@pytest.mark.parametrize(
    ("argv", "stdin", "expected"),
    [
        pytest.param(["decode", *_REQ, "0e6b61zz"], "", "bad hex: 'z'", id="bad-hex"),
        pytest.param(["decode", *_REQ, "0e6b6"], "", "odd number", id="odd-hex"),
        pytest.param(["decode", *_REQ, "-"], "0x0g", "bad hex", id="bad-hex-stdin"),
        pytest.param(
            ["decode", *_REQ, "0e6b61"], "", "ClientSoftwareName, offset 1", id="truncated"
        ),
        pytest.param(
            ["decode", *_HDR, API_VERSIONS_REQUEST[:-6]],
            "",
            "ClientSoftwareVersion, offset 30",
            id="truncated-header",
        ),
        pytest.param(
            ["decode", *_HDR, API_VERSIONS_REQUEST + "00"],
            "",
            "1 trailing bytes",
            id="trailing-bytes",
        ),
        pytest.param(
            ["decode", "--api", "Nope", "--version", "0", "--request", "00"],
            "",
            "unknown API 'Nope'",
            id="unknown-api-name",
        ),
        pytest.param(
            ["encode", "--api", "1000", "--version", "0", "--request"],
            "{}",
            "unknown API '1000'",
            id="unknown-api-key",
        ),
        pytest.param(
            ["decode", "--api", "ApiVersions", "--version", "9", "--request", "00"],
            "",
            "ApiVersions has no version 9 (valid versions: 0-4)",
            id="version-out-of-range",
        ),
        pytest.param(
            ["decode", "--api", "ApiVersions", "--version", "-1", "--request", "00"],
            "",
            "no version -1",
            id="negative-version",
        ),
        pytest.param(
            ["encode", "--api", "ApiVersions", "--version", "three", "--request"],
            "{}",
            "bad version 'three'",
            id="version-not-a-number",
        ),
        pytest.param(
            ["decode", "--api", "Metadata", "--version", "12", *_HDR[4:], API_VERSIONS_REQUEST],
            "",
            "the request header is for ApiVersions v3 (api key 18, version 3), not Metadata v12",
            id="header-api-mismatch",
        ),
        pytest.param(
            ["decode", "--api", "18", "--version", "2", *_HDR[4:], API_VERSIONS_REQUEST],
            "",
            "not ApiVersions v2",
            id="header-version-mismatch",
        ),
        pytest.param(["encode", *_REQ], "{not json", "bad JSON on stdin", id="bad-json"),
        pytest.param(["encode", *_REQ], "", "bad JSON on stdin", id="empty-json"),
        pytest.param(["encode", *_REQ], "[1]", "expected a JSON object", id="json-not-an-object"),
        pytest.param(
            ["encode", *_REQ],
            '{"client_software_name": 3}',
            "ApiVersionsRequest v3, field client_software_name",
            id="json-bad-field-type",
        ),
        pytest.param(
            ["encode", *_REQ], '{"nope": 1}', "has no field 'nope'", id="json-unknown-field"
        ),
        pytest.param(
            ["encode", *_REQ],
            '{"_unknown_tags": [[1, "zz"]]}',
            "ApiVersionsRequest v3",
            id="json-bad-unknown-tags",
        ),
        pytest.param(
            ["encode", "--api", "Produce", "--version", "3", "--request"],
            '{"acks": 70000}',
            "does not fit int16",
            id="value-out-of-range",
        ),
        pytest.param(
            ["encode", *_HDR], '{"body": {}}', '{"header": {...}, "body": {...}}', id="no-header"
        ),
        pytest.param(
            ["encode", *_HDR],
            '{"header": {"request_api_key": 3}, "body": {}}',
            "the request header is for Metadata v3",
            id="json-header-mismatch",
        ),
    ],
)
def test_errors_are_one_line(
    argv: list[str],
    stdin: str,
    expected: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    status, out, err = run(capsys, monkeypatch, "proto", *argv, stdin=stdin)
    assert status == 2
    assert out == ""
    assert err.startswith("kafscale: error: ")
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert expected in err


def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for argv in ([], ["proto"], ["proto", "decode", "00"], ["nope"]):
        status, out, err = run(capsys, monkeypatch, *argv)
        assert status == 2, argv
        assert "error:" in err and "Traceback" not in err
    status, out, _ = run(capsys, monkeypatch, "proto", "decode", "--help")
    assert status == 0 and "--with-header" in out


def test_broker_start_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``kafscale serve`` with what a broker cannot start with: the broker raises its own
    BrokerStartError, the command line prints one line and exits with status 2."""
    for name in [n for n in os.environ if n.startswith("KAFSCALE_")]:
        monkeypatch.delenv(name)
    settings = tmp_path / "settings.yaml"
    settings.write_text("no.such.setting: 1\n")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    data = ["--data-dir", str(tmp_path / "data")]
    cases = [
        (["--config", str(settings)], "unknown setting 'no.such.setting'"),
        (["--listen", "9092", *data], "listen: expected host:port, got '9092'"),
        (["--data-dir", str(a_file / "data")], f"data dir {a_file / 'data'}: "),
        (["--etcd", "https://127.0.0.1:2379", *data], "--etcd: etcd endpoint"),
    ]
    for argv, expected in cases:
        status, out, err = run(capsys, monkeypatch, "serve", *argv)
        assert (status, out) == (2, ""), argv
        assert err.startswith("kafscale: error: ") and expected in err, err
        assert err.count("\n") == 1 and "Traceback" not in err, err


# --- error names -------------------------------------------------------------------------------


def _create_topics_response_hex() -> str:
    """CreateTopicsResponse v5 (flexible): a created topic whose config describe failed
    (TopicConfigErrorCode), an existing one, and a code Kafka does not define."""
    topics = [
        CreatableTopicResult(name="ok", error_code=0, topic_config_error_code=40),
        CreatableTopicResult(name="dup", error_code=36, error_message="exists"),
        CreatableTopicResult(name="odd", error_code=999),
    ]
    return CreateTopicsResponse(throttle_time_ms=0, topics=topics).encode(5).hex()


CREATE_TOPICS_V5 = ["--api", "CreateTopics", "--version", "5", "--response"]


def test_decode_names_every_error_code(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _create_topics_response_hex()
    status, out, err = run(capsys, monkeypatch, "proto", "decode", *CREATE_TOPICS_V5, data)
    assert (status, err) == (0, "")
    ok, dup, odd = json.loads(out)["topics"]
    # The name sits right after its code, in the same object, nested structs included.
    assert list(ok)[:3] == ["name", "error_code", "error_name"]
    assert (ok["error_code"], ok["error_name"]) == (0, "NONE")
    assert (ok["topic_config_error_code"], ok["topic_config_error_name"]) == (40, "INVALID_CONFIG")
    assert (dup["error_code"], dup["error_name"]) == (36, "TOPIC_ALREADY_EXISTS")
    assert (odd["error_code"], odd["error_name"]) == (999, None)  # not Kafka's: null
    status, hex_out, err = run(capsys, monkeypatch, "proto", "encode", *CREATE_TOPICS_V5, stdin=out)
    assert (status, hex_out, err) == (0, data + "\n", "")


def test_decode_names_a_top_level_error_code_with_the_header(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    body = ApiVersionsResponse(error_code=35, api_keys=[ApiVersion(api_key=18, max_version=3)])
    data = "00000001" + body.encode(0).hex()
    opts = ["--api", "ApiVersions", "--version", "0", "--response", "--with-header"]
    status, out, err = run(capsys, monkeypatch, "proto", "decode", *opts, data)
    assert (status, err) == (0, "")
    doc = json.loads(out)
    assert doc["header"] == {"correlation_id": 1}
    assert list(doc["body"])[:2] == ["error_code", "error_name"]
    assert doc["body"]["error_name"] == "UNSUPPORTED_VERSION"


def _encode(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, topic: dict[str, Any]
) -> tuple[int, str, str]:
    doc = json.dumps({"throttle_time_ms": 0, "topics": [{"name": "t", **topic}]})
    return run(capsys, monkeypatch, "proto", "encode", *CREATE_TOPICS_V5, stdin=doc)


@pytest.mark.parametrize(
    "topic",
    [
        pytest.param({"error_code": 36}, id="code"),
        pytest.param({"error_code": "TOPIC_ALREADY_EXISTS"}, id="name-as-code"),
        pytest.param({"error_name": "TOPIC_ALREADY_EXISTS"}, id="name-alone"),
        pytest.param(
            {"error_code": 36, "error_name": "TOPIC_ALREADY_EXISTS"}, id="code-and-its-name"
        ),
        pytest.param(
            {"error_code": "TOPIC_ALREADY_EXISTS", "error_name": "TOPIC_ALREADY_EXISTS"},
            id="name-twice",
        ),
    ],
)
def test_encode_takes_the_code_or_the_name(
    topic: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = CreateTopicsResponse(
        throttle_time_ms=0, topics=[CreatableTopicResult(name="t", error_code=36)]
    ).encode(5)
    assert _encode(capsys, monkeypatch, topic) == (0, expected.hex() + "\n", "")


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        pytest.param(
            {"error_code": 3, "error_name": "NOT_COORDINATOR"},
            "field topics[0].error_code: error_name NOT_COORDINATOR does not match error_code 3"
            " (UNKNOWN_TOPIC_OR_PARTITION)",
            id="name-disagrees",
        ),
        pytest.param(
            {"error_code": "NOT_AN_ERROR"},
            "field topics[0].error_code: 'NOT_AN_ERROR' is not a Kafka error name",
            id="unknown-name-as-code",
        ),
        pytest.param(
            {"topic_config_error_name": "no_such"},
            "field topics[0].topic_config_error_name: 'no_such' is not a Kafka error name",
            id="unknown-name",
        ),
        pytest.param(
            {"error_code": 3, "error_name": None},
            "error_name is null but 3 is UNKNOWN_TOPIC_OR_PARTITION",
            id="null-name-of-a-known-code",
        ),
        pytest.param(
            {"error_code": 3, "error_name": 3},
            "field topics[0].error_name: expected an error name, got 3",
            id="name-not-a-string",
        ),
    ],
)
def test_encode_refuses_a_bad_error_name(
    topic: dict[str, Any],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    status, out, err = _encode(capsys, monkeypatch, topic)
    assert (status, out) == (2, "")
    assert err.startswith("kafscale: error: CreateTopicsResponse v5, ") and message in err, err
    assert err.count("\n") == 1


def test_every_error_code_field_is_named() -> None:
    """Every int16 field Kafka calls ``...ErrorCode`` gets a name, in every message; no message
    has a field of its own where the name would go."""
    seen: set[type[Struct]] = set()
    found: set[str] = set()

    def walk(cls: type[Struct]) -> None:
        if cls in seen:
            return
        seen.add(cls)
        names = {f.name for f in cls._fields}
        for f in cls._fields:
            if f.kafka_name.endswith("ErrorCode"):
                assert is_error_code(f), f"{cls.__name__}.{f.name}: {f.kafka_type}"
                assert error_name_key(f) not in names, f"{cls.__name__}.{f.name}"
                found.add(f.kafka_name)
            if f.struct is not None:
                walk(f.struct)

    for spec in registry.APIS.values():
        walk(spec.request_type())
        walk(spec.response_type())
    assert found == {
        "ErrorCode",
        "TopicConfigErrorCode",
        "PartitionErrorCode",
        "AcknowledgeErrorCode",
    }


# --- real processes ----------------------------------------------------------------------------


def _env() -> dict[str, str]:
    """The environment of a real ``kafscale``: the venv's bin directory first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    return env


def test_python_m_kafscale_round_trip() -> None:
    opts = ["--api", "ApiVersions", "--version", "3", "--request", "--with-header"]
    decoded = subprocess.run(
        [sys.executable, "-m", "kafscale", "proto", "decode", *opts, API_VERSIONS_REQUEST],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert (decoded.returncode, decoded.stderr) == (0, "")
    assert json.loads(decoded.stdout)["header"]["client_id"] == "kcat"
    encoded = subprocess.run(
        [sys.executable, "-m", "kafscale", "proto", "encode", *opts],
        input=decoded.stdout,
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert (encoded.returncode, encoded.stdout, encoded.stderr) == (
        0,
        API_VERSIONS_REQUEST + "\n",
        "",
    )


def test_console_script_error_has_no_traceback() -> None:
    script = shutil.which("kafscale", path=_env()["PATH"])
    if script is None:
        pytest.skip("the kafscale console script is not installed (pip install -e .)")
    result = subprocess.run(
        [script, "proto", "decode", "--api", "18", "--version", "3", "--request", "0e6b61"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("kafscale: error: ApiVersionsRequest v3, field ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_list_into_a_closed_pipe() -> None:
    # `kafscale proto list | head -1`: no complaint about the closed pipe.
    result = subprocess.run(
        f"'{sys.executable}' -m kafscale proto list | head -n 1",
        shell=True,
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert result.stdout.startswith("KEY")
    assert result.stderr == ""


# --- docs/inspector.md -------------------------------------------------------------------------


def _console_examples(doc: str) -> list[tuple[str, str]]:
    """(command, expected output) of each ``$ `` line in the console blocks of ``doc``."""
    text = (REPO / doc).read_text()
    examples = []
    for block in re.findall(r"```console\n(.*?)```", text, flags=re.S):
        command: str | None = None
        output: list[str] = []
        for line in block.splitlines():
            if line.startswith("$ "):
                if command is not None:
                    examples.append((command, "".join(output)))
                command, output = line[2:], []
            else:
                output.append(line + "\n")
        if command is not None:
            examples.append((command, "".join(output)))
    return examples


@pytest.mark.parametrize(("doc", "at_least"), [("docs/inspector.md", 4), ("README.md", 1)])
def test_docs_examples_work_as_printed(doc: str, at_least: int) -> None:
    if shutil.which("kafscale", path=_env()["PATH"]) is None:
        pytest.skip("the kafscale console script is not installed (pip install -e .)")
    examples = _console_examples(doc)
    assert len(examples) >= at_least
    for command, expected in examples:
        result = subprocess.run(
            ["bash", "-c", command],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=_env(),
            check=False,
        )
        # Errors are shown in the doc as they appear on the terminal (stderr).
        assert result.stdout + result.stderr == expected, command
