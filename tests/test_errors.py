"""Kafka's error codes: one generated table (protocol_specs/errors.yaml -> generated/errors.py).

- The table: generated output up to date, schema and consistency checks, the extractor that reads
  it from Kafka's source (on a small synthetic tree).
- Cross-checks against the two client libraries the suite installs: kafka-python's
  ``kafka.errors`` (code, name, retriable) and confluent-kafka's ``KafkaError`` (code by name);
  every disagreement is listed with its reason.
- No hand-written module keeps a Kafka error number of its own.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest
import yaml

from codegen.__main__ import main as codegen_main
from codegen.errors import ERRORS_SPEC, extract_errors, load_errors, spec_text
from codegen.model import SpecError
from generated.errors import DEFAULT_MESSAGES, RETRIABLE, ErrorCode, error_name
from tests.conftest import REPO

# --- the table ----------------------------------------------------------------------------------


def test_generated_module_is_up_to_date(capsys: pytest.CaptureFixture[str]) -> None:
    """What `scripts/regen --check` checks (it needs nothing outside the repository)."""
    assert codegen_main(["errors", "--out", str(REPO / "generated"), "--check"]) == 0, (
        capsys.readouterr().err
    )


def test_table_is_kafka_39s() -> None:
    table = load_errors()
    assert table["kafka_release"] == "3.9.1"
    # Kafka 3.9 defines every code from -1 to 127 (VOTER_NOT_FOUND, KIP-853), none skipped.
    assert sorted(e.value for e in ErrorCode) == list(range(-1, 128))
    assert ErrorCode.NONE == 0 and ErrorCode.UNKNOWN_SERVER_ERROR == -1
    assert ErrorCode.UNKNOWN_TOPIC_OR_PARTITION == 3 and ErrorCode.VOTER_NOT_FOUND == 127
    assert ErrorCode.NOT_LEADER_OR_FOLLOWER.retriable
    assert not ErrorCode.INVALID_REQUEST.retriable and not ErrorCode.NONE.retriable
    assert set(DEFAULT_MESSAGES) == set(ErrorCode) - {ErrorCode.NONE}
    assert ErrorCode.NONE.default_message is None
    assert ErrorCode.UNKNOWN_TOPIC_OR_PARTITION.default_message == (
        "This server does not host this topic-partition."
    )
    assert error_name(3) == "UNKNOWN_TOPIC_OR_PARTITION"
    assert error_name(-1) == "UNKNOWN_SERVER_ERROR"
    assert error_name(999) is None


def test_the_yaml_is_what_the_extractor_writes() -> None:
    """The file is the extractor's output, byte for byte (nobody edited it by hand)."""
    table = load_errors()
    assert spec_text(table["errors"], table["kafka_release"]) == ERRORS_SPEC.read_text()


def _write_variant(tmp_path: Path, change: str, to: str) -> Path:
    text = ERRORS_SPEC.read_text()
    assert change in text
    path = tmp_path / "errors.yaml"
    path.write_text(text.replace(change, to, 1))
    return path


