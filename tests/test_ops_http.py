"""The HTTP port (issue 13): /healthz, /readyz, /metrics, the console's /api, and what they show.

Brokers run in this process on a free Kafka port and a free HTTP port (``http_listen`` port 0);
requests reach them over real sockets, so that request handling is measured as clients see it.
Readiness is flipped by the real causes: the object store failing (moto behind a fault proxy),
etcd not answering (a paused etcd), and a drain.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from generated.fetch_request import FetchPartition, FetchRequest, FetchTopic
from generated.join_group_request import JoinGroupRequest, JoinGroupRequestProtocol
from generated.offset_commit_request import (
    OffsetCommitRequest,
    OffsetCommitRequestPartition,
    OffsetCommitRequestTopic,
)
from generated.produce_request import PartitionProduceData, ProduceRequest, TopicProduceData
from kafscale.broker import metrics as metrics_module
from kafscale.broker.config import BrokerConfig
from kafscale.broker.health import (
    DEGRADED,
    HEALTHY,
    UNAVAILABLE,
    HealthThresholds,
    ObjectStoreHealth,
)
from kafscale.broker.logformat import JsonFormatter
from kafscale.broker.metrics import BrokerMetrics, count_records, error_codes
from kafscale.broker.ops_api import kafka_request
from kafscale.broker.server import Broker
from kafscale.metadata import MetadataStore
from kafscale.metadata.sqlite import SqliteMetadataStore
from kafscale.protocol.message import Message
from kafscale.protocol.records import build_batch
from kafscale.protocol.wire import Buffer
from kafscale.storage import ObjectStore
from kafscale.storage.local import LocalObjectStore
from tests import s3server
from tests.broker_harness import Client
from tests.etcdserver import require_etcd
from tests.s3faults import FaultProxy, internal_error

REPO = Path(__file__).resolve().parents[1]
ALERTS = REPO / "deploy" / "prometheus" / "kafscale-alerts.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "kafscale.json"
PRODUCE, FETCH, OFFSET_COMMIT, JOIN_GROUP = 0, 1, 8, 11
T = TypeVar("T")


class TcpClient(Client):
    """The harness client, over a real connection to the broker's Kafka port."""

    async def call(self, key: int, version: int, body: Message) -> Any:
        return await kafka_request("127.0.0.1", self.broker.port, key, version, body, 30)


@asynccontextmanager
async def started(
    tmp_path: Path,
    objects: ObjectStore | None = None,
    meta: MetadataStore | None = None,
    **config: Any,
) -> AsyncIterator[Broker]:
    """A started broker with an HTTP port of its own; stopped (drained) at the end."""
    settings: dict[str, Any] = {
        "listen_port": 0,
        "http_listen": "127.0.0.1:0",
        "flush_interval_ms": 5,
        "group_initial_rebalance_delay_ms": 0,
        "group_min_session_timeout_ms": 100,
        **config,
    }
    broker = Broker(
        BrokerConfig(data_dir=tmp_path, **settings),
        objects if objects is not None else LocalObjectStore(tmp_path / "objects"),
        meta if meta is not None else SqliteMetadataStore(tmp_path / "metadata.sqlite3"),
    )
    await broker.start()
    try:
        yield broker
    finally:
        if not broker.draining:
            await asyncio.wait_for(broker.stop(), 30)


async def get(broker: Broker, path: str, accept: str = "") -> tuple[int, str, str]:
    """(status, content type, body) of a GET on the broker's HTTP port."""
    headers = {"Accept": accept} if accept else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{broker.http_port}{path}", headers=headers) as answer,
    ):
        return answer.status, answer.headers["Content-Type"], await answer.text()


