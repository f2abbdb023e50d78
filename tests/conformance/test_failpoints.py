"""Failpoints (kafscale/broker/failpoints.py): the broker process dies at an exact step of the
produce path; after a restart nothing acknowledged is lost, nothing unacknowledged but
uploaded is ever served, and the orphaned objects are collected.

- after_object_put: the ingest object is uploaded, the commit never happens: the produce is
  not acknowledged, the data is not readable, and the janitor deletes the object once its
  writer's lease is gone (two lease TTLs after it was written).
- after_metadata_commit: committed but never answered: the producer saw no ack, yet the
  record is there exactly once (an "unknown" outcome resolved as written).
- mid_response: half of the produce response was on the wire: same as above for the client.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pytest

from generated.produce_request import PartitionProduceData, ProduceRequest, TopicProduceData
from generated.registry import APIS
from kafscale.broker.failpoints import EXIT_STATUS
from kafscale.broker.janitor import ORPHAN_SCAN_S
from kafscale.protocol.framing import encode_request
from kafscale.protocol.records import build_batch
from tests.conformance.clients import TIMEOUT, KafkaPython
from tests.conformance.conftest import BrokerProcess

LEASE_TTL_MS = 2000


def produce_raw(broker: BrokerProcess, topic: str, value: bytes) -> bytes | None:
    """One Produce v9 (acks=all) on a raw socket: the response bytes, or None when the
    connection ended before a whole response arrived."""
    body = ProduceRequest(
        acks=-1,
        timeout_ms=10_000,
        topic_data=[
            TopicProduceData(
                name=topic,
                partition_data=[PartitionProduceData(index=0, records=build_batch([value]))],
            )
        ],
    )
    frame = b"".join(encode_request(APIS[0], 9, 7, "failpoints", body))
    with socket.create_connection((broker.host, broker.port), timeout=TIMEOUT) as sock:
        sock.sendall(frame)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if len(data) >= 4 and len(data) >= 4 + struct.unpack(">i", data[:4])[0]:
                return data
    return None


def wait_exit(broker: BrokerProcess) -> int:
    assert broker.proc is not None
    return broker.proc.wait(TIMEOUT)


def objects(broker: BrokerProcess) -> list[Path]:
    """The ingest objects (one per flush: the topic is the only one written to)."""
    root = broker.data_dir / "objects" / "kafscale" / "ingest"
    return sorted(root.glob("*.kfi")) if root.exists() else []


@pytest.mark.parametrize("point", ["after_object_put", "after_metadata_commit", "mid_response"])
def test_a_crash_at_each_step_loses_nothing_acknowledged(
    fresh_broker: BrokerProcess, point: str
) -> None:
    client = KafkaPython(fresh_broker)
    topic = f"failpoint-{point.replace('_', '-')}"
    fresh_broker.args += ["--lease.ttl.ms", str(LEASE_TTL_MS)]
    client.create_topic(topic, 1, {})
    assert produce_raw(fresh_broker, topic, b"before") is not None  # acknowledged
    fresh_broker.stop_cleanly()
    fresh_broker.env = {"KAFSCALE_FAILPOINTS": f"{point}:exit"}
    fresh_broker.start()
    answer = produce_raw(fresh_broker, topic, b"at the failpoint")
    assert answer is None, "the broker answered although it should have died first"
    assert wait_exit(fresh_broker) == EXIT_STATUS
    assert f"failpoint {point}: exiting" in fresh_broker.stderr()
    uploaded = objects(fresh_broker)
    fresh_broker.env = {}
    fresh_broker.start()
    records = [r.value for r in client.consume(topic, 0, 1)]
    # Two TTLs after the upload, the janitor's next orphan scan (every 10 s), slack.
    deadline = time.monotonic() + 2 * LEASE_TTL_MS / 1000 + ORPHAN_SCAN_S + 10
    if point == "after_object_put":
        assert len(uploaded) == 2  # the acknowledged flush and the orphan
        assert client.end_offset(topic, 0) == 1  # the orphan is never served
        assert records == [b"before"]
        while len(objects(fresh_broker)) > 1:  # collected by the janitor
            assert time.monotonic() < deadline, objects(fresh_broker)
            time.sleep(0.1)
        assert objects(fresh_broker) == uploaded[:1]  # the acknowledged flush's object stays
    else:
        # Committed, never acknowledged: there exactly once.
        assert client.end_offset(topic, 0) == 2
        assert [r.value for r in client.consume(topic, 0, 2)] == [b"before", b"at the failpoint"]
    assert produce_raw(fresh_broker, topic, b"after") is not None
