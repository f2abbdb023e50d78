"""One consumer-group member as its own process, for tests/conformance/test_groups.py.

``python group_member.py '<json settings>'`` subscribes one client (kafka-python,
confluent-kafka or aiokafka) to a topic in a group and runs the at-least-once loop: poll a
batch, report it (the "processing", which takes ``process_ms``), commit the batch's offsets
synchronously, report the commit's outcome, poll again. A process of its own per member, so
that a test can SIGKILL one (no LeaveGroup, no last commit: exactly a crashed consumer) and
start another with the same group instance id.

Every event is one JSON line on stdout with ``t`` (``time.monotonic()``, one clock for every
process of the machine, so the test can order events of different members):
``assigned`` / ``revoked`` / ``lost`` (partitions, and the generation and member id where the
client tells them), ``batch`` (``[partition, offset, value]`` each), ``commit`` (the offsets
per partition, ``ok``, the error), ``error`` (non-fatal client errors), ``fatal`` (the client
gave up: e.g. fenced by another instance), ``closed``. ``stop`` on stdin (or stdin closing)
ends the loop: the last batch is already committed, the consumer is closed (a dynamic member
sends LeaveGroup; a static one does not) and the process exits 0; 3 after a fatal error.

Self-contained (run by path): imports nothing of the project.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import traceback
from typing import Any

LOCK = threading.Lock()
STOP = threading.Event()


def emit(event: str, **fields: Any) -> None:
    line = json.dumps({"ev": event, "t": time.monotonic(), **fields})
    with LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def watch_stdin() -> None:
    for line in sys.stdin:
        if line.strip() == "stop":
            break
    STOP.set()


def batch_offsets(records: list[tuple[int, int, str]]) -> dict[int, int]:
    """The offset to commit per partition: one past the batch's last record there."""
    out: dict[int, int] = {}
    for partition, offset, _ in records:
        out[partition] = max(out.get(partition, 0), offset + 1)
    return out


def run_kafka_python(s: dict[str, Any]) -> None:
    import kafka
    import kafka.errors
    from kafka.structs import OffsetAndMetadata

    consumer = kafka.KafkaConsumer(
        bootstrap_servers=s["bootstrap"],
        group_id=s["group"],
        client_id=s["name"],
        group_instance_id=s.get("instance_id"),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=s["session_ms"],
        heartbeat_interval_ms=s["heartbeat_ms"],
        max_poll_interval_ms=s["rebalance_ms"],
        fetch_max_wait_ms=100,
        request_timeout_ms=10000,
        retry_backoff_ms=100,
        reconnect_backoff_ms=100,
        reconnect_backoff_max_ms=500,
    )

    def membership() -> dict[str, Any]:
        meta = consumer.group_metadata()
        return {"gen": meta.generation_id, "member": meta.member_id}

    class Listener(kafka.ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked: Any) -> None:
            emit("revoked", partitions=sorted(tp.partition for tp in revoked), **membership())

        def on_partitions_assigned(self, assigned: Any) -> None:
            emit("assigned", partitions=sorted(tp.partition for tp in assigned), **membership())

        def on_partitions_lost(self, lost: Any) -> None:
            emit("lost", partitions=sorted(tp.partition for tp in lost), **membership())

    consumer.subscribe([s["topic"]], listener=Listener())
    emit("started")
    try:
        while not STOP.is_set():
            try:
                polled = consumer.poll(timeout_ms=100)
            except kafka.errors.KafkaError as e:
                if not e.retriable:  # e.g. FencedInstanceIdError
                    raise
                # kafka-python raises what its background metadata refresh met, e.g. a
                # refused connection while the broker restarts.
                emit("error", error=repr(e), code=None, name=type(e).__name__)
                continue
            records = [
                (tp.partition, r.offset, r.value.decode())
                for tp, batch in polled.items()
                for r in batch
            ]
            if not records:
                continue
            emit("batch", records=records)
            time.sleep(s["process_ms"] / 1000)
            offsets = batch_offsets(records)
            try:
                consumer.commit(
                    {
                        kafka.TopicPartition(s["topic"], p): OffsetAndMetadata(o, "", -1)
                        for p, o in offsets.items()
                    }
                )
            except kafka.errors.KafkaError as e:
                if not (e.retriable or isinstance(e, kafka.errors.CommitFailedError)):
                    raise
                emit("commit", offsets=offsets, ok=False, error=repr(e))
            else:
                emit("commit", offsets=offsets, ok=True, error=None)
    finally:
        consumer.close()