async def get_json(broker: Broker, path: str) -> tuple[int, Any]:
    status, _, body = await get(broker, path)
    return status, json.loads(body)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(broker: Broker) -> Samples:
    status, _, body = await get(broker, "/metrics")
    assert status == 200
    return parse(body)


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value (0 when it is absent, as Prometheus reads a missing counter)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def eventually(what: str, probe: Callable[[], Awaitable[T | None]], timeout: float = 15) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result is not None and result is not False:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def join(c: Client, group: str, member: str = "") -> Any:
    """A JoinGroup v3 (no MEMBER_ID_REQUIRED round trip)."""
    body = JoinGroupRequest(
        group_id=group,
        session_timeout_ms=10_000,
        rebalance_timeout_ms=5_000,
        member_id=member,
        protocol_type="consumer",
        protocols=[JoinGroupRequestProtocol(name="range", metadata=b"\x00\x00")],
    )
    return await c.call(JOIN_GROUP, 3, body)


async def commit(c: Client, group: str, topic: str, offsets: dict[int, int]) -> None:
    """A simple consumer's commit (generation -1, no member)."""
    body = OffsetCommitRequest(
        group_id=group,
        generation_id_or_member_epoch=-1,
        member_id="",
        topics=[
            OffsetCommitRequestTopic(
                name=topic,
                partitions=[
                    OffsetCommitRequestPartition(partition_index=p, committed_offset=o)
                    for p, o in offsets.items()
                ],
            )
        ],
    )
    resp = await c.call(OFFSET_COMMIT, 8, body)
    assert all(p.error_code == 0 for t in resp.topics for p in t.partitions), resp


async def produce_all(c: Client, topic: str, batches: dict[int, bytes]) -> None:
    """One Produce request for many partitions of ``topic``."""
    body = ProduceRequest(
        acks=-1,
        timeout_ms=30_000,
        topic_data=[
            TopicProduceData(
                name=topic,
                partition_data=[
                    PartitionProduceData(index=p, records=data) for p, data in batches.items()
                ],
            )
        ],
    )
    resp = await c.call(PRODUCE, 9, body)
    errors = [p.error_code for t in resp.responses for p in t.partition_responses]
    assert errors == [0] * len(batches), errors


# --- every endpoint, and metrics that move with their events -----------------------------------