@pytest.mark.parametrize(
    ("change", "to", "message"),
    [
        ("    code: 3\n", "    code: 3\n    retry: true\n", "Additional properties"),
        ('kafka_release: "3.9.1"', 'kafka_release: "3.8.0"', "pinned to 3.9.1"),
        ("    code: 3\n", "    code: 2\n", "code 2 is listed twice"),
        ("  - name: INVALID_FETCH_SIZE\n", "  - name: CORRUPT_MESSAGE\n", "listed twice"),
        ("    code: 0\n", "    code: 1000\n", "NONE must be code 0"),
    ],
)
def test_table_checks(tmp_path: Path, change: str, to: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        load_errors(_write_variant(tmp_path, change, to))


JAVA_LICENSE = "/*\n * Licensed to the Apache Software Foundation (ASF).\n */\n"


def _java(root: Path, qualified: str, body: str) -> None:
    package, name = qualified.rsplit(".", 1)
    path = root / "clients/src/main/java" / package.replace(".", "/") / f"{name}.java"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{JAVA_LICENSE}package {package};\n\n{body}\n")


def test_extractor_reads_the_enum_and_the_class_hierarchy(tmp_path: Path) -> None:
    errors = "org.apache.kafka.common.errors"
    _java(
        tmp_path,
        "org.apache.kafka.common.protocol.Errors",
        f"""import {errors}.ApiException;
import {errors}.DeepException;
import {errors}.PlainException;
import org.apache.kafka.common.OtherException;

/** Comment with "quotes" and // slashes. */
public enum Errors {{
    UNKNOWN_SERVER_ERROR(-1, "The server experienced an unexpected error.",
            PlainException::new),
    NONE(0, null, message -> null),
    DEEP(3, "Two " + // a comment
            "lines, a \\"quote\\" and // not a comment.",
            DeepException::new),
    OTHER(
        4,
        "Elsewhere.",
        OtherException::new);

    private static final Logger log = LoggerFactory.getLogger(Errors.class);
}}""",
    )
    classes = {
        f"{errors}.ApiException": "public class ApiException extends RuntimeException {}",
        f"{errors}.RetriableException": "public class RetriableException extends ApiException {}",
        f"{errors}.PlainException": "public class PlainException extends ApiException {}",
        f"{errors}.MiddleException": "public class MiddleException extends RetriableException {}",
        f"{errors}.DeepException": "public class DeepException extends MiddleException {\n"
        "    public DeepException(String message) { super(message); }\n}",
        "org.apache.kafka.common.OtherException": f"import {errors}.RetriableException;\n\n"
        "public class OtherException extends RetriableException {}",
    }
    for qualified, body in classes.items():
        _java(tmp_path, qualified, body)
    assert extract_errors(tmp_path) == [
        {
            "name": "UNKNOWN_SERVER_ERROR",
            "code": -1,
            "retriable": False,
            "exception": "PlainException",
            "message": "The server experienced an unexpected error.",
        },
        {"name": "NONE", "code": 0, "retriable": False, "exception": None, "message": None},
        {
            "name": "DEEP",
            "code": 3,
            "retriable": True,
            "exception": "DeepException",
            "message": 'Two lines, a "quote" and // not a comment.',
        },
        {
            "name": "OTHER",
            "code": 4,
            "retriable": True,
            "exception": "OtherException",
            "message": "Elsewhere.",
        },
    ]
    # An exception class of Kafka's that is missing is an error, not "not retriable".
    (
        tmp_path / "clients/src/main/java/org/apache/kafka/common/errors/MiddleException.java"
    ).unlink()
    with pytest.raises(SpecError, match="cannot find its superclass MiddleException"):
        extract_errors(tmp_path)


def test_extractor_refuses_what_it_does_not_know(tmp_path: Path) -> None:
    _java(
        tmp_path,
        "org.apache.kafka.common.protocol.Errors",
        "public enum Errors {\n    ODD(1, MESSAGE_CONSTANT, X::new);\n}",
    )
    with pytest.raises(SpecError, match="ODD: message is not a string literal"):
        extract_errors(tmp_path)


def test_extract_command_rewrites_the_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--extract`` on a tree giving the committed table writes the committed file."""
    import codegen.errors as errors_module

    source = tmp_path / "kafka"
    _java(
        source,
        "org.apache.kafka.common.protocol.Errors",
        "import org.apache.kafka.common.errors.UnknownServerException;\n"
        "public enum Errors {\n"
        '    UNKNOWN_SERVER_ERROR(-1, "Unexpected.", UnknownServerException::new),\n'
        "    NONE(0, null, message -> null);\n}",
    )
    _java(
        source,
        "org.apache.kafka.common.errors.UnknownServerException",
        "public class UnknownServerException extends RuntimeException {}",
    )
    target = tmp_path / "errors.yaml"
    monkeypatch.setattr(errors_module, "ERRORS_SPEC", target)
    assert codegen_main(["errors", "--extract", str(source)]) == 0
    written = yaml.safe_load(target.read_text())
    assert [e["name"] for e in written["errors"]] == ["UNKNOWN_SERVER_ERROR", "NONE"]
    assert written["kafka_release"] == "3.9.1"


# --- cross-checks against the client libraries -------------------------------------------------

KAFKA_PYTHON_NAMES = {
    # kafka-python keeps Kafka's older or its own names for these codes.
    -1: "UNKNOWN",  # Kafka's name before 2.0's UNKNOWN_SERVER_ERROR
    0: "NO_ERROR",
    6: "NOT_LEADER_FOR_PARTITION",  # renamed NOT_LEADER_OR_FOLLOWER by Kafka 2.7 (KIP-392)
    10: "MESSAGE_SIZE_TOO_LARGE",
    17: "INVALID_TOPIC",
    39: "INVALID_REPLICATION_ASSIGNMENT",
}
"""Codes whose name in kafka-python differs from Kafka 3.9's (same code, same meaning)."""

KAFKA_PYTHON_RETRIABLE = {
    # Kafka's CorruptRecordException extends RetriableException (the producer retries a batch
    # the broker found corrupt in transit); kafka-python chose not to retry it.
    ErrorCode.CORRUPT_MESSAGE: False,
}
"""Codes kafka-python retries differently from Kafka's Java client."""


def _kafka_python_errors() -> dict[int, list[type]]:
    import kafka.errors

    by_code: dict[int, list[type]] = {}
    for _, cls in inspect.getmembers(kafka.errors, inspect.isclass):
        if isinstance(getattr(cls, "errno", None), int):
            by_code.setdefault(cls.errno, []).append(cls)
    return by_code


def test_codes_names_and_retriability_agree_with_kafka_python() -> None:
    by_code = _kafka_python_errors()
    # Every code of ours is in kafka-python, and kafka-python knows no code Kafka 3.9 lacks.
    assert set(by_code) == {e.value for e in ErrorCode}
    for code, classes in by_code.items():
        ours = ErrorCode(code)
        for cls in classes:
            where = f"kafka.errors.{cls.__name__} (errno {code})"
            assert cls.message == KAFKA_PYTHON_NAMES.get(code, ours.name), where
            expected = KAFKA_PYTHON_RETRIABLE.get(ours, ours in RETRIABLE)
            assert bool(cls.retriable) == expected, where


CONFLUENT_NAMES = {
    # librdkafka's own (older, or abbreviated) names of these broker codes (rdkafka.h).
    -1: "UNKNOWN",
    0: "NO_ERROR",
    2: "INVALID_MSG",
    3: "UNKNOWN_TOPIC_OR_PART",
    4: "INVALID_MSG_SIZE",
    6: "NOT_LEADER_FOR_PARTITION",
    10: "MSG_SIZE_TOO_LARGE",
    11: "STALE_CTRL_EPOCH",
    17: "TOPIC_EXCEPTION",
}
"""Codes whose name in confluent-kafka's ``KafkaError`` differs from Kafka 3.9's."""


def test_codes_and_names_agree_with_confluent_kafka() -> None:
    from confluent_kafka import KafkaError

    highest = max(ErrorCode)
    ours_by_name = {e.name: e for e in ErrorCode}
    constants = {
        name: value
        for name, value in vars(KafkaError).items()
        # librdkafka's internal errors are negative and start with "_" (_TRANSPORT, ...).
        if re.fullmatch(r"[A-Z][A-Z0-9_]*", name) and isinstance(value, int)
    }
    checked = 0
    for name, code in constants.items():
        if code > highest:
            # A later Kafka release's error (confluent-kafka follows Kafka's trunk): it must
            # not be one of ours under another code.
            assert name not in ours_by_name, f"KafkaError.{name} = {code}"
            continue
        assert code in {e.value for e in ErrorCode}, f"KafkaError.{name} = {code}: not Kafka's"
        assert name == CONFLUENT_NAMES.get(code, ErrorCode(code).name), f"KafkaError.{name}"
        checked += 1
    assert checked > 100  # (librdkafka lacks a few controller-only codes, e.g. 98-99, 101-102)


# --- no error number of their own --------------------------------------------------------------

_AFFIXES = re.compile(r"^_*(?:ERR_|ERROR_)?(?P<name>[A-Z][A-Z0-9_]*?)(?:_CODE|_ERROR_CODE)?$")


def _int_literal(node: ast.expr) -> int | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub)
        and isinstance(node.operand, ast.Constant)
        and type(node.operand.value) is int
    ):
        return -node.operand.value
    return None


