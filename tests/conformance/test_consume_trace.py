"""A consumer of a produced topic never gets an error answer, never backs off and never waits
while data is there: checked on librdkafka's own debug trace (issue 15, "consume: no stall").

The benchmark's slow consume runs (a ~0.85 s pause in 100 MB) were traced to the client, not
to an answer of ours: ``Fetch backoff for 1000ms: Local: Queue full`` after
``queued.max.messages.kbytes exceeded`` (librdkafka stops fetching for
``fetch.queue.backoff.ms``, 1 s, once 64 MiB wait in its local queue: a broker that answers
faster than the application drains). Every FetchResponse before it was ``error "Success"``.
This test guards the broker's side of that finding. It reads 30 MB (under the 64 MiB queue,
so the client's own back-off cannot happen) with scripts/bench_broker.py's consumer
configuration (tests/conformance/traced_consumer.py), from a warm broker and again after a
restart (cold reads from the data directory), and fails on any trace line showing:

- a back-off (``BACKOFF``, "Fetch backoff", "Retrying"), whatever its reason;
- an error code in any answer (librdkafka names broker errors "Broker: ...": OFFSET_OUT_OF_RANGE
  and the reset after it, NOT_LEADER_OR_FOLLOWER, UNKNOWN_*, leader epoch errors from
  ListOffsets or OffsetForLeaderEpoch validation), or a partition of a FetchResponse with an
  error other than "Success";
- a failed request (``REQERR``), except librdkafka dropping its bootstrap connection once it
  knows the broker by node id ("Local: Broker handle destroyed": requests in flight on it are
  resent on the other connection; no answer of ours is involved);
- a gap over :data:`MAX_GAP_S` between assign() and the first FetchResponse, or between two
  FetchResponses, until the last one that carried records (the consumer waits up to
  ``fetch.wait.max.ms``, 3 s here, so a Fetch held with data available is a gap of seconds).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import confluent_kafka

from tests.conformance.clients import TIMEOUT, ConfluentKafka, new_topic
from tests.conformance.conftest import BrokerProcess

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 3
RECORDS = 30_000
SIZE = 1024
MAX_GAP_S = 1.0
LINE = re.compile(r"^%\d+\|(\d+\.\d+)\|(\w+)\|[^|]*\| (.*)$")
MESSAGE_SET = re.compile(r'MessageSet size (\d+), error "([^"]*)"')
BENIGN_REQERR = "Local: Broker handle destroyed"


@dataclass(frozen=True)
class Trace:
    received: int
    errors: dict[str, int]
    assigned_at: float
    lines: list[tuple[float, str, str]]
    """(time, facility, text) of every librdkafka trace line."""
    path: Path

    def problems(self) -> list[str]:
        """Trace lines showing a back-off, an error answer or a failed request."""
        bad = []
        for _, facility, text in self.lines:
            message_set = MESSAGE_SET.search(text)
            if (
                facility == "BACKOFF"
                or "backoff" in text.lower()
                or "Retrying" in text
                or "Broker: " in text
                or (message_set is not None and message_set.group(2) != "Success")
                or (facility == "REQERR" and BENIGN_REQERR not in text)
            ):
                bad.append(f"{facility}: {text}")
        return bad

    def max_gap(self) -> tuple[float, str]:
        """The longest wait for a FetchResponse while records were still to come: from
        assign() to the first, and between consecutive ones, up to the last that carried
        records; with the line that ended it."""
        last_data = max(
            (t for t, _, text in self.lines if (m := MESSAGE_SET.search(text)) and int(m[1])),
            default=None,
        )
        assert last_data is not None, f"no FetchResponse carried records: {self.path}"
        previous, gap, at = self.assigned_at, 0.0, "none"
        for t, _, text in self.lines:
            if "Received FetchResponse" in text and t <= last_data:
                if t - previous > gap:
                    gap, at = t - previous, text
                previous = t
        return gap, at


def traced_consume(broker: BrokerProcess, topic: str, name: str) -> Trace:
    path = broker.log_dir / f"consumer-{name}.trace"
    with path.open("wb") as err:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.conformance.traced_consumer",
                broker.bootstrap,
                topic,
                str(PARTITIONS),
                str(RECORDS),
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, (
        f"the traced consumer failed ({path}):\n" + path.read_text(errors="replace")[-3000:]
    )
    result = json.loads(done.stdout)
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        if m := LINE.match(raw):
            lines.append((float(m[1]), m[2], m[3]))
    return Trace(result["received"], result["errors"], result["assigned_at"], lines, path)


def produce(broker: BrokerProcess, topic: str) -> None:
    """RECORDS x SIZE bytes, round robin over the partitions, acknowledged by all."""
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": broker.bootstrap,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "none",
            "message.timeout.ms": int(TIMEOUT * 1000),
        }
    )
    failed: list[str] = []

    def delivered(err: confluent_kafka.KafkaError | None, _msg: object) -> None:
        if err is not None:
            failed.append(str(err))

    value = bytes(range(256)) * (SIZE // 256)
    for i in range(RECORDS):
        while True:
            try:
                producer.produce(topic, value, partition=i % PARTITIONS, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.01)
    assert producer.flush(TIMEOUT) == 0, "records left unacknowledged"
    assert not failed, failed[:5]


def check(trace: Trace) -> None:
    assert trace.received == RECORDS, (trace.received, trace.errors, trace.path)
    assert not trace.errors, (trace.errors, trace.path)
    problems = trace.problems()
    assert not problems, f"{len(problems)} in {trace.path}:\n" + "\n".join(problems[:20])
    gap, at = trace.max_gap()
    assert gap <= MAX_GAP_S, f"{gap:.3f} s without a FetchResponse, ended by {at} ({trace.path})"


def test_confluent_consumer_reads_without_error_backoff_or_gap(
    fresh_broker: BrokerProcess,
) -> None:
    topic = new_topic("confluent", "trace")
    ConfluentKafka(fresh_broker).create_topic(topic, PARTITIONS, {})
    produce(fresh_broker, topic)
    check(traced_consume(fresh_broker, topic, "warm"))
    fresh_broker.restart()  # nothing cached: the reads come from the data directory
    check(traced_consume(fresh_broker, topic, "cold"))