def test_endpoints_and_metrics_move_with_their_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics_module, "LAG_RENDER_S", 0.0)  # every scrape computes lag

    async def main() -> None:
        async with started(tmp_path) as broker:
            c = TcpClient(broker)
            status, health = await get_json(broker, "/healthz")
            assert (status, health["status"]) == (200, "ok")
            status, ready = await get_json(broker, "/readyz")
            assert status == 200 and ready["ready"], ready
            assert ready["checks"]["lease"] and ready["checks"]["listening"]
            assert ready["checks"]["object_store"]["state"] == HEALTHY

            await c.create("ops", 2)
            before = await scrape(broker)
            batch = build_batch([b"a", b"bb", b"ccc"])
            assert (await c.produce("ops", batch)).error_code == 0
            fetched = await c.fetch("ops", 0)
            assert fetched.error_code == 0 and count_records(fetched.records) == 3
            # An error answered: a partition that does not exist.
            body = FetchRequest(
                max_wait_ms=0,
                min_bytes=1,
                max_bytes=1 << 20,
                topics=[FetchTopic(topic="ops", partitions=[FetchPartition(partition=7)])],
            )
            missing = await c.call(FETCH, 12, body)
            assert missing.responses[0].partitions[0].error_code == 3
            # A group: one member joins; a simple consumer commits behind the high watermark.
            joined = await join(c, "readers")
            assert joined.error_code == 0, joined
            await commit(c, "lagging", "ops", {0: 1})
            after = await scrape(broker)

            def moved(name: str, **labels: str) -> float:
                return value(after, name, **labels) - value(before, name, **labels)

            assert moved("kafscale_topic_bytes_in_total", topic="ops") == len(batch)
            assert moved("kafscale_topic_records_in_total", topic="ops") == 3
            assert moved("kafscale_topic_records_out_total", topic="ops") == 3
            assert moved("kafscale_topic_bytes_out_total", topic="ops") == len(batch)
            assert moved("kafscale_requests_total", api="Produce", version="9") == 1
            assert moved("kafscale_request_duration_seconds_count", api="Produce") == 1
            unknown = {"api": "Fetch", "error": "UNKNOWN_TOPIC_OR_PARTITION"}
            assert moved("kafscale_response_errors_total", **unknown) == 1
            assert moved("kafscale_flush_duration_seconds_count") >= 1
            assert moved("kafscale_flush_bytes_sum") >= len(batch)
            assert moved("kafscale_flush_objects_total") >= 1
            assert moved("kafscale_object_store_requests_total", operation="put") >= 1
            assert moved("kafscale_metadata_requests_total", operation="txn") >= 1
            assert moved("kafscale_segment_cache_hits_total") >= 1  # the flush cached it
            assert moved("kafscale_group_rebalances_total") == 1
            assert value(after, "kafscale_groups", state="CompletingRebalance") == 1
            assert value(after, "kafscale_group_members") == 1
            lag = {"group": "lagging", "topic": "ops"}
            assert value(after, "kafscale_consumer_group_lag", partition="0", **lag) == 2
            assert value(after, "kafscale_consumer_group_lag_sum", **lag) == 2
            assert value(after, "kafscale_partitions_owned") >= 1
            assert value(after, "kafscale_leader_epoch_changes_total") >= 1
            assert value(after, "kafscale_broker_ready") == 1
            assert value(after, "kafscale_object_store_health_state", state="healthy") == 1
            assert value(after, "process_resident_memory_bytes") > 0
            assert value(after, "process_cpu_seconds_total") > 0

            # OpenMetrics when asked for.
            status, kind, text = await get(
                broker, "/metrics", accept="application/openmetrics-text; version=1.0.0"
            )
            assert status == 200 and kind.startswith("application/openmetrics-text")
            assert text.rstrip().endswith("# EOF")
            assert "kafscale_requests_total{" in text

            # The console's API: the whole picture from this broker.
            status, cluster = await get_json(broker, "/api/cluster")
            assert status == 200 and cluster["brokers"][0]["this"]
            assert cluster["owners"]["ops"][0] == broker.config.broker_id
            assert cluster["health"]["ready"]
            status, topics = await get_json(broker, "/api/topics")
            (ops,) = [t for t in topics["topics"] if t["name"] == "ops"]
            p0 = ops["partitions"][0]
            assert (p0["high_watermark"], p0["log_start_offset"]) == (3, 0)
            assert p0["size_bytes"] > len(batch) and p0["leader"] == broker.config.broker_id
            assert (await get_json(broker, "/api/topics/ops"))[1]["records"] == 3
            assert (await get_json(broker, "/api/topics/nope"))[0] == 404
            status, groups = await get_json(broker, "/api/groups")
            by_name = {g["group"]: g for g in groups["groups"]}
            assert by_name["lagging"]["lag"] == 2
            assert by_name["lagging"]["partitions"][0]["committed_offset"] == 1
            assert by_name["readers"]["state"] == "CompletingRebalance"
            assert len(by_name["readers"]["members"]) == 1
            assert (await get_json(broker, "/api/groups/nobody"))[0] == 404

            async def rates() -> Any:
                samples = (await get_json(broker, "/api/rates?seconds=10"))[1]["samples"]
                return samples if sum(s["produce_records"] for s in samples) > 0 else None

            samples = await eventually("a rate sample with the produce in it", rates)
            assert {"t", "produce_bytes", "fetch_bytes", "flush_max_s"} <= set(samples[-1])
            assert (await get_json(broker, "/api/rates?seconds=x"))[0] == 400

    asyncio.run(main())


# --- readiness --------------------------------------------------------------------------------