def _module_statements(body: list[ast.stmt]) -> list[ast.stmt]:
    """A module's statements, those under a module-level ``if``/``try`` included (not the
    bodies of classes and functions: ``Compression.NONE = 0`` is no error code)."""
    out: list[ast.stmt] = []
    for node in body:
        out.append(node)
        if isinstance(node, ast.If):
            out += _module_statements(node.body) + _module_statements(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                out += _module_statements(block)
            for handler in node.handlers:
                out += _module_statements(handler.body)
    return out


def bare_error_numbers(path: Path, root: Path = REPO) -> list[str]:
    """Module constants ``NAME = <number>`` of ``path`` that are a Kafka error code of their
    own: the name is an error's (whatever the number: a wrong one is a protocol bug too), or the
    name with an ``ERR_``/``_CODE`` affix is an error's and the number is that error's code."""
    names = {e.name: e.value for e in ErrorCode}
    found: list[str] = []
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in _module_statements(tree.body):
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        number = _int_literal(value)
        if number is None:
            continue
        for target in targets:
            if not isinstance(target, ast.Name):
                continue
            m = _AFFIXES.match(target.id)
            bare = target.id.lstrip("_")
            if bare in names or (m and names.get(m.group("name")) == number):
                found.append(f"{path.relative_to(root)}:{node.lineno}: {target.id} = {number}")
    return found


def test_no_module_keeps_a_kafka_error_number() -> None:
    """Use ``ErrorCode.X`` (generated.errors), not ``X = 3``."""
    paths = sorted((REPO / "kafscale").rglob("*.py"))
    found = [hit for path in paths for hit in bare_error_numbers(path)]
    assert found == [], (
        "Kafka error codes kept as module constants: use generated.errors.ErrorCode "
        "(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION) instead"
    )


def test_the_check_finds_what_it_is_for(tmp_path: Path) -> None:
    sample = tmp_path / "kafscale_sample.py"
    sample.write_text(
        "UNKNOWN_TOPIC_OR_PARTITION = 3\n"
        "_NOT_COORDINATOR: int = 16\n"
        "ERR_INVALID_REQUEST = 42\n"
        "NONE = 0\n"
        "UNKNOWN_SERVER_ERROR = -1\n"
        "INVALID_REQUEST_CODE = 42\n"
        "MAX_TXN_OPS = 128\n"  # not an error
        "ERR_INVALID_REQUEST_TIMEOUT = 42\n"  # not an error's name
        "COORDINATOR_NOT_AVAILABLE_CODE = 16\n"  # affixed, and not that error's code
        "class Compression(enum.IntEnum):\n"
        "    NONE = 0\n"  # a member of another enum
        "if TYPE_CHECKING:\n"
        "    REBALANCE_IN_PROGRESS = 27\n"
    )
    hits = [h.split(": ", 1)[1] for h in bare_error_numbers(sample, tmp_path)]
    assert hits == [
        "UNKNOWN_TOPIC_OR_PARTITION = 3",
        "_NOT_COORDINATOR = 16",
        "ERR_INVALID_REQUEST = 42",
        "NONE = 0",
        "UNKNOWN_SERVER_ERROR = -1",
        "INVALID_REQUEST_CODE = 42",
        "REBALANCE_IN_PROGRESS = 27",
    ]
