"""A confluent-kafka consumer that reads a topic from the start with librdkafka's debug trace on
(run as ``python -m tests.conformance.traced_consumer BOOTSTRAP TOPIC PARTITIONS EXPECTED``).

The consumer is scripts/bench_broker.py's ``consume()``: a group.id without membership
(assign), no auto commit, no partition EOF events, from OFFSET_BEGINNING, batches of up to
10,000 records with a 0.2 s timeout; plus ``debug`` (:data:`DEBUG`) and a long
``fetch.wait.max.ms`` (:data:`FETCH_WAIT_MAX_MS`), so a Fetch the broker holds while data is
available shows as a gap of seconds, not as the half second of load noise it would be with
the default 500 ms.

librdkafka writes its trace to this process's stderr (its own log callback: each line carries
librdkafka's own wall-clock timestamp; a Python ``logger`` would receive the lines only when
the application polls, with its own time). Stdout gets one JSON object: the records read,
the consumer's error events by name, and the wall-clock time of ``assign()``.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections import Counter

import confluent_kafka

DEBUG = "fetch,protocol,msg,consumer"
FETCH_WAIT_MAX_MS = 3000
TIMEOUT_S = 30.0
"""How long the whole read may take."""


def consume(bootstrap: str, topic: str, partitions: int, expected: int) -> dict[str, object]:
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"traced-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": FETCH_WAIT_MAX_MS,
            "debug": DEBUG,
        }
    )
    received = 0
    errors: Counter[str] = Counter()
    try:
        consumer.list_topics(topic, timeout=TIMEOUT_S)
        assigned_at = time.time()
        consumer.assign(
            [
                confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                for p in range(partitions)
            ]
        )
        deadline = time.monotonic() + TIMEOUT_S
        while received < expected and time.monotonic() < deadline:
            for m in consumer.consume(num_messages=min(10_000, expected - received), timeout=0.2):
                error = m.error()
                if error is None:
                    received += 1
                else:
                    errors[str(error.name())] += 1
        done_at = time.time()
    finally:
        consumer.close()
    return {
        "received": received,
        "errors": dict(errors),
        "assigned_at": assigned_at,
        "done_at": done_at,
    }


def main(argv: list[str]) -> int:
    bootstrap, topic, partitions, expected = argv
    result = consume(bootstrap, topic, int(partitions), int(expected))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