class GatedStore(LocalObjectStore):
    """Puts wait until the gate opens (a flush in progress for as long as a test wants)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0

    async def put(self, key: str, data: Buffer | Sequence[Buffer]) -> None:
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        await super().put(key, data)


def test_readiness_while_draining(tmp_path: Path) -> None:
    async def main() -> None:
        store = GatedStore(tmp_path / "objects")
        async with started(tmp_path, objects=store) as broker:
            c = TcpClient(broker)
            await c.create("d")
            assert (await get_json(broker, "/readyz"))[0] == 200
            store.gate.clear()
            pending = asyncio.create_task(c.produce("d", build_batch([b"x"])))
            await eventually("its flush waiting", lambda: _true(store.waiting))
            stopping = asyncio.create_task(broker.stop())  # as SIGTERM does
            _, ready = await eventually(
                "503 while draining", lambda: _status(broker, "/readyz", 503)
            )
            assert ready["reason"].startswith("draining"), ready
            assert (await get_json(broker, "/healthz"))[0] == 200
            store.gate.set()
            await asyncio.wait_for(stopping, 30)
            assert (await pending).error_code == 0  # the drain flushed it

    asyncio.run(main())


async def _true(x: Any) -> bool | None:
    return True if x else None


async def _status(broker: Broker, path: str, want: int) -> tuple[int, Any] | None:
    try:
        status, body = await get_json(broker, path)
    except aiohttp.ClientError:
        return None
    return (status, body) if status == want else None


FAST_S3: dict[str, Any] = {
    "max_attempts": 2,
    "backoff_base": 0.01,
    "backoff_max": 0.02,
    "connect_timeout": 1.0,
    "read_timeout": 1.0,
}


def test_readiness_while_the_object_store_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kafscale.storage.s3 import S3ObjectStore

    server = s3server.shared_or_skip()
    for name, setting in s3server.TEST_ENV.items():
        monkeypatch.setenv(name, setting)
    bucket = server.create_bucket()

    async def main() -> None:
        async with FaultProxy(server.endpoint_url) as proxy:
            store = S3ObjectStore(bucket, endpoint_url=proxy.url, path_style=True, **FAST_S3)
            async with started(
                tmp_path, objects=store, object_store_health_window_ms=3000
            ) as broker:
                c = TcpClient(broker)
                await c.create("s")
                assert (await c.produce("s", build_batch([b"ok"]))).error_code == 0
                assert (await get_json(broker, "/readyz"))[0] == 200

                proxy.inject(internal_error())  # every S3 request fails until cleared
                failed = await c.produce("s", build_batch([b"lost"]))
                assert failed.error_code == 56  # KAFKA_STORAGE_ERROR, retriable
                status, ready = await get_json(broker, "/readyz")
                assert status == 503, ready
                assert ready["reason"].startswith("object store unavailable"), ready
                assert ready["checks"]["object_store"]["state"] == UNAVAILABLE
                samples = await scrape(broker)
                assert value(samples, "kafscale_broker_ready") == 0
                assert value(samples, "kafscale_object_store_health_state", state="unavailable")
                assert value(samples, "kafscale_object_store_request_errors_total", operation="put")

                proxy.clear()
                await eventually("ready again", lambda: _status(broker, "/readyz", 200), timeout=20)
                assert (await c.produce("s", build_batch([b"back"]))).error_code == 0

    asyncio.run(main())


def test_readiness_while_etcd_does_not_answer(tmp_path: Path) -> None:
    from kafscale.metadata.etcd import EtcdMetadataStore

    with require_etcd(1) as etcd:

        async def main() -> None:
            meta = EtcdMetadataStore(etcd.endpoints)
            async with started(tmp_path, meta=meta, lease_ttl_ms=2000) as broker:
                assert (await get_json(broker, "/readyz"))[0] == 200
                etcd.members[0].pause()  # SIGSTOP: connections stay open, nothing answers
                try:
                    status, ready = await get_json(broker, "/readyz")
                    assert status == 503, ready
                    assert ready["reason"].startswith("metadata store"), ready
                finally:
                    etcd.members[0].resume()
                await eventually("ready again", lambda: _status(broker, "/readyz", 200), timeout=30)

        asyncio.run(main())


# --- cardinality -------------------------------------------------------------------------------

ALLOWED_LABELS = {"api", "version", "error", "topic", "partition", "group", "operation", "state"}
ALLOWED_LABELS |= {"le", "broker_id", "cluster_id", "quantile"}  # histograms, the info metric
ALLOWED_LABELS |= {"implementation", "major", "minor", "patchlevel"}  # python_info


def test_label_cardinality_is_bounded_with_1000_partitions_and_100_groups(
    tmp_path: Path, report: Callable[[str], None]
) -> None:
    """10 topics of 100 partitions, each written; 100 groups committing 10 partitions each,
    10 of them with a member: the series are those of the topics, the groups' committed
    partitions and fixed families, whatever the members or clients."""

    async def main() -> None:
        async with started(tmp_path, flush_interval_ms=20) as broker:
            c = TcpClient(broker)
            topics = [f"t{i}" for i in range(10)]
            for topic in topics:
                await c.create(topic, 100)
            batch = build_batch([b"r"])
            await asyncio.gather(
                *(produce_all(c, t, dict.fromkeys(range(100), batch)) for t in topics)
            )
            for g in range(100):
                topic, first = topics[g % 10], (g // 10) * 10
                await commit(c, f"g{g:03d}", topic, dict.fromkeys(range(first, first + 10), 0))
            for g in range(10):
                assert (await join(c, f"g{g:03d}")).error_code == 0
            started_at = time.perf_counter()
            status, _, text = await get(broker, "/metrics")
            first_ms = (time.perf_counter() - started_at) * 1000
            assert status == 200
            timings = []
            for _ in range(5):
                started_at = time.perf_counter()
                await get(broker, "/metrics")
                timings.append((time.perf_counter() - started_at) * 1000)
            families = list(text_string_to_metric_families(text))
            per_family = {f.name: len(f.samples) for f in families}
            total = sum(per_family.values())
            labels = {name for f in families for s in f.samples for name in s.labels}
            assert labels <= ALLOWED_LABELS, labels - ALLOWED_LABELS
            assert per_family["kafscale_consumer_group_lag"] == 1000
            assert per_family["kafscale_consumer_group_lag_sum"] == 100
            assert per_family["kafscale_topic_bytes_in"] == 10
            assert per_family["kafscale_partitions_owned"] == 1
            everything_else = total - 1100
            assert everything_else < 800, sorted(per_family.items(), key=lambda kv: -kv[1])[:10]
            report(
                f"1,000 partitions, 100 groups: {total} series "
                f"({everything_else} besides lag), first scrape {first_ms:.0f} ms, "
                f"then median {sorted(timings)[2]:.0f} ms"
            )

    asyncio.run(main())


# --- alert rules and the dashboard -------------------------------------------------------------


def registry_names(tmp_path: Path) -> set[str]:
    """Every sample name a broker's registry exposes (a family's suffixes included)."""
    suffixes = {
        "counter": ["_total"],
        "histogram": ["_bucket", "_sum", "_count"],
        "gauge": [""],
        "info": ["_info"],
        "summary": ["_sum", "_count", ""],
    }

    async def collect() -> set[str]:
        meta = SqliteMetadataStore(tmp_path / "metadata.sqlite3")
        broker = Broker(BrokerConfig(data_dir=tmp_path), LocalObjectStore(tmp_path / "o"), meta)
        try:
            metrics = broker.metrics
            return {
                family.name + suffix
                for registry in (metrics.registry, metrics.lag_registry)
                for family in registry.collect()
                for suffix in suffixes.get(family.type, [""])
            }
        finally:
            await broker.meta.close()

    return asyncio.run(collect())


METRIC = re.compile(r"\b((?:kafscale|process|python)_[a-z0-9_]+)\b")


def test_alert_rules_are_valid_and_use_existing_metrics(tmp_path: Path) -> None:
    names = registry_names(tmp_path)
    rules = yaml.safe_load(ALERTS.read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert {"KafscaleBrokerNotReady", "KafscaleObjectStoreUnavailable"} <= {
        a["alert"] for a in alerts
    }
    for rule in alerts:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in ("warning", "critical"), rule
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule
        used = set(METRIC.findall(rule["expr"]))
        assert used or rule["expr"].startswith("up{"), rule["expr"]
        assert used <= names, (rule["alert"], used - names)
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["expr"]


def test_dashboard_panels_use_existing_metrics(tmp_path: Path) -> None:
    names = registry_names(tmp_path)
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    panels = dashboard["panels"]
    exprs = [
        target["expr"]
        for panel in panels + [p for row in panels for p in row.get("panels", [])]
        for target in panel.get("targets", [])
    ]
    assert len(exprs) >= 10
    for expr in exprs:
        used = set(METRIC.findall(expr))
        assert used and used <= names, (expr, used - names)


# --- logs and units --------------------------------------------------------------------------


def test_json_log_lines_parse(tmp_path: Path) -> None:
    """``kafscale serve --log-format json``: every line of its log is one JSON object; also
    a traceback (JsonFormatter, on a record with exc_info)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kafscale",
            "serve",
            "--listen=127.0.0.1:0",
            "--http-listen=127.0.0.1:0",
            f"--data-dir={tmp_path / 'data'}",
            "--log-format=json",
            "--broker-id=7",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        lines: list[str] = []
        while not any('"listening on' in line for line in lines):
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    records = [json.loads(line) for line in lines + rest.splitlines() if line.strip()]
    assert {"time", "level", "logger", "broker", "message"} <= set(records[0])
    assert all(r["broker"] == 7 for r in records)
    assert any(r["message"].startswith("HTTP on 127.0.0.1:") for r in records)
    assert records[-1]["message"] == "stopped"

    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.LogRecord("kafscale.x", logging.ERROR, "f", 1, "bad %s", ("thing",), None)
        record.exc_info = sys.exc_info()
    line = JsonFormatter(3).format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "bad thing" and "ValueError: boom" in parsed["exc_info"]
    assert parsed["time"].endswith("Z") and parsed["level"] == "ERROR"


