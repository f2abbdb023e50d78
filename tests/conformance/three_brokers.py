"""Three ``kafscale serve`` processes on one etcd and one S3 bucket (moto) for the cluster
conformance tests (test_cluster.py, test_cluster_idempotence.py), and what those tests ask
the cluster directly.

The brokers are tests/faults/cluster.py's :class:`~tests.faults.cluster.Cluster` (kill -9,
SIGTERM, restart by pid; traceback audit) with a short lease TTL, so a dead broker's
partitions and groups move within seconds, and the group settings of the single-broker
conformance broker (tests/conformance/conftest.py: short minimum session, short initial
rebalance delay). The fixtures :func:`cluster` (one cluster a test module; on the way out
every broker must stop on SIGTERM with status 0 and no broker may have logged a traceback)
and :func:`checked` (every broker up; no traceback during the test) are bound in each test
module by assignment (``cluster = three_brokers.cluster``). Without etcd or the moto server
they skip, and fail when ``CI`` is set (``require_etcd``, ``shared_or_skip``).

:class:`Bootstrap` lets the single-broker adapters (clients.py, test_admin.py,
test_groups.py) run unchanged against the cluster: they only read ``bootstrap`` (here every
broker's address) and ``log_dir``. The rest reads the truth the clients cannot see: owner
keys in etcd (``/{ns}/owners/{topic}/{p:05d}``, ``/{ns}/group-owners/{group}``), where the
brokers' placement (:func:`kafscale.broker.cluster.placement`, rendezvous hashing with
bounded loads over the live brokers) puts each partition, and each broker's own Metadata
and FindCoordinator answers (one raw request per broker, so the test knows which broker
said what).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from generated.find_coordinator_request import FindCoordinatorRequest
from generated.find_coordinator_response import FindCoordinatorResponse
from generated.metadata_request import MetadataRequest, MetadataRequestTopic
from generated.metadata_response import MetadataResponse
from kafscale.broker.cluster import placement
from kafscale.protocol.records import BatchInfo, parse_batches
from tests.conformance.clients import fetch_v4, raw_request
from tests.conformance.conftest import BrokerProcess
from tests.etcdserver import require_etcd
from tests.faults.cluster import Cluster
from tests.s3server import shared_or_skip

LEASE_TTL_MS = 2000
"""A killed broker's partitions and groups move after this (etcd rounds it up to seconds)."""
GROUP_ARGS = ["--group.min.session.timeout.ms=1000", "--group.initial.rebalance.delay.ms=200"]
OWNERS_TIMEOUT = 30.0
"""How long partitions may take to reach their owners (a lease TTL, hand-overs, a loaded
machine)."""
FETCH_BYTES = 1 << 20
UNKNOWN_TOPIC_OR_PARTITION = 3


@dataclass
class Bootstrap(BrokerProcess):
    """The cluster seen through the single-broker adapters' eyes: ``bootstrap`` names every
    broker. Never started: the brokers are the :class:`Cluster`'s."""

    addresses: str = ""

    @property
    def bootstrap(self) -> str:
        return self.addresses


def bootstrap_of(cluster: Cluster) -> Bootstrap:
    first = cluster.brokers[0]
    return Bootstrap(
        "127.0.0.1", first.port, cluster.root, cluster.root, addresses=cluster.bootstrap
    )


@contextlib.contextmanager
def three_brokers(root: Path) -> Iterator[Cluster]:
    """A started 3-broker cluster on a fresh etcd and a fresh bucket; stopped and checked on
    exit (SIGTERM: every broker exits 0; no traceback in any broker's log)."""
    with require_etcd(1) as etcd:
        s3 = shared_or_skip()
        bucket = s3.create_bucket()
        cluster = Cluster(
            root, etcd, s3.endpoint_url, s3.endpoint_url, bucket, lease_ttl_ms=LEASE_TTL_MS
        )
        for broker in cluster.brokers:
            broker.args += GROUP_ARGS
        try:
            cluster.start()
            yield cluster
            cluster.heal()  # a test that failed half-way may have left one down
            statuses = cluster.stop()
            assert statuses == dict.fromkeys(statuses, 0), (
                f"SIGTERM exit statuses {statuses}\n" + cluster.logs_text()
            )
            tracebacks = cluster.tracebacks()
            assert not tracebacks, "tracebacks in the broker logs:\n" + "\n\n".join(
                f"broker {t.broker} ({t.log}):\n{t.text}" for t in tracebacks[:3]
            )
        finally:
            cluster.kill_all()


@pytest.fixture(scope="module")
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """The test module's cluster (see :func:`three_brokers`)."""
    with three_brokers(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])) as c:
        yield c


@pytest.fixture
def checked(cluster: Cluster) -> Iterator[Cluster]:
    """The module's cluster with every broker up; no broker may log a traceback meanwhile."""
    cluster.heal()
    with no_new_tracebacks(cluster):
        yield cluster


@contextlib.contextmanager
def no_new_tracebacks(cluster: Cluster) -> Iterator[None]:
    """Fail the test (not the module's teardown) if a broker logged a traceback meanwhile."""
    before = len(cluster.tracebacks())
    yield
    found = cluster.tracebacks()[before:]
    assert not found, "a broker logged a traceback during the test:\n" + "\n\n".join(
        f"broker {t.broker} ({t.log}):\n{t.text}" for t in found[:3]
    )