def run_confluent(s: dict[str, Any]) -> None:
    import confluent_kafka

    config = {
        "bootstrap.servers": s["bootstrap"],
        "group.id": s["group"],
        "client.id": s["name"],
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": s["session_ms"],
        "heartbeat.interval.ms": s["heartbeat_ms"],
        "max.poll.interval.ms": s["rebalance_ms"],
        "fetch.wait.max.ms": 100,
        "reconnect.backoff.ms": 100,
        "reconnect.backoff.max.ms": 500,
    }
    if s.get("instance_id"):
        config["group.instance.id"] = s["instance_id"]
    consumer = confluent_kafka.Consumer(config)

    def partitions(tps: Any) -> list[int]:
        return sorted(tp.partition for tp in tps)

    def on_assign(c: Any, tps: Any) -> None:
        emit("assigned", partitions=partitions(tps), gen=None, member=c.memberid())

    def on_revoke(c: Any, tps: Any) -> None:
        emit("revoked", partitions=partitions(tps), gen=None, member=c.memberid())

    def on_lost(c: Any, tps: Any) -> None:
        emit("lost", partitions=partitions(tps), gen=None, member=c.memberid())

    consumer.subscribe([s["topic"]], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
    emit("started")
    try:
        while not STOP.is_set():
            records = []
            for m in consumer.consume(500, 0.1):
                err = m.error()
                if err is None:
                    records.append((m.partition(), m.offset(), m.value().decode()))
                elif err.fatal() or err.code() == confluent_kafka.KafkaError._FATAL:
                    # The event carries _FATAL; the cause (e.g. FENCED_INSTANCE_ID) is in
                    # its text.
                    emit("fatal", error=str(err), code=err.code(), name=err.name())
                    raise SystemExit(3)
                else:
                    emit("error", error=str(err), code=err.code(), name=err.name())
            if not records:
                continue
            emit("batch", records=records)
            time.sleep(s["process_ms"] / 1000)
            offsets = batch_offsets(records)
            wanted = [confluent_kafka.TopicPartition(s["topic"], p, o) for p, o in offsets.items()]
            try:
                done = consumer.commit(offsets=wanted, asynchronous=False) or []
            except confluent_kafka.KafkaException as e:
                emit("commit", offsets=offsets, ok=False, error=str(e.args[0]))
                continue
            failed = [str(tp) for tp in done if tp.error is not None]
            emit("commit", offsets=offsets, ok=not failed, error=failed or None)
    finally:
        consumer.close()


def run_aiokafka(s: dict[str, Any]) -> None:
    import aiokafka
    import aiokafka.errors
    from aiokafka.structs import OffsetAndMetadata

    async def run() -> None:
        consumer = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=s["bootstrap"],
            group_id=s["group"],
            client_id=s["name"],
            group_instance_id=s.get("instance_id"),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=s["session_ms"],
            heartbeat_interval_ms=s["heartbeat_ms"],
            max_poll_interval_ms=s["rebalance_ms"],
            rebalance_timeout_ms=s["rebalance_ms"],
            fetch_max_wait_ms=100,
            request_timeout_ms=10000,
            retry_backoff_ms=100,
        )

        def membership() -> dict[str, Any]:
            coordinator = consumer._coordinator
            return {"gen": coordinator.generation, "member": coordinator.member_id}

        class Listener(aiokafka.ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                emit("revoked", partitions=sorted(tp.partition for tp in revoked), **membership())

            def on_partitions_assigned(self, assigned: Any) -> None:
                emit("assigned", partitions=sorted(tp.partition for tp in assigned), **membership())

        await consumer.start()
        consumer.subscribe([s["topic"]], listener=Listener())
        emit("started")
        try:
            while not STOP.is_set():
                try:
                    polled = await consumer.getmany(timeout_ms=100)
                except aiokafka.errors.KafkaError as e:
                    if not e.retriable:
                        raise
                    emit("error", error=repr(e), code=None, name=type(e).__name__)
                    continue
                records = [
                    (tp.partition, r.offset, r.value.decode())
                    for tp, batch in polled.items()
                    for r in batch
                ]
                if not records:
                    continue
                emit("batch", records=records)
                await asyncio.sleep(s["process_ms"] / 1000)
                offsets = batch_offsets(records)
                try:
                    await consumer.commit(
                        {
                            aiokafka.TopicPartition(s["topic"], p): OffsetAndMetadata(o, "")
                            for p, o in offsets.items()
                        }
                    )
                except aiokafka.errors.KafkaError as e:
                    if not (e.retriable or isinstance(e, aiokafka.errors.CommitFailedError)):
                        raise
                    emit("commit", offsets=offsets, ok=False, error=repr(e))
                else:
                    emit("commit", offsets=offsets, ok=True, error=None)
        finally:
            await consumer.stop()

    asyncio.run(run())


RUNNERS = {"kafka-python": run_kafka_python, "confluent": run_confluent, "aiokafka": run_aiokafka}


def main() -> int:
    settings = json.loads(sys.argv[1])
    threading.Thread(target=watch_stdin, daemon=True).start()
    try:
        RUNNERS[settings["client"]](settings)
    except SystemExit as e:
        return int(e.code or 0)
    except Exception as e:  # the client gave up (e.g. kafka-python's FencedInstanceIdError)
        emit("fatal", error=repr(e), code=None, name=type(e).__name__)
        traceback.print_exc()
        return 3
    emit("closed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