def test_object_store_health_states() -> None:
    now = [1000.0]
    health = ObjectStoreHealth(
        HealthThresholds(window_s=10, latency_degraded_s=1, latency_unavailable_s=5),
        clock=lambda: now[0],
    )
    assert health.snapshot().state == HEALTHY
    for _ in range(99):
        health.record(0.01, False)
    health.record(0.01, True)  # 1 %: degraded
    assert health.snapshot().state == DEGRADED
    for _ in range(10):
        health.record(0.01, True)
    snap = health.snapshot()
    assert snap.state == UNAVAILABLE and "11 of 110" in snap.reason
    for _ in range(3):  # answering again: degraded at once, until the failures leave
        health.record(0.01, False)
    assert health.snapshot().state == DEGRADED
    now[0] += 11
    assert health.snapshot().state == HEALTHY
    for _ in range(5):
        health.record(2.0, False)  # slow: the median bin's edge is 2.048 s
    assert health.snapshot().state == DEGRADED
    for _ in range(10):
        health.record(20.0, False)
    assert health.snapshot().state == UNAVAILABLE


def test_error_codes_are_found_wherever_a_response_holds_them() -> None:
    from generated.produce_response import (
        PartitionProduceResponse,
        ProduceResponse,
        TopicProduceResponse,
    )

    response = ProduceResponse(
        responses=[
            TopicProduceResponse(
                name="t",
                partition_responses=[
                    PartitionProduceResponse(index=0, error_code=0),
                    PartitionProduceResponse(index=1, error_code=6),
                    PartitionProduceResponse(index=2, error_code=6),
                ],
            )
        ]
    )
    assert sorted(error_codes(response)) == [6, 6]
    metrics = BrokerMetrics(process=False)
    metrics.response("Produce", response)
    text = "\n".join(
        f"{s.name} {s.labels} {s.value}"
        for family in metrics.registry.collect()
        for s in family.samples
    )
    assert "'error': 'NOT_LEADER_OR_FOLLOWER'} 2.0" in text
    assert count_records(build_batch([b"1", b"2"]) + build_batch([b"3"])) == 3