# --- etcd: who owns what ------------------------------------------------------------------


def owners(cluster: Cluster, topic: str) -> dict[int, tuple[int, int]]:
    """Partition -> (broker id, leader epoch) of its owner key (partitions nobody owns are
    left out)."""
    prefix = f"/{cluster.namespace}/owners/{topic}/"
    out = {}
    for key, value in cluster.etcd_range(prefix).items():
        d = json.loads(value)
        out[int(key[len(prefix) :])] = (int(d["broker"]), int(d["epoch"]))
    return out


def placed(cluster: Cluster, topic: str, partitions: int) -> list[int]:
    """Each partition's owner-to-be: the placement over the brokers running now."""
    return placement(topic, partitions, [b.id for b in cluster.brokers if b.running])


def wait_placed(
    cluster: Cluster, topics: dict[str, int], timeout: float = OWNERS_TIMEOUT
) -> dict[str, dict[int, tuple[int, int]]]:
    """Until every partition of ``topics`` (name -> partition count) has an owner key held by
    the broker the placement over the running brokers names: every hand-over is done and no
    partition moves any more. Then, by topic, partition -> (owner, leader epoch).

    A reader starts once the owners are where they stay: librdkafka can lose track of a
    partition whose leader changes twice within moments (librdkafka#4976, cited by commit
    4db7f37)."""
    deadline = time.monotonic() + timeout
    while True:
        now = {t: owners(cluster, t) for t in topics}
        wanted = {t: placed(cluster, t, n) for t, n in topics.items()}
        astray = {
            f"{t}-{p}": (now[t].get(p, (None, 0))[0], b)
            for t, want in wanted.items()
            for p, b in enumerate(want)
            if now[t].get(p, (None, 0))[0] != b
        }
        if not astray:
            return now
        if time.monotonic() > deadline:
            pytest.fail(
                f"partitions not on their owners after {timeout}s, (owner, wanted): "
                f"{dict(list(astray.items())[:10])}\n" + cluster.logs_text()
            )
        time.sleep(0.05)


def wait_owned(
    cluster: Cluster, topic: str, partitions: int, timeout: float = OWNERS_TIMEOUT
) -> dict[int, tuple[int, int]]:
    """:func:`wait_placed` for one topic."""
    return wait_placed(cluster, {topic: partitions}, timeout)[topic]


def group_owner(cluster: Cluster, group: str) -> int | None:
    """The broker holding the group's coordinator key, if any."""
    key = f"/{cluster.namespace}/group-owners/{quote(group, safe='')}"
    value = cluster.etcd_range(key).get(key)
    return None if value is None else int(json.loads(value)["broker"])


# --- raw requests to one broker -------------------------------------------------------------


def _host_port(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


@dataclass(frozen=True)
class MetadataView:
    error: int
    """The topic's error code (0, or UNKNOWN_TOPIC_OR_PARTITION)."""
    brokers: dict[int, tuple[str, int]]
    controller: int
    leaders: dict[int, tuple[int, int]]
    """Partition -> (leader id, leader epoch)."""
    errors: dict[int, int]
    """Partition -> error code, where not 0."""


def metadata(address: str, topic: str) -> MetadataView:
    """Metadata v8 for ``topic`` (no auto-creation), asked of the broker at ``address``."""
    request = MetadataRequest(
        topics=[MetadataRequestTopic(name=topic)],
        allow_auto_topic_creation=False,
        include_cluster_authorized_operations=False,
        include_topic_authorized_operations=False,
    )
    body = raw_request(*_host_port(address), "Metadata", 8, request)
    response = MetadataResponse.decode(body, 8)
    [t] = response.topics
    return MetadataView(
        t.error_code,
        {b.node_id: (b.host, b.port) for b in response.brokers},
        response.controller_id,
        {p.partition_index: (p.leader_id, p.leader_epoch) for p in t.partitions},
        {p.partition_index: p.error_code for p in t.partitions if p.error_code},
    )


def find_coordinator(address: str, group: str) -> int:
    """FindCoordinator v2 for ``group``, asked of the broker at ``address``: the node id."""
    request = FindCoordinatorRequest(key=group, key_type=0)
    body = raw_request(*_host_port(address), "FindCoordinator", 2, request)
    response = FindCoordinatorResponse.decode(body, 2)
    assert response.error_code == 0, f"{address}: FindCoordinator {group}: {response}"
    return int(response.node_id)


def stored_batches(cluster: Cluster, topic: str, partition: int) -> list[BatchInfo]:
    """The partition's record batches as its owner serves them, from offset 0 to the high
    watermark (raw Fetch v4, so producer id, epoch and base sequence are seen as stored)."""
    owner = owners(cluster, topic).get(partition)
    assert owner is not None, f"{topic}-{partition} has no owner"
    host, port = _host_port(cluster.brokers[owner[0]].address)
    out: list[BatchInfo] = []
    offset, high = 0, 1
    while offset < high:
        data = fetch_v4(host, port, topic, partition, offset, FETCH_BYTES)
        high = int(data.high_watermark)
        records = bytes(data.records or b"")
        if not records:
            assert offset >= high, f"{topic}-{partition}: nothing served at {offset} < {high}"
            break
        batches = parse_batches(records)
        out += batches
        offset = batches[-1].next_offset
    return out