# --- any broker shows the whole cluster --------------------------------------------------------


def test_any_broker_shows_the_whole_cluster(tmp_path: Path) -> None:
    """Two brokers sharing their stores: each one's /api answers for both (partitions owned by
    the other from the store, a group the other coordinates through DescribeGroups)."""
    from tests.test_cluster import Cluster

    async def main() -> None:
        cluster = Cluster(tmp_path, http_listen="127.0.0.1:0", group_min_session_timeout_ms=100)
        try:
            a, b = await cluster.start(0), await cluster.start(1)
            await TcpClient(a).create("shared", 4)
            owners = await cluster.settled("shared", 4)
            assert set(owners) == {0, 1}
            by_id = {0: a, 1: b}
            batch = build_batch([b"x", b"y"])
            for p, owner in enumerate(owners):
                assert (await TcpClient(by_id[owner]).produce("shared", batch, p)).error_code == 0
            group = "console-group"
            coordinator = by_id[a.cluster.coordinator(group).id]  # type: ignore[union-attr]
            other = b if coordinator is a else a
            c = TcpClient(coordinator)
            await commit(c, group, "shared", {0: 1, 1: 2})  # before it has members
            assert (await join(c, group)).error_code == 0

            for broker in (a, b):
                _, view = await get_json(broker, "/api/cluster")
                assert [x["id"] for x in view["brokers"]] == [0, 1]
                assert view["owners"]["shared"] == owners
                _, topic = await get_json(broker, "/api/topics/shared")
                assert [p["high_watermark"] for p in topic["partitions"]] == [2, 2, 2, 2]
                assert all(p["size_bytes"] > 0 for p in topic["partitions"])
            _, described = await get_json(other, f"/api/groups/{group}")
            assert described["coordinator"] == coordinator.config.broker_id
            assert described["state"] == "CompletingRebalance", described
            assert len(described["members"]) == 1
            assert [p["lag"] for p in described["partitions"]] == [1, 0]
            # Lag is exported once, by the coordinator.
            samples = await scrape(coordinator)
            lag = {"group": group, "topic": "shared"}
            assert value(samples, "kafscale_consumer_group_lag_sum", **lag) == 1
            assert ("kafscale_consumer_group_lag_sum", frozenset(lag.items())) not in (
                await scrape(other)
            )
        finally:
            await asyncio.wait_for(cluster.close(), 30)

    asyncio.run(main())


def test_a_taken_http_port_fails_the_start_in_one_line(tmp_path: Path) -> None:
    import socket

    from kafscale.broker.startup import BrokerStartError

    async def main() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            meta = SqliteMetadataStore(tmp_path / "metadata.sqlite3")
            config = BrokerConfig(data_dir=tmp_path, listen_port=0, http_listen=f"127.0.0.1:{port}")
            broker = Broker(config, LocalObjectStore(tmp_path / "objects"), meta)
            with pytest.raises(BrokerStartError, match=f"http-listen 127.0.0.1:{port}: "):
                await broker.start()
            assert broker.server is None  # nothing else was started
            await meta.close()

    asyncio.run(main())


def test_kafscale_serve_freezes_its_startup_heap_before_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``kafscale serve`` collects and freezes what start() made (a full collection of it
    takes ~60 ms) before its listeners serve, so no first request waits it out."""
    from kafscale.broker import server as server_module

    seen: list[bool] = []
    broker = Broker(
        BrokerConfig(data_dir=tmp_path, listen_port=0),
        LocalObjectStore(tmp_path / "objects"),
        SqliteMetadataStore(tmp_path / "metadata.sqlite3"),
    )
    # Not the process's real freeze: record whether any listener serves at that moment.
    monkeypatch.setattr(
        server_module.gc,
        "freeze",
        lambda: seen.append(any(s.is_serving() for s in broker.servers.values())),
    )

    async def main() -> bool:
        await broker.start(freeze_heap=True)
        try:
            return all(s.is_serving() for s in broker.servers.values())
        finally:
            await broker.stop()

    assert asyncio.run(main())
    assert seen == [False]
